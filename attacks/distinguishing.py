"""A distinguishing attack on a protected channel, for empirical DP lower bounds.

Given many releases of the mechanism on two neighbouring inputs D0 and D1, the attacker
scores each release by its projection onto the neighbours' mean difference, estimated
from a first batch of releases of each. For a Gaussian mechanism (isotropic noise
around each neighbour's clipped signal) that projection is the log-likelihood ratio of
D1 against D0 up to an increasing affine map, so thresholding it is the most powerful
test at every false-positive rate (Neyman-Pearson). For randomized response on labels
the released Δ takes one value per reported label and the projection orders them as
their likelihood ratios do, so the same test is exact. The auditor chooses the
operating point and turns the counts into bounds (`secure_assist.audit.dp_bounds`).
It decides from the mechanism's outputs only.
"""

from __future__ import annotations

import numpy as np


class MeanDifferenceTest:
    """The likelihood-ratio statistic along the neighbours' mean difference (higher: more like D1)."""

    def __init__(self, first_0: np.ndarray, first_1: np.ndarray) -> None:
        """Fit the direction on a batch of releases of D0 and one of D1 (rows are releases)."""
        self.direction = _rows(first_1).mean(axis=0) - _rows(first_0).mean(axis=0)

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """The statistic of each release (rows of `outputs`)."""
        return _rows(outputs) @ self.direction


def _rows(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
