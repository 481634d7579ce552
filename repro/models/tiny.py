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


def build_tokenizer(specials: list[str], *, vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with the given extra special tokens."""
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
        extra_special_tokens={"image_token": "<image>"} if "<image>" in specials else {},
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


def _init(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def _tokenizer_with_bos(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    return tok


def tiny_llava15(seed: int = 0, *, image_size: int = 112, text: dict | None = None,
                 vision: dict | None = None):
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
    return _init(LlavaForConditionalGeneration, config, seed), processor


def tiny_llava_next(seed: int = 0, *, image_size: int = 56, pinpoints: list[list[int]] | None = None,
                    text: dict | None = None, vision: dict | None = None):
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
    return _init(LlavaNextForConditionalGeneration, config, seed), processor


TINY_BUILDERS = {
    "tiny-llava-1.5": tiny_llava15,
    "tiny-llava-next": tiny_llava_next,
}
