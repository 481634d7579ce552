"""DOP: depth-wise operation pruning with the additive-approximation search (shared/docs/DOP.md)."""

from repro.methods.dop.artifact import SearchArtifact, SearchOptions
from repro.methods.dop.method import DOP
from repro.methods.dop.policy import Policy, policy_schedule
from repro.methods.dop.search import choose, load_artifact, save_artifact, search

__all__ = ["DOP", "Policy", "SearchArtifact", "SearchOptions", "choose", "load_artifact", "policy_schedule",
           "save_artifact", "search"]
