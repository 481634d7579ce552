"""DOP as a method: a reducer chooses which visual tokens exist, a policy which operations run."""

from __future__ import annotations

from pathlib import Path

from repro.budget import Budget
from repro.errors import ReproError
from repro.methods.base import Method
from repro.methods.dop.policy import MHA_SEMANTICS, Policy, policy_schedule
from repro.methods.dop.search import choose, load_artifact, reducer_options
from repro.methods.registry import method as build_method
from repro.methods.registry import register


@register("dop", stage="pre-llm+in-llm",
          knob="n_v visual tokens from the reducer, plus the depths D_A (attention) and D_P (MLP) of the policy",
          reference="Liu et al., arXiv 2507.02909 (reconstructed: shared/docs/DOP.md)",
          variants={"mha_semantics": "'query_skip': beyond D_A visual tokens keep frozen keys/values (v1 out/in split)",
                    "reducer": "any registered pre-LLM method; 'uniform' needs no scores",
                    "transfer": "True: apply an artifact searched on another model (depths rescaled)"})
class DOP(Method):
    """Run a policy (`policy=(n_v, D_A, D_P)`, or `(n_v, (D_A, D_P), …)` / a `Policy` with one
    (D_A, D_P) per reducer group), or the policy an artifact chose for `budget`.

    A per-group policy needs a reducer with token groups (VisPruner: important, diverse); the
    reducer then runs even at full budget, since it is what tags the groups.

    With an artifact the reducer and its options come from the artifact; a different model is
    refused unless `transfer=True`, which rescales the depths to the model's layer count
    (D·L_target/L_source, rounded) and needs a budget the artifact already solved.
    """

    def __init__(self, budget: Budget | None = None, *, policy=None, policy_layers: int | None = None,
                 artifact: str | Path | None = None, reducer: str = "vispruner", reducer_options: dict | None = None,
                 mha_semantics: str = "drop", transfer: bool = False):
        super().__init__(budget)
        if (policy is None) == (artifact is None):
            raise ValueError("give exactly one of policy=(n_v, D_A, D_P) or artifact=PATH")
        if mha_semantics not in MHA_SEMANTICS:
            raise ValueError(f"mha_semantics must be one of {MHA_SEMANTICS}")
        self.artifact = load_artifact(artifact) if artifact is not None else None
        if self.artifact is not None:
            if budget is None:
                raise ValueError("an artifact needs a budget (ratio:R or tflops:X) to choose its policy")
            opts = self.artifact["options"]
            reducer, reducer_options, mha_semantics = opts["reducer"], opts["reducer_options"], opts["mha_semantics"]
            self.policy, self.policy_layers = None, self.artifact["layers"]
        else:
            self.policy = as_policy(policy)
            self.policy_layers = policy_layers
        self.reducer, self.reducer_options = reducer, dict(reducer_options or {})
        self.mha_semantics, self.transfer = mha_semantics, transfer
        self.positions = build_method(reducer, "tokens:1", **self.reducer_options).positions

    def policy_for(self, model) -> Policy:
        """The policy for this model, depths rescaled when it has another depth than the source."""
        policy = self.policy or self._from_artifact(model)
        source = self.policy_layers or model.card.layers
        return policy.rescaled(source, model.card.layers) if source != model.card.layers else policy

    def _from_artifact(self, model) -> Policy:
        art = self.artifact
        if art["model"] != model.name and not self.transfer:
            raise ReproError(f"this DOP artifact was searched on {art['model']!r}, not {model.name!r}; "
                             "search this model, or pass transfer=True to rescale its depths")
        for chosen in art["budgets"]:
            if chosen["budget"] == str(self.budget):
                return Policy.from_dict(chosen["policy"])
        if art["model"] != model.name:
            raise ReproError(f"transfer needs a budget the artifact solved ({[c['budget'] for c in art['budgets']]})")
        return Policy.from_dict(choose(art, model.card, self.budget)["policy"])

    def grouped(self, model) -> bool:
        """Whether the policy has depths per reducer group (the `groups="reducer"` form)."""
        if self.artifact is not None:
            return self.artifact["options"].get("groups", "single") == "reducer"
        return len(self.policy.depths) > 1

    def reduce(self, model, prepared, visual):
        n_visual = self.policy_for(model).n_visual
        if n_visual >= visual.patches.numel() and not self.grouped(model):
            return visual
        reducer = build_method(self.reducer, f"tokens:{n_visual}", **reducer_options(self.reducer, self.reducer_options))
        return reducer.reduce(model, prepared, visual)

    def planner(self, model, seq):
        groups = None
        if self.grouped(model):
            groups = seq.visual_groups
            if groups is None:
                raise ReproError(f"a per-group DOP policy needs a reducer that tags token groups; {self.reducer!r} "
                                 "does not (use vispruner, or a single (n_v, D_A, D_P) policy)")
        return policy_schedule(self.policy_for(model), seq.n_tokens, seq.visual, groups, model.card.layers,
                               self.mha_semantics)


def as_policy(policy) -> Policy:
    """A Policy from a Policy, its dict, (n_v, D_A, D_P), or (n_v, (D_A, D_P), (D_A, D_P), …) per group."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, dict):
        return Policy.from_dict(policy)
    n_visual, *rest = policy
    if rest and all(isinstance(pair, (list, tuple)) for pair in rest):
        return Policy(int(n_visual), tuple((int(a), int(p)) for a, p in rest))
    return Policy.single(int(n_visual), *map(int, rest))
