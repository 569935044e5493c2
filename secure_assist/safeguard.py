"""The device's safeguard: never deploy a side output worse than the backbone alone.

Classification (below) tests accuracy; generation (`choose_scale`, further down) tests the
answer NLL per token of the scaled correction, with a sign test over validation samples.

The device holds out a validation split of its own training data (never uploaded),
and picks the shrink factor s in [0, 1] of the side output that maximizes validation
accuracy of argmax(p_b + s·g(A)); ties go to the smaller s. It then deploys s > 0 only
when the gain over the backbone is significant: a one-sided exact McNemar test on the
validation samples where the two disagree, at level `SIGNIFICANCE`. A few hundred
validation samples make small gains noise: a DP-noised side output that wins by luck on
validation can lose on new data (measured: ε = 8 Gaussian, +1 point on 200 validation
samples, −0.7 point on the dev set), so an insignificant gain drops the side output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from protocol.side_output import SideOutput, scale_side_output

SHRINK_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ShrinkDecision:
    """What the safeguard chose and why."""

    factor: float
    validation_samples: int
    validation_accuracy_backbone: float
    validation_accuracy_unshrunk: float
    validation_accuracy_chosen: float
    # One-sided exact McNemar p-value of the best factor against the backbone (1.0: no gain).
    p_value: float

    @property
    def action(self) -> str:
        """'kept', 'shrunk' or 'dropped'."""
        return "dropped" if self.factor == 0 else "kept" if self.factor == 1 else "shrunk"


def choose_shrink(backbone_probs: np.ndarray, side_output: np.ndarray, labels: np.ndarray) -> ShrinkDecision:
    """The best factor on the validation split (smallest among ties), or 0 when its gain is not significant."""
    backbone_right = backbone_probs.argmax(axis=1) == labels
    predictions = [(backbone_probs + s * side_output).argmax(axis=1) == labels for s in SHRINK_GRID]
    scores = [float(right.mean()) for right in predictions]
    best = int(np.argmax(scores))  # argmax returns the first, i.e. the smallest factor, among ties
    gained = int((predictions[best] & ~backbone_right).sum())
    lost = int((~predictions[best] & backbone_right).sum())
    p_value = float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue) if gained > lost else 1.0
    if p_value > SIGNIFICANCE:
        best = 0
    return ShrinkDecision(factor=float(SHRINK_GRID[best]), validation_samples=len(labels),
                          validation_accuracy_backbone=scores[0], validation_accuracy_unshrunk=scores[-1],
                          validation_accuracy_chosen=scores[best], p_value=p_value)


def shrink_network(side: SideOutput, factor: float) -> None:
    """Scale the side output by `factor`, whatever mode produced it."""
    scale_side_output(side, factor)


# Generation: factors of the hidden-space correction tried on validation. The MSE fit through the
# head is a very short step in logit space (its effect on token y scales with y's leverage in W_U,
# about d/V): on SmolLM2 the best factor was about 512 (BENCHMARKS.md "Generation"), hence the range.
SCALE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0)


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
    gained = int((sample_nll[:, best] < sample_nll[:, 0]).sum())
    lost = int((sample_nll[:, best] > sample_nll[:, 0]).sum())
    p_value = float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue) if gained > lost else 1.0
    chosen = best if p_value <= SIGNIFICANCE else 0
    return ScaleDecision(factor=float(grid[chosen]), validation_samples=len(counts),
                         validation_nll_backbone=float(per_token[0]),
                         validation_nll_unscaled=float(per_token[grid.index(1.0)]),
                         validation_nll_chosen=float(per_token[chosen]), p_value=p_value)
