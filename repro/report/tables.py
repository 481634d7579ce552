"""Write one table as Markdown (tabulate), LaTeX (pandas Styler, booktabs rules) and CSV (pandas).

Cells arrive already formatted for display; the CSV may carry its own columns (numbers and interval
bounds in separate columns). A caption goes first and footer lines last (Markdown: a comment and
plain lines; LaTeX: comments), so the same rows always give the same bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

_NUMERIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?( ± [\d.]+)?( °)?$")


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _as_lists(rows: Sequence, columns: Sequence[str]) -> list[list[str]]:
    return [[_cell(row.get(c, "")) for c in columns] if isinstance(row, dict) else [_cell(x) for x in row]
            for row in rows]


def _numeric(column: list[str]) -> bool:
    values = [v for v in column if v not in ("", "–", "-")]
    return bool(values) and all(_NUMERIC.match(v) for v in values)


def markdown(cells: list[list[str]], columns: Sequence[str]) -> str:
    from tabulate import tabulate

    align = ["right" if _numeric([r[i] for r in cells]) else "left" for i in range(len(columns))]
    return tabulate(cells, headers=list(columns), tablefmt="github", colalign=align, disable_numparse=True)


def latex(cells: list[list[str]], columns: Sequence[str]) -> str:
    import pandas as pd

    frame = pd.DataFrame(cells, columns=pd.Index(list(columns)))
    fmt = "".join("r" if _numeric([r[i] for r in cells]) else "l" for i in range(len(columns)))
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    text = styler.to_latex(column_format=fmt, hrules=True)
    return text.replace(" ± ", r" $\pm$ ").replace("°", r"$^\circ$")


def write_table(rows: Sequence, columns: Sequence[str], out_dir: Path | str, name: str, caption: str, *,
                footer: Sequence[str] = (), csv_columns: Sequence[str] | None = None,
                csv_rows: Sequence | None = None) -> list[Path]:
    """`<name>.md`, `<name>.tex`, `<name>.csv` in `out_dir`. `rows`: dicts keyed by column or
    lists in column order."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = _as_lists(rows, columns)
    md = out / f"{name}.md"
    md.write_text("\n".join([f"<!-- {caption} -->", markdown(cells, columns), *(["", *footer] if footer else [])])
                  + "\n", encoding="utf-8")
    tex = out / f"{name}.tex"
    tex.write_text(latex(cells, columns) + "\n".join([f"% {caption}", *(f"% {f}" for f in footer)]) + "\n",
                   encoding="utf-8")
    table = out / f"{name}.csv"
    if csv_columns is None:
        csv_columns = list(columns)
        csv_rows = [[row.get(c, "") for c in columns] if isinstance(row, dict) else list(row) for row in rows]
    pd.DataFrame([list(r) for r in csv_rows or []], columns=pd.Index(list(csv_columns))).to_csv(
        table, index=False, lineterminator="\n")
    return [md, tex, table]
