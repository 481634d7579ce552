"""The reduced run: a fixed, seeded subset of about N documents per paper task, drawn so that the
task's own scoring still holds.

Documents that are scored together are kept or dropped together, and stratified tasks keep their
strata in proportion:
* MME pairs two yes/no questions per image (`question_id` is the image): whole pairs;
* MMBench's CircularEval counts a question only if every rotation (`index + k * 1e6`) is right:
  whole circular groups;
* POPE's three splits (`category`: random, popular, adversarial): in proportion.
Every other task draws documents uniformly. The drawn row positions (in the staged split's order)
identify the subset; they go into every cell record.
"""

from __future__ import annotations

import random
from collections import defaultdict

GROUP_COLUMNS = {"mme": "question_id", "mmbench_en_dev": "index", "mmbench_cn_dev": "index"}
STRATUM_COLUMNS = {"pope": "category"}


def _group_key(task: str, value):
    return int(value) % 1_000_000 if task.startswith("mmbench") else value


def subset_rows(task: str, size: int, columns: dict[str, list], n: int, seed: int) -> list[int]:
    """Row positions of the subset of a split of `size` rows, ascending: about `n` rows (whole
    groups, so a few more when a group straddles the end), all of them when the split is not
    larger. `columns` holds the columns `needed_columns(task)` names."""
    if n >= size:
        return list(range(size))
    rng = random.Random(f"{task}:{seed}")
    if task in STRATUM_COLUMNS:
        strata: dict = defaultdict(list)
        for i, value in enumerate(columns[STRATUM_COLUMNS[task]]):
            strata[value].append(i)
        rows = []
        for _, members in sorted(strata.items(), key=lambda kv: str(kv[0])):
            rows += rng.sample(members, round(n * len(members) / size))
        return sorted(rows)
    groups: dict = defaultdict(list)
    key = GROUP_COLUMNS.get(task)
    for i in range(size):
        groups[_group_key(task, columns[key][i]) if key else i].append(i)
    order = list(groups)
    rng.shuffle(order)
    rows = []
    for g in order:
        if len(rows) >= n:
            break
        rows += groups[g]
    return sorted(rows)


def needed_columns(task: str) -> list[str]:
    """The columns subset_rows reads for `task` (none beyond the row count for plain tasks)."""
    column = GROUP_COLUMNS.get(task) or STRATUM_COLUMNS.get(task)
    return [column] if column else []
