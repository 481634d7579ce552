"""Operation-pruned prefill and decode over HF decoder layers, and the probes methods score with."""

from repro.engine.core import Engine, KVCache, LayerRecord, PrefillOutput, Prefix, Sequence
from repro.engine.decoder import Decoder
from repro.engine.probes import Probe
from repro.engine.schedule import LayerOps, Merge, Planner, Schedule, random_schedule, visual_schedule

__all__ = [
    "Decoder", "Engine", "KVCache", "LayerOps", "LayerRecord", "Merge", "Planner", "PrefillOutput", "Prefix", "Probe",
    "Schedule", "Sequence", "random_schedule", "visual_schedule",
]
