"""Imports every attack module so that each registers itself in `attacks.base.ATTACKS`."""

from attacks import alignment, extraction, generation, gradients, labels, reconstruction  # noqa: F401
