"""Analytic prefill FLOPs from an architecture card and realized per-layer token counts.

Budgets (`ratio:R`, `tflops:X`) and every result's realized cost are computed here, so all
methods are compared with the same arithmetic. Counts are exact Python integers.

Two conventions are declared (a result always records which one it used):

* ``paper`` -- the DOP authors' formula (also SparseVLM / FitPrune / CDPruner): decoder only,
  prefill only, 2 FLOPs per multiply-add, no GQA (Q, K, V, O are each d x d), attention scores and
  weighted sum n_q x n_kv x d each, gated MLP three d x d_ff matrices.
* ``exact`` -- the same terms with the real projection widths: Q and O use d_q = heads x head_dim,
  K and V use d_kv = kv_heads x head_dim (GQA), scores and weighted sum n_q x n_kv x d_q.
  Optionally adds the LM head (`prefill_flops(..., lm_head_tokens=)`) and, separately, the vision
  encoder and projector (`vision_flops`).

Both exclude biases, norms, RoPE, softmax, activations, the residual adds and the embedding
lookup (they are small and not matmuls). Scores are counted over the full n_q x n_kv rectangle
(the causal mask is not subtracted), as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from repro.errors import ReproError
from repro.models.cards import ArchCard

CONVENTIONS = ("paper", "exact")

CONVENTION_DOCS = MappingProxyType(
    {
        "paper": (
            "DOP authors' formula: decoder prefill only, 2 FLOPs per MAC, no GQA. Per layer: "
            "Q,O 2*nq*d*d each; K,V 2*nk*d*d each; scores and weighted sum 2*nq*nk*d each; "
            "gated MLP 3*2*nm*d*d_ff. No LM head, no vision encoder."
        ),
        "exact": (
            "GQA-aware: Q 2*nq*d*d_q; K,V 2*nk*d*d_kv each; O 2*nq*d_q*d; scores and weighted sum "
            "2*nq*nk*d_q each; gated MLP 3*2*nm*d*d_ff. Optional LM head 2*t*d*vocab and vision "
            "encoder + projector (vision_flops)."
        ),
    }
)


@dataclass(frozen=True)
class LayerTokens:
    """Token counts at one decoder layer.

    queries: tokens issuing attention queries (and getting the output projection);
    keys: tokens providing keys/values; mlp: tokens passing through the MLP.
    """

    queries: int
    keys: int
    mlp: int

    def __post_init__(self) -> None:
        if min(self.queries, self.keys, self.mlp) < 0:
            raise ValueError(f"token counts must be >= 0, got {self}")


def check_convention(convention: str) -> str:
    """Return `convention` if known; a ReproError naming the known ones otherwise."""
    if convention not in CONVENTIONS:
        raise ReproError(f"unknown FLOPs convention {convention!r}; use one of: {', '.join(CONVENTIONS)}")
    return convention


def layer_terms(card: ArchCard, t: LayerTokens, convention: str) -> dict[str, int]:
    """Per-operation FLOPs of one decoder layer (keys: q, k, v, o, scores, weighted_sum, mlp)."""
    return token_terms(card, t.queries, t.keys, t.mlp, convention)


def token_terms(card: ArchCard, nq, nk, nm, convention: str) -> dict:
    """`layer_terms` for raw counts: ints, or integer numpy arrays (element-wise, for search grids)."""
    check_convention(convention)
    d = card.hidden
    d_q, d_kv = (d, d) if convention == "paper" else (card.d_q, card.d_kv)
    return {
        "q": 2 * nq * d * d_q,
        "k": 2 * nk * d * d_kv,
        "v": 2 * nk * d * d_kv,
        "o": 2 * nq * d_q * d,
        "scores": 2 * nq * nk * d_q,
        "weighted_sum": 2 * nq * nk * d_q,
        "mlp": 3 * 2 * nm * d * card.mlp,
    }


def token_flops(card: ArchCard, nq, nk, nm, convention: str):
    """`layer_flops` for raw counts (ints or integer numpy arrays, element-wise)."""
    return sum(token_terms(card, nq, nk, nm, convention).values())


def layer_flops(card: ArchCard, t: LayerTokens, convention: str) -> int:
    """FLOPs of one decoder layer under `convention` (see the module docstring)."""
    return sum(layer_terms(card, t, convention).values())


def lm_head_flops(card: ArchCard, tokens: int) -> int:
    """FLOPs of the LM head on `tokens` positions (1 in a prefill that only needs the last logit)."""
    return 2 * tokens * card.hidden * card.vocab


def prefill_flops(
    card: ArchCard,
    layers: Sequence[LayerTokens],
    convention: str,
    *,
    lm_head_tokens: int = 0,
) -> int:
    """Decoder prefill FLOPs for realized per-layer token counts (one entry per layer).

    `lm_head_tokens` > 0 adds the LM head; the paper convention has none, so asking for it there
    is a ValueError.
    """
    check_convention(convention)
    if len(layers) != card.layers:
        raise ValueError(f"expected {card.layers} per-layer token counts, got {len(layers)}")
    total = sum(layer_flops(card, t, convention) for t in layers)
    if lm_head_tokens < 0:
        raise ValueError("lm_head_tokens must be >= 0")
    if lm_head_tokens > 0:
        if convention == "paper":
            raise ValueError("the paper convention has no LM head term; use convention='exact'")
        total += lm_head_flops(card, lm_head_tokens)
    return total


def visual_per_layer_flops(card: ArchCard, n_other: int, visual: Sequence[int]) -> int:
    """Paper-convention prefill FLOPs when layer l runs `visual[l]` visual tokens and every other
    token in attention and MLP (the shape of methods that prune whole tokens between layers)."""
    return prefill_flops(card, [LayerTokens(n_other + v, n_other + v, n_other + v) for v in visual], "paper")


def unpruned_layers(card: ArchCard, n_tokens: int) -> list[LayerTokens]:
    """Every token in every operation of every layer."""
    return [LayerTokens(n_tokens, n_tokens, n_tokens) for _ in range(card.layers)]


def unpruned_prefill_flops(card: ArchCard, n_tokens: int, convention: str) -> int:
    """Decoder prefill FLOPs of the unpruned model on a sequence of `n_tokens`."""
    return prefill_flops(card, unpruned_layers(card, n_tokens), convention)


def vision_flops(card: ArchCard, n_images_or_crops: int, *, include_projector: bool = True) -> int:
    """FLOPs of the vision encoder (and projector) for `n_images_or_crops` encoder passes.

    Included, at 2 FLOPs per MAC: the patch embedding as a matmul (patches x in_channels x
    temporal x patch^2 -> hidden); per block Q, K, V, O (hidden x hidden each) and the MLP (two
    matrices, or three when gated) on all positions (patches + CLS); attention scores and weighted
    sum over the full unit, or over `window`^2 patches in windowed blocks (Qwen2.5-VL; exact when
    the patch grid divides into windows). Every block is counted even when features are taken
    from an earlier layer, since HF runs them all. Projector (when asked): two matmuls
    (merge x hidden -> projector hidden -> LLM hidden) on the LLM tokens, CLS dropped.
    Excluded: biases, norms, position embeddings, activations, the LLaVA-NeXT newline vector.
    """
    if n_images_or_crops < 0:
        raise ValueError("n_images_or_crops must be >= 0")
    v = card.vision
    h = v.hidden
    n = v.positions
    per_unit = 2 * v.patches * (v.in_channels * v.temporal_patch * v.patch_size**2) * h
    mlp_matrices = 3 if v.gated_mlp else 2
    for layer in range(v.layers):
        windowed = v.window > 0 and layer not in v.full_attention_blocks
        span = min(n, v.window**2) if windowed else n
        per_unit += 4 * 2 * n * h * h
        per_unit += 2 * 2 * n * span * h
        per_unit += mlp_matrices * 2 * n * h * v.mlp
    if include_projector:
        width = v.projector_hidden or card.hidden
        per_unit += 2 * v.llm_tokens * (v.merge * h * width + width * card.hidden)
    return n_images_or_crops * per_unit


#: 35-token vicuna_v1 prefix + 64 question/suffix tokens (MODELS.md section 8).
DEFAULT_TEXT_TOKENS = 99


def equal_flops_ratio(entry, n_tokens: int, text_tokens: int = DEFAULT_TEXT_TOKENS) -> float:
    """The FLOPs ratio of keeping `n_tokens` visual tokens in every layer, on the model's nominal
    prompt (its card's visual tokens + `text_tokens`): a token budget at equal prefill TFLOPs."""
    card = entry.card
    if not 0 <= n_tokens <= card.visual_tokens:
        raise ReproError(f"{entry.name} has {card.visual_tokens} visual tokens; cannot keep {n_tokens}")
    return (unpruned_prefill_flops(card, n_tokens + text_tokens, "paper")
            / unpruned_prefill_flops(card, card.visual_tokens + text_tokens, "paper"))
