"""The device's safeguard: never deploy a side output that is not measurably better than the backbone alone.

Classification (below) tests the Brier score; generation (`choose_scale`, further down) tests the
answer NLL per token of the scaled correction, with a sign test over validation samples.

The device holds out a validation split of its own training data (never uploaded). On it,
it must choose the shrink factor s in [0, 1] of the side output (deployed: argmax(p_b + s·g(A)))
and decide whether any s > 0 is better than the backbone.

What is tested *(choice)*: the per-sample Brier score ‖p_b + s·g(A) − e_y‖², the loss the
side network is trained to reduce (it fits g(A) to Δ = e_y − p_b). Accuracy only moves when
a prediction flips, so a test on accuracy flips has little power on a few hundred samples
(an easy validation split leaves few errors to fix; BENCHMARKS.md, "Safeguard power"), while
the same output lowers the Brier score of most samples. A side output no better than the
backbone (noise, or pushes toward and away from the truth alike) does not lower it in
expectation, at any factor.

Choosing s and testing the choice on the same samples is optimistic (the best of 21 factors
looks better than it is), so the test is cross-fitted: the validation split is cut into two
seed-fixed halves, s is chosen on each half (lowest mean Brier score), and each sample is
scored with the factor chosen on the *other* half. A one-sided paired t-test of those
scores against the backbone's, on every validation sample, decides at level `SIGNIFICANCE`,
and those cross-fitted factors must also predict more validation samples right than the
backbone does: a lower Brier score alone can be calibration (an output that only tempers an
overconfident backbone lowers it at every factor while changing no prediction; the
"calibration" case of `tests/test_safeguard.py`).
When both hold, the deployed factor is the one with the lowest Brier score on the whole
split (ties to the smaller s); otherwise the side output is dropped (s = 0).
`tests/test_safeguard.py` simulates side outputs no better than the backbone and checks
that at most 5% are deployed.

Generation (`choose_scale`, further down) tests the answer NLL per token of the scaled
correction instead, with a one-sided sign test over validation samples of the best factor
against the backbone (not cross-fitted). The factor is picked by the total NLL while the test
counts samples, so the pick flatters the test little: `tests/test_safeguard.py` simulates a
correction that helps as many samples as it hurts and checks that at most 5% are deployed
(measured rates in BENCHMARKS.md, "Safeguard").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest, ttest_1samp

from protocol.modes.generation.device import CORRECTION_SCALES
from protocol.model.side_output import SideOutput, scale_side_output

SHRINK_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
SIGNIFICANCE = 0.05
# The validation share every classification run holds out by default, unprotected ('none') included: a device
# with little data trains side outputs worse than its backbone more often than not (BENCHMARKS.md, "Safeguard on
# small devices"), and at 2,000 samples half this share decided a side output clearly above zero-shot by chance
# in the power study (BENCHMARKS.md, "Audit").
VALIDATION_SHARE = 0.2
# The fewest validation samples a run holds out whatever its share (never more than half its samples, so that the
# rest trains): a 0.2 share of a 20-sample device is 4 samples, on which the cross-fitted test can hardly ever
# find a gain (BENCHMARKS.md, "Safeguard on small devices").
MIN_VALIDATION = 10
NO_VALIDATION = "no validation sample (a device of one sample): the backbone is deployed"


def validation_count(n_train: int, share: float) -> int:
    """How many of a device's `n_train` training samples its safeguard holds out at `share` (0: none, the
    safeguard is off): the share, at least `MIN_VALIDATION` but at most half the samples. 0 for a device of one
    sample, whose safeguard then deploys the backbone (`drop_unvalidated`)."""
    return max(int(n_train * share), min(MIN_VALIDATION, n_train // 2)) if share > 0 else 0


def drop_unvalidated(side: SideOutput) -> dict[str, object]:
    """The safeguard's decision when it is on but the device could hold out no validation sample: nothing shows
    the side output beats the backbone, so the backbone is deployed (fail closed)."""
    shrink_network(side, 0.0)
    return {"factor": 0.0, "validation_samples": 0, "p_value": 1.0, "action": "dropped", "reason": NO_VALIDATION}


@dataclass(frozen=True)
class ShrinkDecision:
    """What the safeguard chose and why."""

    factor: float
    validation_samples: int
    validation_accuracy_backbone: float
    validation_accuracy_unshrunk: float
    validation_accuracy_chosen: float  # of the factor chosen on the whole split (0 when dropped: the backbone)
    cross_fitted_accuracy: float  # each sample predicted with the factor chosen on the other half
    validation_brier_backbone: float  # mean Brier score of p_b
    cross_fitted_brier: float  # each sample scored with the factor chosen on the other half
    # One-sided paired t-test p-value of the cross-fitted Brier scores against the backbone's (1.0: no change).
    p_value: float

    @property
    def action(self) -> str:
        """'kept', 'shrunk' or 'dropped'."""
        return "dropped" if self.factor == 0 else "kept" if self.factor == 1 else "shrunk"

    @property
    def reason(self) -> str:
        """Why the side output is deployed or dropped, in one sentence."""
        if self.p_value > SIGNIFICANCE:
            return (f"dropped: the cross-fitted Brier score is not significantly below the backbone's "
                    f"(p = {self.p_value:.3g} > {SIGNIFICANCE}, {self.validation_samples} validation samples)")
        if self.cross_fitted_accuracy <= self.validation_accuracy_backbone:
            return ("dropped: the cross-fitted predictions fix no more validation samples than they break "
                    f"({self.cross_fitted_accuracy:.3f} vs the backbone's {self.validation_accuracy_backbone:.3f})")
        if self.factor == 0:
            return "dropped: the lowest Brier score on the whole validation split is the backbone's"
        return (f"{self.action}: the cross-fitted Brier score is significantly below the backbone's "
                f"(p = {self.p_value:.3g}) and fixes more validation samples than it breaks")

    def to_json(self) -> dict[str, object]:
        """The summary's record of the decision."""
        return {**asdict(self), "action": self.action, "reason": self.reason}


