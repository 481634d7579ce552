"""The FLOPs table of `run_all.sh --table flops`: unpruned cost and the paper's budgets, per model.

Analytic only (no weights needed). Written as Markdown and CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from repro.budget import Budget, solve_knob
from repro.errors import ReproError
from repro.flops import DEFAULT_TEXT_TOKENS, unpruned_prefill_flops
from repro.models.registry import ModelEntry

#: DOP's headline budgets: 86 % and 77 % FLOPs reduction.
RATIO_BUDGETS = (0.14, 0.23)

#: Token budgets the baselines quote (MODELS.md section 8), per family.
TOKEN_BUDGETS = {
    "llava-1.5": (192, 128, 64),
    "llava-next": (640, 320, 160),
    "qwen2.5-vl": (512, 256, 128),
    "internvl3": (),
}

NOTES = (
    "Decoder prefill FLOPs; n = visual tokens + text tokens in every layer.",
    "unpruned: default visual tokens of the model card, both conventions.",
    "ratio:R rows: TFLOPs is the ceiling R x unpruned (paper convention); visual tokens is the "
    "largest count kept in every layer whose cost fits it ('-' when the text tokens alone cost more: "
    "uniform token pruning cannot reach that budget, operation pruning can).",
    "tokens:N rows: N visual tokens kept in every layer (pre-LLM pruning), paper convention.",
)


@dataclass(frozen=True)
class FlopsRow:
    """One line of the table."""

    model: str
    budget: str
    convention: str
    visual_tokens: int | None  # None: no uniform visual-token count fits the budget
    text_tokens: int
    tflops: float
    percent_of_unpruned: float


def flops_rows(models: Sequence[ModelEntry], text_tokens: int = DEFAULT_TEXT_TOKENS) -> list[FlopsRow]:
    """Rows for each model: unpruned (paper, exact), ratio budgets, token budgets."""
    rows: list[FlopsRow] = []
    for entry in models:
        card = entry.card
        n_vis = card.visual_tokens
        base = {c: unpruned_prefill_flops(card, n_vis + text_tokens, c) for c in ("paper", "exact")}
        for convention, flops in base.items():
            rows.append(FlopsRow(entry.name, "unpruned", convention, n_vis, text_tokens, flops / 1e12, 100.0))

        def cost(k: int) -> float:
            return unpruned_prefill_flops(card, k + text_tokens, "paper")

        for ratio in RATIO_BUDGETS:
            budget = Budget("ratio", ratio)
            ceiling = budget.max_flops(base["paper"])
            try:
                kept: int | None = solve_knob(range(n_vis + 1), cost, ceiling)
            except ReproError:
                kept = None
            rows.append(FlopsRow(entry.name, str(budget), "paper", kept, text_tokens, ceiling / 1e12, 100.0 * ratio))
        for n in TOKEN_BUDGETS[entry.family]:
            flops = cost(n)
            pct = 100.0 * flops / base["paper"]
            rows.append(FlopsRow(entry.name, str(Budget("tokens", n)), "paper", n, text_tokens, flops / 1e12, pct))
    return rows


def _cells(row: FlopsRow) -> list[str]:
    return [
        row.model,
        row.budget,
        row.convention,
        "-" if row.visual_tokens is None else str(row.visual_tokens),
        str(row.text_tokens),
        f"{row.tflops:.2f}",
        f"{row.percent_of_unpruned:.1f}",
    ]


def render_markdown(rows: Sequence[FlopsRow]) -> str:
    """A Markdown table plus the notes that say how each row is computed."""
    from repro.report.tables import markdown

    header = ["model", "budget", "convention", "visual tokens", "text tokens", "TFLOPs", "% of unpruned"]
    lines = ["# Prefill FLOPs", "", markdown([_cells(r) for r in rows], header)]
    lines += [""] + [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[FlopsRow]) -> str:
    """CSV with full precision (TFLOPs rounded to 6 decimals)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(FlopsRow)])
    for row in rows:
        values = list(astuple(row))
        values[3] = "" if row.visual_tokens is None else row.visual_tokens
        values[5] = f"{row.tflops:.6f}"
        values[6] = f"{row.percent_of_unpruned:.4f}"
        writer.writerow(values)
    return buf.getvalue()


def write_flops_table(
    out_dir: str | Path, models: Sequence[ModelEntry], text_tokens: int = DEFAULT_TEXT_TOKENS
) -> list[Path]:
    """Write `flops.md` and `flops.csv` into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = flops_rows(models, text_tokens)
    paths = [out / "flops.md", out / "flops.csv"]
    for path, text in zip(paths, (render_markdown(rows), render_csv(rows))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths
