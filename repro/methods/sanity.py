"""The inverse check: keeping a method's lowest-scored tokens must hurt more than keeping its best.

It catches inverted sorts (a published port of FitPrune keeps the lowest scores). Divergence is
the KL from the unpruned model's first-token distribution, per sample, at one budget; the check
compares the means and says how significant the per-sample difference is (a paired test: the
same samples go through both variants, so their difficulty cancels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from PIL import Image

from repro.methods.registry import method as build


@dataclass(frozen=True)
class InverseCheck:
    method: str
    budget: str
    kl_method: float  # mean KL(unpruned ‖ method)
    kl_inverse: float  # mean KL(unpruned ‖ method with inverse=True)
    p_value: float  # one-sided Wilcoxon signed-rank test of "inverse KL > method KL", paired by sample

    @property
    def passed(self) -> bool:
        return self.kl_method < self.kl_inverse


def kl_from(reference: torch.Tensor, logprobs: torch.Tensor) -> float:
    """KL(p_ref ‖ p) for two log-probability vectors."""
    return float((reference.exp() * (reference - logprobs)).sum())


def inverse_check(model, name: str, budget: str, samples: Iterable[tuple[Image.Image, str]],
                  references: list[torch.Tensor] | None = None, **options) -> InverseCheck:
    """Mean first-token KL to the unpruned model for `name` and for its `inverse=True` variant, and
    the p-value of the paired test that the inverse diverges more. `references` (the unpruned
    first-token log-probabilities of the samples, in order) saves recomputing them per method."""
    from scipy.stats import wilcoxon

    best, worst = build(name, budget, **options), build(name, budget, inverse=True, **options)
    kl_best, kl_worst = [], []
    for i, (image, question) in enumerate(samples):
        reference = (references[i] if references is not None
                     else model.generate(image, question, max_new_tokens=1).first_token_logprobs)
        kl_best.append(kl_from(reference, model.generate(image, question, method=best, max_new_tokens=1).first_token_logprobs))
        kl_worst.append(kl_from(reference, model.generate(image, question, method=worst, max_new_tokens=1).first_token_logprobs))
    p_value = float(wilcoxon(kl_worst, kl_best, alternative="greater").pvalue)
    return InverseCheck(name, budget, sum(kl_best) / len(kl_best), sum(kl_worst) / len(kl_worst), p_value)