def _brier(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(factors, n) Brier score of p_b + s·g for every factor of the grid."""
    truth = np.eye(backbone_probs.shape[1])[labels]
    return np.stack([((backbone_probs + s * side_output - truth) ** 2).sum(axis=1) for s in SHRINK_GRID])


def _right(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(factors, n) correctness of argmax(p_b + s·g) for every factor of the grid."""
    return np.stack([(backbone_probs + s * side_output).argmax(axis=1) == labels for s in SHRINK_GRID])


def _best(brier: np.ndarray) -> int:
    """Index of the factor with the lowest mean Brier score (argmin returns the first, i.e. the smallest, among ties)."""
    return int(np.argmin(brier.mean(axis=1)))


def sign_test_greater(gained: int, lost: int) -> float:
    """One-sided exact sign-test p-value that `gained` paired wins outnumber `lost` losses (ties dropped)."""
    return float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue) if gained > lost else 1.0


def paired_lower(candidate: np.ndarray, backbone: np.ndarray) -> float:
    """One-sided paired t-test p-value that `candidate`'s per-sample losses are lower than `backbone`'s on average."""
    differences = candidate - backbone
    if len(differences) < 2 or not differences.any():
        return 1.0
    if np.ptp(differences) == 0:  # every sample moved by the same amount: the sign says it all
        return 0.0 if differences[0] < 0 else 1.0
    return float(ttest_1samp(differences, 0.0, alternative="less").pvalue)


def choose_shrink(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray,
                  seed: int = 0) -> ShrinkDecision:
    """The factor to deploy: chosen on the whole split if the cross-fitted test finds a significant gain, else 0."""
    brier = _brier(backbone_probs, side_output, labels)
    right = _right(backbone_probs, side_output, labels)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(labels)), 2)
    crossed = np.zeros(len(labels), dtype=int)  # index of the factor each sample is scored with
    for this, other in (halves, halves[::-1]):
        crossed[this] = _best(brier[:, other]) if len(other) else 0
    samples = np.arange(len(labels))
    p_value = paired_lower(brier[crossed, samples], brier[0])
    # A lower Brier score can come from calibration alone (shrinking p_b toward uniform), which never changes a
    # prediction: the cross-fitted predictions must also fix more validation samples than they break.
    more_right = right[crossed, samples].sum() > right[0].sum()
    best = _best(brier) if p_value <= SIGNIFICANCE and more_right else 0
    return ShrinkDecision(factor=float(SHRINK_GRID[best]), validation_samples=len(labels),
                          validation_accuracy_backbone=float(right[0].mean()),
                          validation_accuracy_unshrunk=float(right[-1].mean()),
                          validation_accuracy_chosen=float(right[best].mean()),
                          cross_fitted_accuracy=float(right[crossed, samples].mean()),
                          validation_brier_backbone=float(brier[0].mean()),
                          cross_fitted_brier=float(brier[crossed, samples].mean()), p_value=p_value)


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

    @property
    def reason(self) -> str:
        """Why the correction is deployed or dropped, in one sentence."""
        if self.factor == 0:
            return (f"dropped: the best scale improves the answer NLL of not significantly more validation samples "
                    f"than it worsens (sign test p = {self.p_value:.3g}, {self.validation_samples} samples)")
        return f"{self.action}: the scale improves significantly more validation samples than it worsens " \
               f"(sign test p = {self.p_value:.3g})"

    def to_json(self) -> dict[str, object]:
        """The summary's record of the decision."""
        return {**asdict(self), "action": self.action, "reason": self.reason}


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
