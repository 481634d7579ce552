"""The baselines, one module each, built on repro's Method interface; importing registers them."""

from baselines import dart, fastv, fitprune, pdrop, sparsevlm, vispruner  # noqa: F401
