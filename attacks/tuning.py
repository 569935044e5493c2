"""Attack hyper-parameters chosen by cross-validation on the attacker's public data only.

A fixed hyper-parameter (ridge strength, probe regularization, clustering dimension) makes the audit's
attacker weaker than a real one, which would tune it on the data it has: public text run through the
public backbone, a few public labeled examples. A tuned attack scores each value of a small grid on
held-out folds of its public data and keeps the best; the grid's first value is the attack's former
default, which a tie keeps. The chosen value, the grid and the fold scores go into the result's details,
and so into the audit report. This module sees public arrays only: the device's truth never reaches it.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np
from sklearn.model_selection import KFold

V = TypeVar("V")

FOLDS = 3


def choose_by_folds(grid: Sequence[V], score: Callable[[V, np.ndarray, np.ndarray], float], n_rows: int,
                    name: str) -> tuple[V, dict[str, object]]:
    """The grid value with the best mean held-out score over `FOLDS` contiguous folds of the public rows
    (`score(value, train rows, test rows)`, higher is better), and what to record (`tuned_entry`). Contiguous, not shuffled: the rows of one public text (its token
    positions) are contiguous, so a text's positions do not score a fit made on its other positions."""
    folds = list(KFold(n_splits=FOLDS).split(np.zeros(n_rows)))
    means = [float(np.mean([score(value, train, test) for train, test in folds])) for value in grid]
    best = int(np.argmax(means))  # the first of equal scores: the former default on a tie
    return grid[best], tuned_entry(name, grid[best], grid, means, "public_cv_scores")


def public_choice(grid: Sequence[V], score: Callable[[V], float], name: str) -> tuple[V, dict[str, object]]:
    """The grid value with the best score on the public data (for unsupervised choices such as a
    clustering's dimension, scored against public labels), and what to record (`tuned_entry`)."""
    scores = [float(score(value)) for value in grid]
    best = int(np.argmax(scores))
    return grid[best], tuned_entry(name, grid[best], grid, scores, "public_scores")


def tuned_entry(name: str, chosen: object, grid: Sequence[object], scores: object, scored_by: str
                ) -> dict[str, object]:
    """An attack result's record of one tuned hyper-parameter, under its details' "tuned" key:
    {"tuned": {name: {"chosen", "grid", scored_by}}} (the audit report shows every chosen value)."""
    return {"tuned": {name: {"chosen": chosen, "grid": list(grid), scored_by: scores}}}
