"""Tiny random models of each family, built offline and deterministically (tests use them).

Each builder returns an HF model and processor of the real classes, with a byte-level BPE
tokenizer trained in-process on a fixed corpus, so ids, prompts and weights are the same in
every process. Random weights come from a private RNG state (the global one is untouched).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# The llava-hf chat format (MODELS.md §1): "ROLE: " + one "<image>\n" per image + text + " ",
# then "ASSISTANT:" as the generation prompt.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CORPUS = [
    "USER: ASSISTANT: What is in the image? Answer the question using a single word or phrase.",
    "Is there a red circle in the image? yes no Please answer yes or no.",
    "How many objects are there? zero one two three four five six seven eight nine ten",
    "Which colour is the square: red green blue yellow purple orange black white gray",
    "A. B. C. D. Answer with the option's letter from the given choices directly.",
    "left right top bottom middle center above below near far large small big tiny",
    "circle square triangle star cross shape chart bar value text word digit unanswerable",
    "The quick brown fox jumps over the lazy dog. 0123456789 .,:;!?()[]{}'\"-+*/=%",
]


# Qwen2.5-VL's ChatML template: a default system turn, each image as
# <|vision_start|><|image_pad|><|vision_end|> before the text (MODELS.md §5).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# InternVL3-hf's ChatML template: no default system turn, one image placeholder line per image,
# then the text (MODELS.md §6; the processor expands <IMG_CONTEXT> into <img> + tokens + </img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(specials: list[str], *, vocab_size: int = 384,
                    named: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with the given special tokens.

    `named` maps attribute names to special tokens (e.g. `context_image_token`), which the
    processors of some families read from the tokenizer.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens=named if named is not None else ({"image_token": "<image>"} if "<image>" in specials else {}),
    )


def _text_config(tok: PreTrainedTokenizerFast, **overrides: Any):
    from transformers import LlamaConfig

    base = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, max_position_embeddings=2048)
    return LlamaConfig(**{**base, **overrides})


def _vision_config(image_size: int, **overrides: Any):
    from transformers import CLIPVisionConfig

    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                image_size=image_size, patch_size=14)
    return CLIPVisionConfig(**{**base, **overrides})


def _init(cls, config, seed: int, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Random weights from a private RNG state; `device="meta"` allocates nothing."""
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        model = cls._from_config(config, dtype=dtype or torch.float32)
    return model.eval()


def _tokenizer_with_bos(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    return tok


def tiny_llava15(seed: int = 0, *, image_size: int = 112, text: dict | None = None,
                 vision: dict | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Tiny LLaVA-1.5: CLIP tower (image_size/14)² patches + CLS, Llama decoder with GQA."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _tokenizer_with_bos(build_tokenizer(["<image>"]))
    n_patches = (image_size // 14) ** 2
    config = LlavaConfig(
        vision_config=_vision_config(image_size, **(vision or {})),
        text_config=_text_config(tok, **(text or {})),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    return _init(LlavaForConditionalGeneration, config, seed, device, dtype), processor


def tiny_llava_next(seed: int = 0, *, image_size: int = 56, pinpoints: list[list[int]] | None = None,
                    text: dict | None = None, vision: dict | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Tiny LLaVA-NeXT: anyres tiles of image_size px, unpadding and a newline token per row."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    pinpoints = pinpoints or [[image_size, 2 * image_size], [2 * image_size, image_size],
                              [2 * image_size, 2 * image_size]]
    tok = _tokenizer_with_bos(build_tokenizer(["<image>"]))
    config = LlavaNextConfig(
        vision_config=_vision_config(image_size, **(vision or {})),
        text_config=_text_config(tok, **(text or {})),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
    return _init(LlavaNextForConditionalGeneration, config, seed, device, dtype), processor


def tiny_qwen25vl(seed: int = 0, *, min_pixels: int = 4 * 28 * 28, max_pixels: int = 64 * 28 * 28,
                  text: dict | None = None, vision: dict | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Tiny Qwen2.5-VL: windowed ViT with two full-attention blocks, 2×2 merger, M-RoPE decoder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from repro.models.qwen import ImageOnlyQwen2_5_VLProcessor, qwen_image_processor

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = build_tokenizer(specials, named={})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text_config = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision_config = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
                         spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1, 3], temporal_patch_size=2)
    config = Qwen2_5_VLConfig(
        text_config={**text_config, **(text or {})}, vision_config={**vision_config, **(vision or {})},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=qwen_image_processor(min_pixels=min_pixels, max_pixels=max_pixels), tokenizer=tok,
        chat_template=QWEN_CHAT_TEMPLATE)
    return _init(Qwen2_5_VLForConditionalGeneration, config, seed, device, dtype), processor


def tiny_internvl3(seed: int = 0, *, tile: int = 56, patch: int | None = None, max_tiles: int = 6, text: dict | None = None,
                   vision: dict | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Tiny InternVL3: tiles of `tile` px + thumbnail, 7-px patches, pixel shuffle 0.5, Qwen2 decoder."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from repro.models.internvl import ImageOnlyInternVLProcessor, internvl_image_processor

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>", *named.values()], named=named)
    tok.chat_template = INTERNVL_CHAT_TEMPLATE
    patch = patch or tile // 8
    text_config = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision_config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         image_size=[tile, tile], patch_size=[patch, patch])
    seq_length = (tile // patch // 2) ** 2
    text_config = {**text_config, **(text or {})}
    config = InternVLConfig(text_config=text_config, vision_config={**vision_config, **(vision or {})},
                            image_token_id=tok.context_image_token_id, image_seq_length=seq_length,
                            downsample_ratio=0.5, tie_word_embeddings=text_config.get("tie_word_embeddings", True))
    processor = ImageOnlyInternVLProcessor(
        image_processor=internvl_image_processor(tile, max_tiles=max_tiles), tokenizer=tok,
        image_seq_length=seq_length, chat_template=INTERNVL_CHAT_TEMPLATE)
    return _init(InternVLForConditionalGeneration, config, seed, device, dtype), processor


# A LLaVA-1.5 large enough that compute, not Python, dominates on a CPU (576 visual tokens,
# hidden 512, 8 layers): the benchmarks' and the tiny latency table's model.
BENCH_TEXT = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=8)


def bench_llava15(seed: int = 0, **kwargs):
    """Random-weight LLaVA-1.5 of benchmark size (speed only)."""
    return tiny_llava15(seed, image_size=336, text=BENCH_TEXT, **kwargs)


def tiny_llava15_deep(seed: int = 1, **kwargs):
    """Tiny LLaVA-1.5 with 8 decoder layers (twice the depth): a target for DOP policy transfer."""
    return tiny_llava15(seed, text={"num_hidden_layers": 8}, **kwargs)


TINY_BUILDERS = {
    "bench-llava-1.5": bench_llava15,
    "tiny-llava-1.5": tiny_llava15,
    "tiny-llava-1.5-deep": tiny_llava15_deep,
    "tiny-llava-next": tiny_llava_next,
    "tiny-qwen2.5-vl": tiny_qwen25vl,
    "tiny-internvl3": tiny_internvl3,
}
