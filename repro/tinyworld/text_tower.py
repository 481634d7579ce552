"""A CLIP-style text tower for `tinyworld-llava`, so CDPruner and TRIM run on the tiny profile.

The real LLaVA checkpoints pair their vision tower with the text half of the CLIP checkpoint it
came from. `tinyworld-llava`'s tower was trained from scratch, so no text encoder is aligned with
it: this trains one contrastively (symmetric InfoNCE, as CLIP) against the *frozen* vision tower.
Image side: CLIP's recipe on the features the reducers score, i.e. a learned linear
`visual_projection` of the post-layernormed patch features of the layer LLaVA reads, averaged over
patches (so each patch's own projection is what TRIM and CDPruner compare with the text). Text
side: a small `CLIPTextModelWithProjection` on the model's own tokenizer. Data: the generated
pretraining scenes (never the tasks' rows), each with its caption and its follow-up questions.

    python -m repro.tinyworld text-tower --out repro/tinyworld/weights/tinyworld-text-tower

writes `model.safetensors` + `config.json` (loadable with `CLIPTextModelWithProjection.from_pretrained`),
the tokenizer files, `visual_projection.safetensors`, `SHA256SUMS` and `train_record.json` with the
validation retrieval figures.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .pretraining import scenes
from .weights import write_checksums

VALIDATION_SEED = 1_000_003  # a scene stream disjoint from the training stream (seed + 0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=1500, help="training scenes (default 1500)")
    p.add_argument("--validation", type=int, default=200, help="validation scenes for retrieval (default 200)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)


@torch.inference_mode()
def image_features(model, images, batch: int = 64) -> torch.Tensor:
    """(n, d_vision): post-layernormed patch features of the layer LLaVA reads, mean over patches."""
    hf = model.hf
    tower = hf.model.vision_tower
    vision = tower.vision_model if hasattr(tower, "vision_model") else tower
    out = []
    for start in range(0, len(images), batch):
        pixels = model.processor.image_processor(images[start:start + batch], return_tensors="pt")["pixel_values"]
        hidden = tower(pixels.to(model.adapter.dtype), output_hidden_states=True).hidden_states
        patches = hidden[hf.config.vision_feature_layer][:, 1:]
        out.append(vision.post_layernorm(patches).float().mean(1))
    return torch.cat(out)


def texts_of(scene) -> list[str]:
    return [scene.caption] + [q for q, _ in scene.turns]


def build_text_tower(tokenizer, hidden: int, projection: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, projection_dim=projection,
                            max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id or 0, bos_token_id=tokenizer.bos_token_id or 1)
    return CLIPTextModelWithProjection(config)


def encode_texts(text_model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Right-padded batch, each text ending with EOS (CLIP pools at the EOS position)."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:76] for t in texts]
    rows = [r + [tokenizer.eos_token_id] if r[-1] != tokenizer.eos_token_id else r for r in rows]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
    return text_model(input_ids=ids, attention_mask=mask).text_embeds


def retrieval(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of image->text and text->image retrieval (pair i is the match of i)."""
    sims = F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    target = torch.arange(sims.shape[0])
    return {"image_to_text_top1": float((sims.argmax(1) == target).float().mean()),
            "text_to_image_top1": float((sims.argmax(0) == target).float().mean()),
            "chance": 1 / sims.shape[0]}


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import repro

    torch.set_num_threads(args.threads)
    started, cpu_started = time.time(), time.process_time()
    model = repro.load("tinyworld-llava")
    tokenizer = model.tokenizer
    train, val = scenes(args.seed, args.scenes), scenes(VALIDATION_SEED + args.seed, args.validation)
    x_train = image_features(model, [s.image for s in train])
    x_val = image_features(model, [s.image for s in val])
    feature_time = time.time() - started
    text_model = build_text_tower(tokenizer, args.hidden, args.hidden, args.seed)
    visual_projection = torch.nn.Linear(x_train.shape[1], args.hidden, bias=False)
    scale = torch.nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's initial temperature
    params = list(text_model.parameters()) + list(visual_projection.parameters()) + [scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)
    rng = random.Random(f"text-tower/{args.seed}")
    texts = [texts_of(s) for s in train]
    losses = []
    for step in range(args.steps):
        idx = rng.sample(range(len(train)), args.batch)
        t = encode_texts(text_model, tokenizer, [rng.choice(texts[i]) for i in idx])
        v = visual_projection(x_train[idx])
        logits = scale.exp().clamp(max=100) * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {sum(losses[-100:]) / len(losses[-100:]):.3f}", flush=True)
    text_model.eval()
    with torch.inference_mode():
        figures = {"captions": retrieval(visual_projection(x_val), encode_texts(text_model, tokenizer,
                                                                                  [s.caption for s in val])),
                   "questions": retrieval(visual_projection(x_val), encode_texts(text_model, tokenizer,
                                                                                   [s.turns[0][0] for s in val]))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from safetensors.torch import save_file

    save_file({"visual_projection.weight": visual_projection.weight.detach().contiguous()},
              str(out / "visual_projection.safetensors"))
    write_checksums(out)
    record = {"command": "python -m repro.tinyworld text-tower " + " ".join(argv), "seconds": round(time.time() - started, 1),
              "cpu_seconds": round(time.process_time() - cpu_started, 1),
              "feature_seconds": round(feature_time, 1), "threads": args.threads, "train_scenes": args.scenes,
              "validation_scenes": args.validation, "steps": args.steps, "final_loss": round(losses[-1], 4),
              "validation_retrieval": figures}
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0
