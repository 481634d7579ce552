"""The baselines, one module each, built on repro's Method interface; importing registers them."""

from baselines import (  # noqa: F401
    cdpruner, dart, divprune, fastv, fitprune, pdrop, prumerge_plus, resize, sparsevlm, trim, visionzip, vispruner,
)
