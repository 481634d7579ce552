"""Training `tinyworld-llava`: a LLaVA-1.5-shaped model trained from scratch on the tiny world.

    python -m repro.tinyworld train --out DIR [--seed 0] [--steps N] ...

The model is a transformers `LlavaForConditionalGeneration` (CLIP vision tower, two-layer GELU
projector, Llama decoder) with 168 px images in 14 px patches: 144 visual tokens per image,
`vision_feature_layer=-2` and the CLS-dropping "default" strategy, so it looks like LLaVA-1.5 to
the methods. The tokenizer is a byte-level BPE trained in-process on the tiny world's training
prompts, so prompts are short and answers are a few tokens followed by EOS.

Three stages (see `pretraining.py` for why): (1) the vision tower alone learns dense per-patch
shape / colour / glyph labels of generated scenes, then stays frozen as LLaVA's CLIP does
(`--no-freeze-vision` trains it on); (2) the projector and decoder caption those scenes and
answer questions about them; (3) the train splits of every tiny task, with a share of stage-2
rows mixed in. Stages 2 and 3 run at batch 64: at batch 16 the decoder never learned the content
lookup the questions need ("what colour is the cross?"; README). Stage 1 runs 2000 steps: at 500
the tower never separated the glyphs and text was not read; stage 3 then samples POPE rows 6x and
MME rows 3x (`task_weights`): without extra weight that run lost the yes/no presence lookup, and
at 3x / 2x POPE stayed at 0.71 (README).
`--compile` (on by default) runs the stage-2/3 steps under `torch.compile` with eager attention:
the same loss (tested), 1.5x faster a step on 2 CPU cores, where SDPA's backward and unfused
element-wise ops dominated; a compiled run is not bit-identical to an eager one
(`--no-compile` needs no C++ compiler). `--attention-hint W` adds
`hint_loss`, which pulls the attention of each answer onto its evidence boxes; it is off by
default (it moved the attention, not the answers). `--letter-steps N` puts a text-only stage before
stage 2 on `letter_rows` (the lettered tasks' prompts with the answer stated), `--letter-mix K` adds
K of those rows to every later step; both off (measured: the copy formed, the image stages then
learned worse; README). `--cls-presence W` adds stage-1 heads on [CLS] saying which shapes,
colours and glyphs the scene holds, so VisPruner's [CLS] attention has something to rank by.
Task prompts are built exactly as lmms-eval builds them at evaluation time: the task's own
`doc_to_text` (with its pre/post prompts), then the llava-hf chat template with the images first
(what `Adapter.prepare` sends). The loss is on the answer tokens and EOS only. Everything is
seeded (BPE corpus order, initialisation, data order); matmuls run under bf16 autocast (fast on
CPUs with AMX/AVX512-BF16 and on GPUs) with fp32 weights, and the weights are stored in fp16
(`save_dtype`).

Progress is measured by teacher-forced exact match on the validation splits: an answer counts
when every answer token and EOS is the argmax given the right prefix, which is exactly when greedy
decoding returns the answer. The benchmark accuracies come from lmms-eval (`repro.eval`).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import random
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import ReproError
from .scenes import IMAGE_SIZE, PATCH_SIZE

log = logging.getLogger("repro.tinyworld.train")

IGNORE = -100
WEIGHTS_FORMAT = "repro-tinyworld-llava"
N_VISUAL = (IMAGE_SIZE // PATCH_SIZE) ** 2


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (recorded in train_record.json)."""

    seed: int = 0
    scenes: int = 6000  # generated pretraining scenes (pretraining.py), stages 1 and 2
    vision_steps: int = 2000  # stage 1: vision tower + per-patch heads on the scenes (500 never read glyphs)
    vision_batch: int = 32
    cls_presence: float = 0.0  # stage 1: weight of [CLS] scene-content heads (VisPruner's signal; a net loss, README)
    caption_steps: int = 1200  # stage 2: projector + decoder caption the scenes and answer questions on them
    steps: int = 700  # stage 3: the task train splits (plus `caption_mix` scene rows)
    caption_mix: float = 0.2  # fraction of stage-3 rows that are scene rows (keeps the reading skills)
    batch_size: int = 64  # stages 2 and 3; at 16 the in-context lookup never formed (README)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "bf16"  # autocast dtype of the matmuls: bf16 | fp32
    vocab_size: int = 1024
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_mlp: int = 768
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    text_mlp: int = 768
    train_rows: int = 0  # rows per task (0: the whole train split)
    task_weights: dict[str, float] = field(default_factory=lambda: {"pope": 6, "mme": 3})  # per task key (else 1);
    # the presence questions need the extra weight once stage 1 runs long (README)
    save_dtype: str = "float16"
    freeze_vision: bool = True  # fix the tower after stage 1, as LLaVA's CLIP is (and a step costs less)
    attention_hint: float = 0.0  # weight of `hint_loss` in stages 2 and 3 (measured: no gain, README)
    compile: bool = True  # torch.compile stages 2/3, eager attention: 1.5x faster a step (not bit-identical to eager)
    letter_steps: int = 0  # text-only stage before stage 2 on `letter_rows` (measured: a net loss, README)
    letter_mix: int = 0  # letter rows added to every stage-2/3 step as a second forward (measured: a net loss)


