"""The device's safeguard: never deploy a side output that is not measurably better than the backbone alone.

Classification (below) tests accuracy; generation (`choose_scale`, further down) tests the
answer NLL per token of the scaled correction, with a sign test over validation samples.

The device holds out a validation split of its own training data (never uploaded). On it,
it must choose the shrink factor s in [0, 1] of the side output (argmax(p_b + s·g(A)))
and decide whether any s > 0 is better than the backbone. Choosing s and testing the
choice on the same samples is optimistic (the best of 21 factors looks better than it
is), so the test is cross-fitted *(choice)*: the validation split is cut into two
seed-fixed halves, s is chosen on each half, and each sample is predicted with the
factor chosen on the *other* half. A one-sided exact McNemar test of those predictions
against the backbone, on every validation sample, decides at level `SIGNIFICANCE`:
no sample's prediction used a factor selected on its own label, and the test still
uses the whole split. When it passes, the deployed factor is the one chosen on the
whole split (ties to the smaller s); otherwise the side output is dropped (s = 0).
`tests/test_safeguard.py` simulates side outputs no better than the backbone and checks
that at most 5% are deployed.

Generation (`choose_scale`, further down) tests the answer NLL per token of the scaled
correction instead, with a one-sided sign test over validation samples of the best factor
against the backbone (not cross-fitted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from protocol.generation_device import CORRECTION_SCALES
from protocol.side_output import SideOutput, scale_side_output

SHRINK_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
SIGNIFICANCE = 0.05
# The validation share a protected run holds out by default. Measured (BENCHMARKS.md, "Audit"): at 2,000 samples,
# 200 validation samples deploy a side output 3 points above zero-shot about half the time, 400 every time.
VALIDATION_SHARE = 0.2


@dataclass(frozen=True)
class ShrinkDecision:
    """What the safeguard chose and why."""

    factor: float
    validation_samples: int
    validation_accuracy_backbone: float
    validation_accuracy_unshrunk: float
    validation_accuracy_chosen: float  # of the factor chosen on the whole split (0 when dropped: the backbone)
    cross_fitted_accuracy: float  # each sample predicted with the factor chosen on the other half
    # One-sided exact McNemar p-value of the cross-fitted predictions against the backbone (1.0: no gain).
    p_value: float

    @property
    def action(self) -> str:
        """'kept', 'shrunk' or 'dropped'."""
        return "dropped" if self.factor == 0 else "kept" if self.factor == 1 else "shrunk"


def _right(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(factors, n) correctness of argmax(p_b + s·g) for every factor of the grid."""
    return np.stack([(backbone_probs + s * side_output).argmax(axis=1) == labels for s in SHRINK_GRID])


def _best(right: np.ndarray) -> int:
    """Index of the most accurate factor (argmax returns the first, i.e. the smallest, among ties)."""
    return int(np.argmax(right.mean(axis=1)))


def sign_test_greater(gained: int, lost: int) -> float:
    """One-sided exact sign-test p-value that `gained` paired wins outnumber `lost` losses (ties dropped)."""
    return float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue) if gained > lost else 1.0


def mcnemar_greater(candidate: np.ndarray, backbone: np.ndarray) -> float:
    """One-sided exact McNemar p-value that `candidate` is right more often than `backbone` (paired)."""
    return sign_test_greater(int((candidate & ~backbone).sum()), int((~candidate & backbone).sum()))


def choose_shrink(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray,
                  seed: int = 0) -> ShrinkDecision:
    """The factor to deploy: chosen on the whole split if the cross-fitted test finds a significant gain, else 0."""
    right = _right(backbone_probs, side_output, labels)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(labels)), 2)
    crossed = np.empty(len(labels), dtype=bool)
    for this, other in (halves, halves[::-1]):
        crossed[this] = right[_best(right[:, other]), this] if len(other) else right[0, this]
    p_value = mcnemar_greater(crossed, right[0])
    best = _best(right) if p_value <= SIGNIFICANCE else 0
    return ShrinkDecision(factor=float(SHRINK_GRID[best]), validation_samples=len(labels),
                          validation_accuracy_backbone=float(right[0].mean()),
                          validation_accuracy_unshrunk=float(right[-1].mean()),
                          validation_accuracy_chosen=float(right[best].mean()),
                          cross_fitted_accuracy=float(crossed.mean()), p_value=p_value)


def shrink_network(side: SideOutput, factor: float) -> None:
    """Scale the side output by `factor`, whatever mode produced it."""
    scale_side_output(side, factor)


# Generation: factors of the hidden-space correction tried on validation (see CORRECTION_SCALES).
SCALE_GRID = CORRECTION_SCALES


@dataclass(frozen=True)
class ScaleDecision:
    """What the generation safeguard chose and why (NLL per validation answer token)."""

    factor: float
    validation_samples: int
    validation_nll_backbone: float
    validation_nll_unscaled: float
    validation_nll_chosen: float
    # One-sided exact sign-test p-value of the best factor against the backbone, over samples.
    p_value: float

    @property
    def action(self) -> str:
        """'kept', 'scaled' or 'dropped'."""
        return "dropped" if self.factor == 0 else "kept" if self.factor == 1 else "scaled"


def choose_scale(sample_nll: np.ndarray, counts: np.ndarray, grid: tuple[float, ...] = SCALE_GRID) -> ScaleDecision:
    """The factor of `grid` (column j of `sample_nll`, each sample's summed answer NLL) with the
    lowest NLL per token, or 0 when the samples it improves do not significantly outnumber
    those it worsens."""
    per_token = sample_nll.sum(axis=0) / counts.sum()
    best = int(np.argmin(per_token))  # the first, i.e. the smallest factor, among ties
    p_value = sign_test_greater(int((sample_nll[:, best] < sample_nll[:, 0]).sum()),
                                int((sample_nll[:, best] > sample_nll[:, 0]).sum()))
    chosen = best if p_value <= SIGNIFICANCE else 0
    return ScaleDecision(factor=float(grid[chosen]), validation_samples=len(counts),
                         validation_nll_backbone=float(per_token[0]),
                         validation_nll_unscaled=float(per_token[grid.index(1.0)]),
                         validation_nll_chosen=float(per_token[chosen]), p_value=p_value)
