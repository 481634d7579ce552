"""DOP as a method: a reducer chooses which visual tokens exist, a policy which operations run.

Budgets (shared/docs/DOP.md leaves this open; `budget_mode`, a [choice]): the search fixes a
policy on the calibration set's mean shape, so a sample longer than the mean would exceed a
`ratio:R` / `tflops:X` budget under that fixed policy. By default (`per_sample`) DOP keeps the
searched depths (D_A, D_P) and re-solves n_v on every sample's real sequence shape, the largest
that fits the budget, as every baseline solves its knob per sample. `fixed` runs the searched
policy unchanged (the paper's behaviour as far as it is known).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repro import flops
from repro.budget import Budget, solve_knob
from repro.errors import ReproError
from repro.methods.base import Method
from repro.methods.dop.artifact import DEFAULT_REDUCER, SearchArtifact, SearchOptions
from repro.methods.dop.policy import MHA_SEMANTICS, Policy, flops_grid, grouped_flops, policy_schedule
from repro.methods.dop.search import choose, load_artifact, reduce_to, search
from repro.methods.registry import method as build_method
from repro.methods.registry import register

BUDGET_MODES = ("per_sample", "fixed")
FIT_KEYS = ("reducer_options", "mha_semantics", "kl_direction", "kl_tokens", "interpolation", "groups",
            "depth_step", "visual_points")


@register("dop", stage="pre-llm+in-llm",
          knob="n_v visual tokens from the reducer, plus the depths D_A (attention) and D_P (MLP) of the policy",
          reference="Liu et al., arXiv 2507.02909 (reconstructed: shared/docs/DOP.md)",
          variants={"mha_semantics": "'query_skip': beyond D_A visual tokens keep frozen keys/values (v1 out/in split)",
                    "reducer": f"any registered pre-LLM method (default {DEFAULT_REDUCER}); 'uniform' needs no scores",
                    "budget_mode": "'fixed': the searched policy as is, sized on the calibration mean shape "
                                   "(samples may exceed the budget); default 'per_sample' re-solves n_v per sample",
                    "transfer": "True: apply an artifact searched on another model (depths rescaled)"})
class DOP(Method):
    """Run a policy (`policy=(n_v, D_A, D_P)`, or `(n_v, (D_A, D_P), …)` / a `Policy` with one
    (D_A, D_P) per reducer group), or the policy an artifact chose for `budget`.

    A per-group policy needs a reducer with token groups (VisPruner: important, diverse); the
    reducer then runs even at full budget, since it is what tags the groups.

    With an artifact the reducer, its options and `mha_semantics` come from the artifact; giving
    one that differs is an error. A different model is refused unless `transfer=True`, which
    rescales the depths to the model's layer count (D·L_target/L_source, rounded).
    """

    artifact_type = SearchArtifact

    def __init__(self, budget: Budget | None = None, *, policy=None, policy_layers: int | None = None,
                 artifact: str | Path | SearchArtifact | None = None, reducer: str | None = None,
                 reducer_options: dict | None = None, mha_semantics: str | None = None,
                 budget_mode: str = "per_sample", transfer: bool = False):
        super().__init__(budget)
        if (policy is None) == (artifact is None):
            raise ValueError("give exactly one of policy=(n_v, D_A, D_P) or artifact=PATH")
        if mha_semantics is not None and mha_semantics not in MHA_SEMANTICS:
            raise ValueError(f"mha_semantics must be one of {MHA_SEMANTICS}")
        if budget_mode not in BUDGET_MODES:
            raise ValueError(f"budget_mode must be one of {BUDGET_MODES}, got {budget_mode!r}")
        self.artifact = load_artifact(artifact) if artifact is not None else None
        if self.artifact is not None:
            if budget is None or budget.kind == "tokens":
                raise ValueError("an artifact needs a FLOPs budget (ratio:R or tflops:X) to choose its policy")
            opts = self.artifact.options
            given = {"reducer": reducer, "reducer_options": reducer_options, "mha_semantics": mha_semantics}
            searched = {"reducer": opts.reducer, "reducer_options": opts.reducer_options,
                        "mha_semantics": opts.mha_semantics}
            clash = [f"{k}={given[k]!r} (artifact: {searched[k]!r})" for k in given
                     if given[k] is not None and given[k] != searched[k]]
            if clash:
                raise ReproError(f"dop: {', '.join(clash)} contradicts the artifact's search; drop the option "
                                 "or search again with it")
            reducer, reducer_options, mha_semantics = opts.reducer, opts.reducer_options, opts.mha_semantics
            self.policy, self.policy_layers = None, self.artifact.layers
        else:
            self.policy = as_policy(policy)
            self.policy_layers = policy_layers
        self.reducer = reducer or DEFAULT_REDUCER
        self.reducer_options = dict(reducer_options or {})
        self.mha_semantics, self.transfer = mha_semantics or "drop", transfer
        self.budget_mode = budget_mode
        self.positions = build_method(self.reducer, "tokens:1", **self.reducer_options).positions

    # ------------------------------------------------------------------ the fit hook (methods/fitting.py)

    @classmethod
    def fit_config(cls, options: dict, fit: dict) -> SearchOptions:
        """The search options of a sweep entry: `reducer*` and `mha_semantics` from the method's
        options, the rest from its `search:` keys."""
        unknown = sorted(set(fit) - set(FIT_KEYS))
        if unknown:
            raise ReproError(f"unknown dop search key(s) {', '.join(unknown)}; allowed: calibration, samples, "
                             f"{', '.join(FIT_KEYS)}")
        both = [k for k in ("reducer_options", "mha_semantics") if k in fit and k in options and fit[k] != options[k]]
        if both:
            raise ReproError(f"{', '.join(both)} differ between the method's options and its search; give them once")
        merged = {**fit, **{k: options[k] for k in ("reducer", "reducer_options", "mha_semantics") if k in options}}
        try:
            config = SearchOptions(**merged)
        except TypeError as err:
            raise ReproError(f"bad dop search options: {err}") from None
        config.check()
        build_method(config.reducer, "tokens:1", **config.reducer_options)  # an unknown reducer fails now
        config.group_names()
        return config

    @classmethod
    def fit(cls, model, samples, config: SearchOptions, *, source: str = "", excluded=(), budgets=(),
            progress: bool = True) -> SearchArtifact:
        """DOP's fit is its policy search (search.py)."""
        return search(model, samples, [b for b in budgets if b], config, source=source, excluded=tuple(excluded),
                      progress=progress)

    # ------------------------------------------------------------------ running a policy

    def policy_for(self, model) -> Policy:
        """The policy for this model, depths rescaled when it has another depth than the source."""
        policy = self.policy or self._from_artifact(model)
        source = self.policy_layers or model.card.layers
        return policy.rescaled(source, model.card.layers) if source != model.card.layers else policy

    def _from_artifact(self, model) -> Policy:
        art = self.artifact
        if art.model != model.name and not self.transfer:
            raise ReproError(f"this DOP artifact was searched on {art.model!r}, not {model.name!r}; "
                             "search this model, or pass transfer=True to rescale its depths")
        chosen = art.choice(str(self.budget))
        if chosen is not None:
            return chosen.policy
        if art.model != model.name:
            raise ReproError(f"transfer needs a budget the artifact solved ({[c.budget for c in art.budgets]})")
        return choose(art, model.card, self.budget).policy

    def grouped(self, model) -> bool:
        """Whether the policy has depths per reducer group (the `groups="reducer"` form)."""
        if self.artifact is not None:
            return self.artifact.grouped
        return len(self.policy.depths) > 1

    def per_sample(self) -> bool:
        return self.budget_mode == "per_sample" and self.budget is not None and self.budget.kind != "tokens"

    def reduce(self, model, prepared, visual):
        policy = self.policy_for(model)
        if self.policy is not None and policy.n_visual > visual.patches.numel():
            raise ReproError(f"DOP policy n_v={policy.n_visual} exceeds the {visual.patches.numel()} visual tokens "
                             f"{model.name} makes of this input; use n_v <= {visual.patches.numel()}")
        if self.per_sample():
            return self._reduce_within_budget(model, prepared, visual, policy)
        if policy.n_visual >= visual.patches.numel() and not self.grouped(model):
            return visual
        return self._reduce(model, prepared, visual, policy.n_visual)

    def _reduce(self, model, prepared, visual, n_visual: int):
        return reduce_to(model, prepared, visual, self.reducer, self.reducer_options, n_visual)

    def _reduce_within_budget(self, model, prepared, visual, policy: Policy):
        """The reducer's tokens at the largest n_v whose prefill FLOPs under the policy's depths fit
        the budget on this sample's real shape (paper convention, as every baseline is solved)."""
        card = model.card
        n_max, n_all = visual.patches.numel(), len(visual)
        n_other = prepared.input_ids.numel() - n_all
        ceiling = self.budget.max_flops(flops.unpruned_prefill_flops(card, prepared.input_ids.numel(), "paper"))
        if not self.grouped(model):
            (a, p), = policy.depths
            grid = flops_grid(card, n_other, np.arange(n_max + 1) + (n_all - n_max), "paper", self.mha_semantics)
            n_visual = solve_knob(range(n_max + 1), lambda n: float(grid[n, a, p]), ceiling)
            return visual if n_visual >= n_max else self._reduce(model, prepared, visual, n_visual)
        depths = np.array(policy.depths)
        reduced: dict[int, object] = {}

        def cost(n: int) -> float:  # the reducer decides the group sizes, so run it
            reduced[n] = self._reduce(model, prepared, visual, n)
            if "group" not in reduced[n].meta:
                raise ReproError(f"a per-group DOP policy needs a reducer that tags token groups; {self.reducer!r} "
                                 "does not (use vispruner, or a single (n_v, D_A, D_P) policy)")
            counts = np.bincount(reduced[n].meta["group"].cpu().numpy(), minlength=len(depths))
            return float(grouped_flops(card, n_other, counts, depths[:, 0], depths[:, 1], "paper",
                                       self.mha_semantics))

        n_visual = solve_knob(range(n_max + 1), cost, ceiling)
        return reduced[n_visual] if n_visual in reduced else self._reduce(model, prepared, visual, n_visual)

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