# ------------------------------------------------------------------ prompts and tokenizer


def chat_prompt(n_images: int, text: str) -> str:
    """The llava-hf chat prompt lmms-eval's chat classes send (and `Adapter.prepare` builds)."""
    from repro.models.tiny import LLAVA_CHAT_TEMPLATE  # noqa: F401  (the template this mirrors)

    return "USER: " + "<image>\n" * n_images + text + " ASSISTANT:"


def task_objects(data_dir: Path, keys: list[str] | None = None) -> dict[str, Any]:
    """key -> lmms-eval task object (validation variant); its `doc_to_text` builds the prompts."""
    from lmms_eval.tasks import get_task_dict

    from . import task_manager
    from .suite import TASKS, VAL_SUFFIX

    selected = [t for t in TASKS if keys is None or t.key in keys]
    got = get_task_dict([t.name + VAL_SUFFIX for t in selected], task_manager(data_dir))
    return {t.key: got[t.name + VAL_SUFFIX] for t in selected}


@dataclass
class Row:
    task: str  # task key, or CAPTION for a generated scene
    index: int  # row in the task's split (scene number for captions)
    n_images: int
    prompt: str  # full chat prompt
    answer: str
    turns: list[tuple[str, str]] = field(default_factory=list)  # further (question, answer) chat turns
    evidence: list[list[int]] = field(default_factory=list)  # per answer (first, then turns): patches it reads


CAPTION = "caption"
LETTERS = "letters"  # task key of the text-only letter-copy rows
OPTION_LINE = re.compile(r"^([A-E])\. (.*)$", re.MULTILINE)


def split_rows(data_dir: Path, tasks: dict[str, Any], split: str, cap: int = 0) -> tuple[list[Row], dict[str, Any]]:
    """Every row of `split` (at most `cap` per task) with its prompt, and the datasets by task."""
    import PIL.Image

    from . import load_split
    from .pretraining import evidence_patches

    rows, datasets = [], {}
    for key, task in tasks.items():
        ds = load_split(data_dir, key, split)
        if cap:
            ds = ds.select(range(min(cap, len(ds))))
        datasets[key] = ds
        images = ds.data.column("image").to_pylist()
        for i, doc in enumerate(ds.remove_columns(["image"])):
            stored = images[i] if isinstance(images[i], list) else [images[i]]
            n_images = len(stored)
            evidence = []
            if n_images == 1:
                width = PIL.Image.open(io.BytesIO(stored[0]["bytes"])).size[0]
                evidence = [evidence_patches(doc["evidence"], IMAGE_SIZE / width)]
            rows.append(Row(key, i, n_images, chat_prompt(n_images, task.doc_to_text(doc)), str(doc["target_text"]),
                            evidence=evidence))
    return rows, datasets


