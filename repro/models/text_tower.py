"""CLIP text towers for the text-conditioned reducers (CDPruner, TRIM).

Both score visual tokens against the instruction with the text half of the CLIP checkpoint the
vision tower comes from, and map the tower's patch features into CLIP's joint space with that
checkpoint's `visual_projection` (which LLaVA does not ship). Sources, per model:

* registry LLaVA checkpoints: `CLIPTextModelWithProjection.from_pretrained` of the entry's
  `text_tower` hub id (openai/clip-vit-large-patch14-336), plus its `visual_projection` weight
  read from the same snapshot; staged like the model weights (`hf download <id>`);
* models built with random weights (the tiny families, benchmark and timing models): a random
  tower built offline (deterministic, the model's tokenizer);
* `tinyworld-llava`: the tower shipped next to it, trained contrastively against its frozen
  vision tower (`python -m repro.tinyworld text-tower`), when present;
* any other model: a hub id or folder given as the method's `text_tower` option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repro.errors import ReproError

CONTEXT = 77  # CLIP's text context length
SHIPPED_TEXT_TOWER = Path(__file__).resolve().parent.parent / "tinyworld" / "weights" / "tinyworld-text-tower"
TRAIN_COMMAND = "python -m repro.tinyworld text-tower --out repro/tinyworld/weights/tinyworld-text-tower"


@dataclass
class TextTower:
    """A CLIP text encoder with projection, its tokenizer and the matching visual projection."""

    text: Any  # CLIPTextModelWithProjection
    tokenizer: Any
    visual_projection: nn.Linear
    source: str
    pad_id: int = 0

    @property
    def device(self) -> torch.device:
        return self.visual_projection.weight.device

    def _ids(self, text: str) -> list[int]:
        """Token ids ending with EOS, where CLIP pools (CLIP's tokenizer adds it; others may not)."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids if eos is None or (ids and ids[-1] == eos) else ids + [eos]

    @torch.inference_mode()
    def embed(self, text: str) -> Tensor:
        """(d,) `text_embeds` of `text` truncated to 77 tokens (TRIM), not normalised."""
        ids = self._ids(text)
        ids = ids if len(ids) <= CONTEXT else ids[: CONTEXT - 1] + ids[-1:]  # truncated, EOS kept (CLIP's truncation)
        return self.text(input_ids=torch.tensor([ids], device=self.device)).text_embeds[0].float()

    @torch.inference_mode()
    def embed_segments(self, text: str) -> Tensor:
        """(M, d) `text_embeds` of `text` split into rows of 77 tokens, right-padded with id 0, as
        CDPruner does (no truncation; rows after the first have no BOS)."""
        ids = self._ids(text)
        rows = max(1, -(-len(ids) // CONTEXT))
        ids = ids + [self.pad_id] * (rows * CONTEXT - len(ids))
        x = torch.tensor(ids, device=self.device).view(rows, CONTEXT)
        return self.text(input_ids=x).text_embeds.float()

    @torch.inference_mode()
    def image_embeds(self, post_normed: Tensor) -> Tensor:
        """(n, d) CLIP image-side embeddings of post-layernormed patch features, in fp32 (as the
        references' fp32 towers compute them)."""
        return torch.nn.functional.linear(post_normed.float(), self.visual_projection.weight.float())


def random_text_tower(tokenizer, vision_hidden: int, *, seed: int = 0, hidden: int = 32, projection: int = 16,
                      device: str | torch.device = "cpu") -> TextTower:
    """A small random CLIP text tower on the model's own tokenizer (tiny families: the code path,
    not the semantics, is under test)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 2
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=projection,
                            max_position_embeddings=CONTEXT, eos_token_id=eos, pad_token_id=0, bos_token_id=1)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text = CLIPTextModelWithProjection(config).eval()
        projection_layer = nn.Linear(vision_hidden, projection, bias=False)
    finally:
        torch.random.set_rng_state(state)
    return TextTower(text.to(device), tokenizer, projection_layer.to(device).eval(), source=f"random (seed {seed})")


def clip_text_tower(source: str, *, device, dtype=None) -> TextTower:
    """The CLIP checkpoint `source` (hub id or folder): its text model with projection and tokenizer
    via `from_pretrained`, and its `visual_projection` weight read from the same files."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    try:
        text = CLIPTextModelWithProjection.from_pretrained(source, dtype=dtype or torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        weight = _visual_projection_weight(source)
    except (OSError, ValueError, KeyError) as err:
        raise ReproError(f"the CLIP text tower {source!r} is not available ({type(err).__name__}); stage it with "
                         f"`hf download {source}` (or pass text_tower=<folder> to the method)") from None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    return TextTower(text, tokenizer, layer.to(device=device, dtype=text.dtype).eval(), source=source)


def _visual_projection_weight(source: str) -> Tensor:
    from safetensors import safe_open

    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json", "*.txt"]))
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if "visual_projection.weight" in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return f.get_tensor("visual_projection.weight").float()
    raise KeyError("visual_projection.weight")


def text_tower_for(model, source: str | None = None) -> TextTower:
    """The text tower of a loaded `repro.Model` (see the module docstring for the sources)."""
    if source is not None:
        if source.startswith("random"):
            return random_text_tower(model.tokenizer, _vision_hidden(model), device=model.adapter.device)
        if Path(source).is_dir() and (Path(source) / "SHA256SUMS").is_file():
            from repro.tinyworld.weights import verify_checksums

            verify_checksums(Path(source), retrain=TRAIN_COMMAND)
        return clip_text_tower(source, device=model.adapter.device)
    if getattr(model, "random_weights", False):  # tiny/bench families, timing runs: the code path, not semantics
        return random_text_tower(model.tokenizer, _vision_hidden(model), device=model.adapter.device)
    if model.name == "tinyworld-llava":
        if not (SHIPPED_TEXT_TOWER / "SHA256SUMS").is_file():
            raise ReproError(f"tinyworld-llava has no text tower yet; train it with `{TRAIN_COMMAND}`")
        return text_tower_for(model, str(SHIPPED_TEXT_TOWER))
    from repro.models.registry import entries

    entry = next((e for e in entries() if model.name in (e.name, e.hf_id)), None)
    if entry is None or not entry.text_tower:
        raise ReproError(f"no CLIP text tower is known for {model.name!r}; pass text_tower=<hub id or folder of the "
                         "CLIP checkpoint its vision tower comes from> to the method")
    return clip_text_tower(entry.text_tower, device=model.adapter.device)


def _vision_hidden(model) -> int:
    return model.hf.config.vision_config.hidden_size
