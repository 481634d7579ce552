"""The baselines, one module each, built on repro's Method interface; importing registers them."""

from baselines import divprune, fastv, prumerge_plus, resize, visionzip, vispruner  # noqa: F401
