"""Typed views of what the store keeps: a cell record and its sample records.

The store writes plain JSON (lmms-eval's sample logs as they come, plus our record); readers
used to dig into them with string keys in several places. These dataclasses are the one place
that knows the layout, with a schema version each (as lm-evaluation-harness versions its result
schema), so a layout change is a change here and an old store fails with one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from repro.errors import ReproError

CELL_SCHEMA = "repro-record/1"  # the store's RECORD_FORMAT
SAMPLE_SCHEMA = "lmms-eval-sample+repro/1"


@dataclass(frozen=True)
class SampleRecord:
    """One document of a cell: lmms-eval's per-sample log and our per-sample statistics."""

    doc_id: int
    target: Any
    responses: list  # lmms-eval's `resps`
    doc: dict  # the document without its images (lmms-eval logs it)
    values: dict[str, Any]  # lmms-eval's own per-sample metric values, by metric name
    repro: dict | None  # Result statistics (`token_counts[0]["repro"]`), None for a foreign model
    schema: str = SAMPLE_SCHEMA

    #: sample-log keys that are not metric values
    LOG_KEYS = frozenset({"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "doc_hash",
                          "input_media", "token_counts", "prompt_hash", "target_hash"})

    @classmethod
    def from_log(cls, log: dict) -> SampleRecord:
        try:
            doc_id = int(log["doc_id"])
        except (KeyError, TypeError, ValueError):
            raise ReproError("a stored sample log has no doc_id; the store predates lmms-eval sample logs, "
                             "rerun the sweep into a fresh --store") from None
        counts = log.get("token_counts") or [{}]
        repro = counts[0].get("repro") if isinstance(counts[0], dict) else None
        values = {k: v for k, v in log.items() if k not in cls.LOG_KEYS}
        return cls(doc_id, log.get("target"), list(log.get("resps", [])), dict(log.get("doc") or {}), values, repro)

    def has(self, metric: str) -> bool:
        """Whether lmms-eval scored this document for `metric` (MME logs perception or cognition)."""
        return metric.split(",")[0] in self.values

    def value(self, metric: str) -> Any:
        """lmms-eval's per-sample value of `metric` (`name` or `name,filter`)."""
        name = metric.split(",")[0]
        if name not in self.values:
            raise ReproError(f"sample {self.doc_id} has no per-sample value of {name} (have {sorted(self.values)})")
        return self.values[name]


@dataclass(frozen=True)
class CellMetrics:
    benchmark: str  # table column
    metric: str  # "<metric>,<filter>" of lmms-eval
    raw: float  # lmms-eval's value
    score: float  # 0-100 table scale


@dataclass(frozen=True)
class CellRecord:
    """A finished cell as the store holds it."""

    key: str
    label: str
    config: dict
    metrics: CellMetrics
    budget_stats: dict
    provenance: dict
    samples_count: int
    schema: str = CELL_SCHEMA
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, body: dict) -> CellRecord:
        if body.get("format") != CELL_SCHEMA:
            raise ReproError(f"record {body.get('key')} has format {body.get('format')!r}, this harness reads "
                             f"{CELL_SCHEMA}; rerun the sweep into a fresh --store")
        m = body.get("metrics") or {}
        metrics = CellMetrics(str(m.get("benchmark", "")), str(m.get("metric", "")), float(m.get("raw", "nan")),
                              float(m.get("score", "nan")))
        return cls(body["key"], body.get("label", ""), body.get("config", {}), metrics, body.get("budget_stats") or {},
                   body.get("provenance") or {}, int(body.get("samples_count", 0)), extra=body)

    @property
    def tflops_paper_mean(self) -> float | None:
        stats = self.budget_stats.get("tflops_paper")
        return None if not stats else float(stats["mean"])
