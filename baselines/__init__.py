"""The baselines, one module each, built on repro's Method interface; importing registers them."""

from baselines import cdpruner, divprune, fastv, prumerge_plus, resize, trim, visionzip, vispruner  # noqa: F401
