"""The reports package: the paired document bootstrap on lmms-eval's own per-sample values and
aggregations, chance levels, the writers, and the import structure (no cycles among report,
runner, cli and check; `tables` never loads a model)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from repro.report.uncertainty import (
    Bootstrap,
    Estimate,
    TaskMetric,
    chance_score,
    clusters,
    draws,
    point_score,
    replicate_scores,
)
from repro.runner.records import SampleRecord

ROOT = Path(__file__).resolve().parents[1]


def _sample(doc_id: int, metric: str, value, doc=None, target=None) -> SampleRecord:
    return SampleRecord.from_log({"doc_id": doc_id, "doc": doc or {}, "target": target, "resps": [["x"]],
                                  metric: value, "token_counts": [{"repro": {"stats": {}}}]})


def _mean_metric(task="t") -> TaskMetric:
    import lmms_eval.api.metrics  # noqa: F401 - registers the aggregations
    from lmms_eval.api.registry import get_aggregation

    return TaskMetric(task, "exact_match", get_aggregation("mean"), None, 100.0)


def test_interval_of_a_mean_has_the_binomial_width():
    rng = np.random.default_rng(1)
    hits = rng.integers(0, 2, 400)
    samples = [_sample(i, "exact_match", float(h)) for i, h in enumerate(hits)]
    metric = _mean_metric()
    groups = clusters(samples, "exact_match")
    reps = replicate_scores(metric, samples, groups, draws("t", len(groups), Bootstrap()))
    est = Estimate.of(point_score(metric, samples), reps, 0.95)
    p = hits.mean()
    expected = 1.96 * np.sqrt(p * (1 - p) / len(hits)) * 100
    assert abs(est.half_width - expected) < 0.15 * expected
    assert est.low < est.value < est.high


def test_draws_are_seeded_and_paired_across_cells():
    a = draws("tinyworld_gqa", 60, Bootstrap(replicates=50, seed=3))
    assert np.array_equal(a, draws("tinyworld_gqa", 60, Bootstrap(replicates=50, seed=3)))
    assert not np.array_equal(a, draws("tinyworld_gqa", 60, Bootstrap(replicates=50, seed=4)))
    metric = _mean_metric()
    same = [_sample(i, "exact_match", float(i % 3 == 0)) for i in range(60)]
    groups = clusters(same, "exact_match")
    diff = replicate_scores(metric, same, groups, a) - replicate_scores(metric, same, groups, a)
    assert not Estimate.of(0.0, diff, 0.95).excludes(0.0)  # a row against itself is never "significant"


def test_mme_pairs_are_resampled_whole_through_lmms_evals_own_aggregation():
    from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_process_results

    docs = [{"question_id": f"img{i // 2}.png", "category": "existence", "answer": "Yes" if i % 2 == 0 else "No"}
            for i in range(40)]
    answers = ["yes" if (i % 2 == 0 or i % 6 == 1) else "no" for i in range(40)]
    samples = [_sample(i, "mme_perception_score", mme_process_results(d, [a])["mme_perception_score"], doc=d,
                       target=d["answer"]) for i, (d, a) in enumerate(zip(docs, answers))]
    metric = TaskMetric("tinyworld_mme", "mme_perception_score", mme_aggregate_results,
                        lambda doc, target, answer: mme_process_results(doc, [answer])["mme_perception_score"], 0.1)
    groups = clusters(samples, "mme_perception_score")
    assert len(groups) == 20 and all(len(g) == 2 for g in groups)
    reps = replicate_scores(metric, samples, groups, draws("tinyworld_mme", 20, Bootstrap(replicates=200)))
    assert np.isclose(point_score(metric, samples), mme_aggregate_results([s.value("mme_perception_score")
                                                                           for s in samples]) * 0.1)
    assert reps.std() > 0 and 0 <= reps.min() and reps.max() <= 20
    # chance: one fixed answer ("yes" or "no") gets one question of every pair right: acc 50, acc+ 0
    assert chance_score(metric, samples) == pytest.approx(5.0)


def test_chance_of_pope_f1_is_the_all_yes_answer():
    from lmms_eval.tasks.pope.utils import pope_aggregate_f1_score, pope_process_results

    docs = [{"question_id": str(i), "answer": "yes" if i < 30 else "no"} for i in range(60)]
    samples = [_sample(i, "pope_f1_score", pope_process_results(d, ["yes"])["pope_f1_score"], doc=d, target=d["answer"])
               for i, d in enumerate(docs)]
    metric = TaskMetric("tinyworld_pope", "pope_f1_score", pope_aggregate_f1_score,
                        lambda doc, target, answer: pope_process_results(doc, [answer])["pope_f1_score"], 100.0)
    assert chance_score(metric, samples) == pytest.approx(200 / 3)


def test_latex_writer_escapes_and_right_aligns_numbers(tmp_path):
    from repro.report.tables import write_table

    paths = write_table([["a_b & 50%", "70.0 ± 1.5"], ["#x", "–"]], ["Method_name", "GQA °"], tmp_path, "t", "cap",
                        footer=["provenance: here"])
    tex = (tmp_path / "t.tex").read_text()
    assert r"a\_b \& 50\%" in tex and r"\#x" in tex and r"70.0 $\pm$ 1.5" in tex and r"GQA $^\circ$" in tex
    assert r"\begin{tabular}{lr}" in tex and r"\toprule" in tex and "% provenance: here" in tex
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("<!-- cap -->") and md.rstrip().endswith("provenance: here")
    assert [p.suffix for p in paths] == [".md", ".tex", ".csv"]


# --------------------------------------------------------------------------- structure

NODES = ("repro.report", "repro.runner", "repro.cli", "repro.check")


def _imports(path: Path, module: str) -> set[str]:
    """Every repro module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(module.split(".")[:-node.level] + [node.module])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("repro")}


def _node(module: str) -> str | None:
    return next((n for n in NODES if module == n or module.startswith(n + ".")), None)


def test_no_import_cycle_among_report_runner_cli_and_check():
    import networkx as nx

    modules = {}
    for path in [*(ROOT / "repro" / "report").glob("*.py"), *(ROOT / "repro" / "runner").glob("*.py"),
                 ROOT / "repro" / "cli.py", ROOT / "repro" / "check.py"]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = _imports(path, name)
    graph = nx.DiGraph()
    for name, deps in modules.items():
        for dep in deps:
            a, b = _node(name), _node(dep)
            if b is not None and a != b:
                graph.add_edge(a, b)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles between packages: {cycles}"
    assert not graph.has_edge("repro.runner", "repro.report") and not graph.has_edge("repro.report", "repro.cli")


def test_tables_never_loads_a_model():
    for path in (ROOT / "repro" / "report").glob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "load"
                 and isinstance(n.value, ast.Name) and n.value.id == "repro"]
        assert not calls, f"{path.name} calls repro.load"
        assert "repro.models.loading" not in _imports(path, "repro.report." + path.stem)
