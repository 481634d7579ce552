"""Write one table as Markdown, LaTeX and CSV from a list of row dicts (same keys in every row)."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def write_table(rows: list[dict], columns: list[str], out_dir: Path | str, name: str, caption: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    md = out / f"{name}.md"
    md.write_text("\n".join([f"<!-- {caption} -->", "| " + " | ".join(columns) + " |",
                             "|" + "---|" * len(columns), *("| " + " | ".join(r) + " |" for r in cells)]) + "\n")
    tex = out / f"{name}.tex"
    end = " \\\\"  # LaTeX row end

    def escape(text: str) -> str:
        return text.replace("_", "\\_").replace("%", "\\%")

    tex.write_text("\n".join(["\\begin{tabular}{" + "l" * len(columns) + "}", "\\hline",
                              " & ".join(escape(c) for c in columns) + end, "\\hline",
                              *(" & ".join(escape(x) for x in r) + end for r in cells),
                              "\\hline", "\\end{tabular}", f"% {caption}"]) + "\n")
    table = out / f"{name}.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[row.get(c, "") for c in columns] for row in rows])
    return [md, tex, table]