def caption_rows(scenes: list) -> list[Row]:
    """Two rows per generated scene: its caption, and its questions as chat turns (separate, so the
    answers must come from the image and not from the caption in context)."""
    from .pretraining import CAPTION_PROMPT, evidence_patches

    rows = []
    for i, s in enumerate(scenes):
        rows.append(Row(CAPTION, i, 1, chat_prompt(1, CAPTION_PROMPT), s.caption))
        if s.turns:
            (question, answer), *rest = s.turns
            rows.append(Row(CAPTION, i, 1, chat_prompt(1, question), answer, rest,
                            [evidence_patches(boxes) for boxes in s.evidence]))
    return rows


def letter_rows(rows: list[Row], copies: int, rng: random.Random) -> list[Row]:
    """Text-only rows of the lettered tasks' format with the answer stated where the image was
    ("The answer is red."), options reshuffled `copies` times. Why: from scratch, copying the letter
    of a named option took 2000+ steps of batch 64 to form (README), and text rows cost a quarter
    of image rows. Measured: the copy forms, but is lost in the image stages or slows them."""
    out = []
    for r in rows:
        options = dict(OPTION_LINE.findall(r.prompt))
        contents = list(options.values())
        if r.n_images != 1 or r.answer not in options or len(set(contents)) < len(contents):
            continue
        right = options[r.answer]
        stated = r.prompt.replace("<image>\n", f"The answer is {right}.\n", 1)
        block = "\n".join(f"{k}. {v}" for k, v in options.items())
        for _ in range(copies):
            shuffled = rng.sample(contents, len(contents))
            new_block = "\n".join(f"{k}. {v}" for k, v in zip(options, shuffled))
            out.append(Row(LETTERS, len(out), 0, stated.replace(block, new_block), list(options)[shuffled.index(right)]))
    return out


def build_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE trained on `corpus` (deterministic), BOS prepended, llava-hf chat template."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from repro.models.tiny import LLAVA_CHAT_TEMPLATE

    specials = ["<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = LLAVA_CHAT_TEMPLATE
    return fast


def tokenizer_corpus(rows: list[Row]) -> list[str]:
    """Prompts (image token removed), answers and later turns, in a fixed order."""
    corpus = []
    for r in rows:
        corpus += [r.prompt.replace("<image>", ""), r.answer]
        corpus += [f"USER: {q} ASSISTANT: {a}" for q, a in r.turns]
    return corpus


# ------------------------------------------------------------------ model


def build_model(cfg: TrainConfig, tok):
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from repro.models.tiny import LLAVA_CHAT_TEMPLATE

    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_mlp,
                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                       num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=1024, rms_norm_eps=1e-5,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=N_VISUAL, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model, processor


# ------------------------------------------------------------------ batches


@dataclass
class Encoded:
    task: str
    index: int
    n_images: int
    ids: list[int]  # prompt (image placeholders expanded), answer, EOS, then any further turns
    n_prompt: int
    unsupervised: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of later questions
    hints: list[tuple[int, list[int]]] = field(default_factory=list)  # (position predicting an answer, its patches)


def encode_rows(rows: list[Row], processor) -> list[Encoded]:
    """Token ids; the loss covers every answer and its EOS, never a prompt or a later question
    (turns follow the llava chat template: `USER: Q ASSISTANT: A</s>`)."""
    tok = processor.tokenizer
    image = processor.image_token
    out = []
    for r in rows:
        ids = tok(r.prompt.replace(image, image * N_VISUAL))["input_ids"]
        n_prompt = len(ids)
        ids += tok(r.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        skip = []
        for question, answer in r.turns:
            q = tok(f"USER: {question} ASSISTANT:", add_special_tokens=False)["input_ids"]
            skip.append((len(ids), len(ids) + len(q)))
            ids += q + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        answer_at = [n_prompt - 1] + [end - 1 for _, end in skip]
        hints = [(pos, patches) for pos, patches in zip(answer_at, r.evidence) if patches]
        out.append(Encoded(r.task, r.index, r.n_images, ids, n_prompt, skip, hints))
    return out


class Pixels:
    """Images after the processor's resize and crop, kept as uint8 and normalised per batch.
    Decoding and resizing PNGs at every step cost about as much as the model's step; uint8 keeps
    the whole train split in memory (2.4 GB for 28k images). Normalising here equals the
    processor's output to float rounding (tested)."""

    def __init__(self, processor, images_of):
        self.proc = processor.image_processor
        self.images_of = images_of  # (task, index) -> list of PIL images
        self.mean = torch.tensor(self.proc.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.proc.image_std).view(1, 3, 1, 1)
        self.store: dict[tuple[str, int], torch.Tensor] = {}

    def add(self, key: tuple[str, int], images: list) -> None:
        raw = self.proc(images=images, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
        self.store[key] = raw.round().clamp(0, 255).to(torch.uint8)

    def __call__(self, keys: list[tuple[str, int]]) -> torch.Tensor:
        for key in keys:
            if key not in self.store:
                self.add(key, self.images_of(*key))
        raw = torch.cat([self.store[k] for k in keys]).float() / 255.0
        return (raw - self.mean) / self.std


class Batcher:
    """Pads encoded rows into tensors, with their pixel values."""

    def __init__(self, processor, pixels: Pixels):
        self.pixels = pixels
        self.pad = processor.tokenizer.pad_token_id

    def __call__(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.ids) for e in items)
        ids = torch.full((len(items), width), self.pad)
        labels = torch.full((len(items), width), IGNORE)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, e in enumerate(items):
            n = len(e.ids)
            ids[i, :n] = torch.tensor(e.ids)
            labels[i, e.n_prompt:n] = torch.tensor(e.ids[e.n_prompt:])
            for a, b in e.unsupervised:
                labels[i, a:b] = IGNORE
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        keys = [(e.task, e.index) for e in items if e.n_images]
        if keys:
            batch["pixel_values"] = self.pixels(keys)
        return batch

    @staticmethod
    def hints(items: list[Encoded], image_token_id: int) -> tuple[torch.Tensor, ...] | None:
        """(row, query position, key positions of the 144 visual tokens, evidence mask) of every
        hint in `items`, stacked; None when there is none."""
        rows, pos, keys, masks = [], [], [], []
        for i, e in enumerate(items):
            if not e.hints:
                continue
            first = e.ids.index(image_token_id)
            for p, patches in e.hints:
                rows.append(i)
                pos.append(p)
                keys.append(torch.arange(first, first + N_VISUAL))
                m = torch.zeros(N_VISUAL, dtype=torch.bool)
                m[patches] = True
                masks.append(m)
        if not rows:
            return None
        return torch.tensor(rows), torch.tensor(pos), torch.stack(keys), torch.stack(masks)


def hint_loss(attentions: tuple[torch.Tensor, ...], hints) -> torch.Tensor:
    """Mean over hints and decoder layers after the first of -log(share of the head-mean visual
    attention that lands on the answer's evidence patches), from the position predicting the answer.
    Why: from scratch the answer loss alone does not teach the decoder to look up the object a
    question names; this tells it where. Measured: attention moves, answers do not (README)."""
    rows, pos, keys, mask = hints
    losses = []
    for att in attentions[1:] or attentions:  # the first layer cannot know the question's object yet
        a = att[rows, :, pos].float().mean(1)  # (n, T)
        visual = a.gather(1, keys)
        share = (visual * mask).sum(1) / visual.sum(1).clamp_min(1e-9)
        losses.append(-share.clamp_min(1e-6).log())
    return torch.stack(losses).mean()


class PatchHeads(torch.nn.Module):
    """Stage 1 only (never saved): linear classifiers of each patch's shape, colour and glyph on
    the features LLaVA reads (the tower's `vision_feature_layer`, CLS dropped). With `cls_weight`,
    also multi-label heads on [CLS]: which shapes, colours and glyphs the scene holds, the
    image-level objective a real CLIP's [CLS] has and VisPruner's signal relies on (README)."""

    def __init__(self, hidden: int, cls_weight: float = 0.0):
        from .pretraining import HEADS

        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, n) for k, n in HEADS.items()})
        self.cls_weight = cls_weight
        self.scene_heads = torch.nn.ModuleDict(
            {k: torch.nn.Linear(hidden, n - 1) for k, n in HEADS.items()}) if cls_weight else None  # class 0: none

    def loss(self, features: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """`features`: (batch, 1 + patches, hidden), [CLS] first; `labels`: (batch, patches) per head."""
        f = torch.nn.functional
        loss = sum(f.cross_entropy(head(features[:, 1:]).float().flatten(0, 1), labels[k].flatten())
                   for k, head in self.heads.items())
        for k, head in (self.scene_heads or {}).items():
            present = f.one_hot(labels[k], head.out_features + 1).amax(1)[:, 1:].float()  # (batch, classes)
            loss = loss + self.cls_weight * f.binary_cross_entropy_with_logits(head(features[:, 0]).float(), present)
        return loss


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ReproError(f"precision must be bf16 or fp32, not {precision!r}")


@torch.no_grad()
def teacher_forced(model, batcher: Batcher, items: list[Encoded], *, batch_size: int, device, precision: str) -> dict:
    """Per task: exact match (all answer tokens and EOS argmax-correct) and mean answer log-prob."""
    model.eval()
    hits: dict[str, list[float]] = {}
    logp: dict[str, list[float]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = {k: v.to(device) for k, v in batcher(chunk).items()}
        labels = batch.pop("labels")
        with autocast(device, precision):
            logits = model(**batch).logits.float()
        pred = logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        lp = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        valid = target != IGNORE
        for i, e in enumerate(chunk):
            v = valid[i]
            hits.setdefault(e.task, []).append(float(bool((pred[i][v] == target[i][v]).all())))
            logp.setdefault(e.task, []).append(float(lp[i][v].sum()))
    model.train()
    return {k: {"exact_match": sum(v) / len(v), "answer_logprob": sum(logp[k]) / len(v), "n": len(v)}
            for k, v in hits.items()}


# ------------------------------------------------------------------ training


def lr_at(step: int, cfg: TrainConfig, steps: int | None = None) -> float:
    steps = cfg.steps if steps is None else steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _order(encoded: list[Encoded], cfg: TrainConfig, rng: random.Random) -> list[int]:
    """One pass over the training rows, each task repeated/subsampled by its weight, shuffled."""
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(encoded):
        by_task.setdefault(e.task, []).append(i)
    order = []
    for key, idx in by_task.items():
        w = cfg.task_weights.get(key, 1.0)
        whole, frac = int(w), w - int(w)
        order += idx * whole + rng.sample(idx, round(frac * len(idx)))
    rng.shuffle(order)
    return order


def _param_groups(model, cfg: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or "embedding" in name else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_vision(model, heads: PatchHeads, scenes: list, pixels: Pixels, cfg: TrainConfig, rng: random.Random,
                 dev: torch.device) -> list[dict]:
    """Stage 1: the vision tower and the patch heads alone on the scenes' dense labels (no decoder:
    a step costs about a third of a full one). Returns the loss history."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay)
    labels = {k: torch.stack([s.labels[k] for s in scenes]) for k in heads.heads}
    history, t0, avg = [], time.perf_counter(), None
    for step in range(cfg.vision_steps):
        idx = rng.sample(range(len(scenes)), cfg.vision_batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, cfg.vision_steps)
        with autocast(dev, cfg.precision):
            feats = tower(pixels([(CAPTION, i) for i in idx]).to(dev), output_hidden_states=True).hidden_states[layer]
            loss = heads.loss(feats, {k: v[idx].to(dev) for k, v in labels.items()})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        avg = value if avg is None else 0.95 * avg + 0.05 * value
        if (step + 1) % 100 == 0 or step + 1 == cfg.vision_steps:
            history.append({"step": step + 1, "seconds": round(time.perf_counter() - t0, 1), "patch_loss": round(avg, 4)})
            log.info("vision step %d patch loss %.3f %.0fs", step + 1, avg, time.perf_counter() - t0)
    return history


def fit(model, next_batch, steps: int, batcher: Batcher, cfg: TrainConfig, dev: torch.device, name: str,
        evaluate=None, eval_every: int = 0) -> list[dict]:
    """Stages 2 and 3 (and the letter stage): AdamW on the answer loss over `steps` batches from
    `next_batch()` (a list of row groups, one forward each, losses summed), with its own warm-up
    and cosine schedule; `evaluate()` every `eval_every` steps. Returns the history."""
    groups = _param_groups(model, cfg)  # trainable parameters only
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    history, t0, avg = [], time.perf_counter(), None
    image_token_id = model.config.image_token_id
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, steps)
        value = 0.0
        for items in next_batch():
            batch = {k: v.to(dev) for k, v in batcher(items).items()}
            hints = Batcher.hints(items, image_token_id) if cfg.attention_hint else None
            with autocast(dev, cfg.precision):
                out = model(**batch, output_attentions=hints is not None)
                loss = out.loss
                if hints is not None:
                    loss = loss + cfg.attention_hint * hint_loss(out.attentions, [h.to(dev) for h in hints])
            loss.backward()
            value += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        avg = value if avg is None else 0.98 * avg + 0.02 * value
        if step % 50 == 0:
            log.info("%s step %d loss %.4f lr %.2e %.0fs", name, step, avg, lr_at(step, cfg, steps), time.perf_counter() - t0)
        if evaluate and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            res = evaluate()
            mean = sum(r["exact_match"] for r in res.values()) / len(res)
            history.append({"stage": name, "step": step + 1, "seconds": round(time.perf_counter() - t0, 1),
                            "loss": round(avg, 4), "mean_exact_match": round(mean, 4),
                            "exact_match": {k: round(r["exact_match"], 3) for k, r in res.items()}})
            log.info("%s eval step %d mean %.3f %s", name, step + 1, mean,
                     " ".join(f"{k}={r['exact_match']:.2f}" for k, r in res.items()))
    return history


def _batches(pool: list[Encoded], size: int, rng: random.Random, order=None):
    """Endless batches of `size` from `pool`, in passes of `order(pool)` (default: shuffled).
    Checked here, before the stage starts: an empty pool would otherwise loop forever."""
    if not pool or size < 1:
        raise ReproError(f"cannot draw batches of {size} from {len(pool)} training rows: "
                         "check --scenes, --batch-size, --caption-mix and --letter-mix")

    def endless():
        queue: list[int] = []
        while True:
            if len(queue) < size:
                queue += rng.sample(range(len(pool)), len(pool)) if order is None else order()
            idx, queue = queue[:size], queue[size:]
            yield [pool[i] for i in idx]

    return endless()


def train(cfg: TrainConfig, out: Path, *, data_dir: Path, device: str = "cpu", threads: int | None = None,
          eval_every: int = 250, eval_rows: int = 48, command: str = "") -> dict:
    """Train, save to `out` (fp16 safetensors + processor + SHA256SUMS + train_record.json); the record."""
    from .pretraining import scenes as make_scenes

    t_start = time.perf_counter()
    _check_compiler(cfg, device)
    if threads:
        torch.set_num_threads(threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)

    tasks = task_objects(data_dir)
    train_rows, train_ds = split_rows(data_dir, tasks, "train", cfg.train_rows)
    val_rows, val_ds = split_rows(data_dir, tasks, "validation")
    scenes = make_scenes(cfg.seed, cfg.scenes)
    captions = caption_rows(scenes)
    tok = build_tokenizer(tokenizer_corpus(train_rows + captions), cfg.vocab_size)
    model, processor = build_model(cfg, tok)
    if cfg.attention_hint or cfg.compile:
        # hint_loss reads attention weights; compiled, eager attention beats SDPA at these lengths (not saved)
        model.set_attn_implementation({"text_config": "eager"})
    _check_prompt_encoding(processor, tasks, train_ds, train_rows)
    train_enc, val_enc, cap_enc = (encode_rows(r, processor) for r in (train_rows, val_rows, captions))
    letter_enc, val_letters = [], []
    if cfg.letter_steps or cfg.letter_mix:  # own random stream: the runs without letters are unchanged
        letter_rng = random.Random(f"tinyworld-llava/letters/{cfg.seed}")
        letter_enc = encode_rows(letter_rows(train_rows, 3, letter_rng), processor)  # 3 option orders a row
        val_letters = encode_rows(letter_rows(val_rows, 1, letter_rng), processor)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("rows: train %d, validation %d, scene rows %d; vocab %d; params %.2fM; prompt tokens mean %.1f max %d "
             "(+%d visual); caption tokens mean %.1f", len(train_enc), len(val_enc), len(cap_enc), len(tok),
             n_params / 1e6, sum(e.n_prompt for e in train_enc) / len(train_enc) - N_VISUAL,
             max(e.n_prompt for e in train_enc) - N_VISUAL, N_VISUAL,
             sum(len(e.ids) - e.n_prompt for e in cap_enc) / max(1, len(cap_enc)))

    def images_of(split_ds):
        def get(task: str, index: int) -> list:
            if task == CAPTION:
                return [scenes[index].image]
            return tasks[task].doc_to_visual(split_ds[task][index])
        return get

    train_batcher = Batcher(processor, Pixels(processor, images_of(train_ds)))
    val_batcher = Batcher(processor, Pixels(processor, images_of(val_ds)))
    rng = random.Random(f"tinyworld-llava/{cfg.seed}")
    monitor = [e for key in tasks for e in [v for v in val_enc if v.task == key][:eval_rows]]
    if val_letters and eval_rows:  # spread over the lettered tasks
        monitor += val_letters[::max(1, len(val_letters) // (2 * eval_rows))][:2 * eval_rows]
    model.to(dev).train()
    t_train = time.perf_counter()

    def evaluate():
        return teacher_forced(model, val_batcher, monitor, batch_size=64, device=dev, precision=cfg.precision)

    history = {"vision": [], "letters": [], "caption": [], "tasks": []}
    if cfg.vision_steps:
        heads = PatchHeads(cfg.vision_hidden, cfg.cls_presence).to(dev)
        history["vision"] = train_vision(model, heads, scenes, train_batcher.pixels, cfg, rng, dev)
    if cfg.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
    step_model = torch.compile(model) if cfg.compile else model  # shares the parameters; evaluation runs eager
    letter_batches = _batches(letter_enc, cfg.letter_mix, rng) if cfg.letter_mix else None
    if cfg.letter_steps:
        fixed = _batches(letter_enc, cfg.batch_size, rng)
        history["letters"] = fit(step_model, lambda: [next(fixed)], cfg.letter_steps, train_batcher, cfg, dev,
                                 "letters", evaluate, eval_every)

    def with_letters(items: list[Encoded]) -> list[list[Encoded]]:
        return [items, next(letter_batches)] if letter_batches else [items]

    if cfg.caption_steps:
        scene_batches = _batches(cap_enc, cfg.batch_size, rng)
        history["caption"] = fit(step_model, lambda: with_letters(next(scene_batches)), cfg.caption_steps,
                                 train_batcher, cfg, dev, "caption", evaluate, eval_every)
    n_caption = round(cfg.batch_size * cfg.caption_mix) if cap_enc else 0
    task_batches = _batches(train_enc, cfg.batch_size - n_caption, rng, order=lambda: _order(train_enc, cfg, rng))
    caption_batches = _batches(cap_enc, n_caption, rng) if n_caption else None

    def task_step() -> list[list[Encoded]]:
        return with_letters(next(task_batches) + (next(caption_batches) if caption_batches else []))

    history["tasks"] = fit(step_model, task_step, cfg.steps, train_batcher, cfg, dev, "tasks", evaluate, eval_every)
    train_seconds = time.perf_counter() - t_train

    record = save(model, processor, out, cfg)
    reloaded, _ = load_trained(out)  # what users get: stored weights, upcast to fp32
    final = teacher_forced(reloaded, val_batcher, val_enc + val_letters, batch_size=64, device=torch.device("cpu"), precision="fp32")
    record.update({
        "command": command,
        "config": asdict(cfg),
        "params": n_params,
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "versions": _versions(),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "history": history,
        "validation_teacher_forced": {k: {kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in r.items()}
                                      for k, r in final.items()},
    })
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _check_compiler(cfg: TrainConfig, device: str) -> None:
    """Fail before any work when `--compile` cannot build its CPU kernels (inductor emits C++)."""
    if cfg.compile and torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ReproError("--compile on CPU needs a C++ compiler (torch.compile builds C++ kernels): "
                         "install g++, or train without --compile")


def _check_prompt_encoding(processor, tasks, datasets, rows: list[Row]) -> None:
    """The training ids of the first row of each task equal what the processor makes of (images, prompt)."""
    done = set()
    for r in rows:
        if r.task in done:
            continue
        done.add(r.task)
        images = tasks[r.task].doc_to_visual(datasets[r.task][r.index])
        want = processor(images=images, text=r.prompt, return_tensors="pt")["input_ids"][0].tolist()
        got = encode_rows([r], processor)[0]
        if got.ids[:got.n_prompt] != want:
            raise AssertionError(f"training prompt ids differ from the processor's for {r.task}")


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


# ------------------------------------------------------------------ saving and checksums

CHECKSUMS = "SHA256SUMS"


def save(model, processor, out: Path, cfg: TrainConfig) -> dict:
    """Weights in `cfg.save_dtype`, processor files, and SHA256SUMS over every file needed to load."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file():
            stale.unlink()
    dtype = getattr(torch, cfg.save_dtype)
    model_cpu = model.to("cpu")
    state = {k: v.detach().clone() for k, v in model_cpu.state_dict().items()}
    model_cpu.to(dtype)
    model_cpu.save_pretrained(out)
    model_cpu.load_state_dict(state)
    model_cpu.float()
    processor.save_pretrained(out)
    from .weights import write_checksums

    write_checksums(out)
    return {"format": WEIGHTS_FORMAT, "save_dtype": cfg.save_dtype}


def load_trained(path: Path, check: bool = True):
    """Reload a saved checkpoint as fp32 (checksums first): (hf model, processor)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .weights import verify_checksums

    if check:
        verify_checksums(path)
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    return hf.eval(), AutoProcessor.from_pretrained(path)


# ------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory of the checkpoint")
    p.add_argument("--data-dir", default=None, help="tiny-world data (default: the per-user cache; built if absent)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-rows", type=int, default=48, help="validation rows per task for the progress monitor")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "task_weights":
            p.add_argument(flag, default=None, help="JSON object: sampling weight per task key "
                           f"(default {json.dumps(TrainConfig().task_weights)}; '{{}}' weighs all alike)")
        elif isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags name; without `--task-weights`, the recipe's weights."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if args.task_weights is None:
        del values["task_weights"]
    else:
        try:
            values["task_weights"] = weights = json.loads(args.task_weights)
        except json.JSONDecodeError as e:
            raise ReproError(f"--task-weights {args.task_weights!r} is not JSON ({e}); "
                             "give an object such as '{\"pope\": 3}'") from e
        if not isinstance(weights, dict) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights.values()):
            raise ReproError(f"--task-weights must be a JSON object of non-negative numbers, got {args.task_weights!r}")
        from .suite import TASKS

        if unknown := sorted(weights.keys() - {t.key for t in TASKS}):
            raise ReproError(f"--task-weights names unknown tasks {unknown}; "
                             f"the task keys are {', '.join(t.key for t in TASKS)}")
    return TrainConfig(**values)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from . import build as build_suite
    from . import default_data_dir, verify

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    cfg = config_from_args(args)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        verify(data_dir)
    except ReproError:
        build_suite(data_dir, seed=0)  # the default suite (the one the checkpoint is trained on)
    command = "python -m repro.tinyworld train " + " ".join(shlex.quote(a) for a in argv)
    record = train(cfg, Path(args.out), data_dir=data_dir, device=args.device, threads=args.threads,
                   eval_every=args.eval_every, eval_rows=args.eval_rows, command=command)
    print(json.dumps({k: record[k] for k in ("train_seconds", "params")}))
    return 0
