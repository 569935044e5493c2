"""Pure metrics of the audit: accuracy, AUC, TPR at low FPR, bootstrap intervals,
reconstruction scores, and Clopper-Pearson bounds for empirical privacy.

Everything here is a function of arrays; the auditor owns ground truth and calls these.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike
from rouge_score import rouge_scorer
from scipy.stats import beta, rankdata

BOOTSTRAP_ROUNDS = 1000


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, seed: int = 0,
                       rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    """95% percentile bootstrap interval of `statistic(indices)` over n resampled items."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(rounds)]
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def accuracy_with_interval(predictions: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, object]:
    """Accuracy, its bootstrap CI and the prior (majority-class) baseline."""
    correct = (np.asarray(predictions) == np.asarray(labels)).astype(float)
    prior = float(np.bincount(labels).max() / len(labels))
    return {"accuracy": float(correct.mean()),
            "ci95": bootstrap_interval(lambda idx: float(correct[idx].mean()), len(correct), seed),
            "prior_baseline": prior, "chance": 1.0 / max(2, int(labels.max()) + 1), "n": len(labels)}


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in `labels`: 1/C for any constant guess,
    whatever the class balance (accuracy gives the majority share for free)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean([(predictions[labels == c] == c).mean() for c in np.unique(labels)]))


def macro_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-rest AUC of each class's score column, averaged over the classes present with
    both positives and negatives (rank formula, ties averaged, as sklearn's roc_auc_score)."""
    aucs = []
    for c in np.unique(labels):
        positives = labels == c
        n_pos, n_neg = int(positives.sum()), int((~positives).sum())
        if n_pos and n_neg:
            ranks = rankdata(scores[:, c])
            aucs.append((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def label_leak_metrics(predictions: np.ndarray, labels: np.ndarray, n_classes: int,
                       scores: np.ndarray | None = None, seed: int = 0) -> dict[str, object]:
    """Everything a label attack is scored on: accuracy with the prior beside it, balanced
    accuracy (chance 1/C on any class balance: the leak metric), when the attack gives
    per-class scores (n, C), macro one-vs-rest AUC (chance 0.5), and each class's TPR at 1%
    and 0.1% FPR (`per_class_low_fpr`); each with a 95% bootstrap CI."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    report = accuracy_with_interval(predictions, labels, seed)
    report.update(
        balanced_accuracy=balanced_accuracy(predictions, labels),
        balanced_accuracy_ci95=bootstrap_interval(lambda idx: balanced_accuracy(predictions[idx], labels[idx]),
                                                  len(labels), seed),
        balanced_chance=1.0 / n_classes)
    if scores is not None:
        scores = np.asarray(scores, dtype=float)
        report.update(auc=macro_auc(scores, labels),
                      auc_ci95=bootstrap_interval(lambda idx: macro_auc(scores[idx], labels[idx]), len(labels), seed))
    report["low_fpr"] = per_class_low_fpr(predictions, labels, n_classes, scores, seed)
    return report


def per_class_low_fpr(predictions: np.ndarray, labels: np.ndarray, n_classes: int, scores: np.ndarray | None = None,
                      seed: int = 0) -> dict[str, dict[str, object]]:
    """`low_fpr_metrics` of each class one-vs-rest (classes present with positives and negatives), keyed
    by class: the rare, confident leaks that balanced accuracy averages away. An attack without scores is
    scored by its one-hot prediction, whose one operating point counts where its FPR is within the rate."""
    class_scores = np.eye(n_classes)[predictions] if scores is None else np.asarray(scores, dtype=float)
    return {str(c): low_fpr_metrics(class_scores[:, c], (labels == c).astype(int), seed=seed)
            for c in range(n_classes) if 0 < int((labels == c).sum()) < len(labels)}


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0) -> dict[str, object]:
    """Accuracy of A minus accuracy of B on the same samples, with a paired bootstrap 95% CI."""
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    return {"difference": float(diff.mean()),
            "ci95": bootstrap_interval(lambda idx: float(diff[idx].mean()), len(diff), seed), "n": len(diff)}


def symmetric_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """max(AUC, 1 - AUC): an attacker may flip the sign of any score.

    AUC is the Mann-Whitney statistic from ranks (ties averaged), which equals sklearn's
    roc_auc_score and is cheap enough for a thousand bootstrap rounds.
    """
    positives = np.asarray(labels) == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    ranks = rankdata(scores)
    auc = float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return max(auc, 1.0 - auc)


def auc_with_interval(scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, object]:
    """Symmetric AUC with its bootstrap CI (chance is 0.5)."""
    def resampled(idx: np.ndarray) -> float:
        return symmetric_auc(scores[idx], labels[idx]) if len(set(labels[idx])) == 2 else float("nan")

    return {"auc": symmetric_auc(scores, labels), "ci95": bootstrap_interval(resampled, len(labels), seed),
            "chance": 0.5, "n": len(labels)}


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Largest true-positive rate of a threshold on `scores` (higher = positive) whose
    false-positive rate is at most `fpr` (as ML Privacy Meter and LiRA report it); nan
    without both classes."""
    scores, positives = np.asarray(scores, dtype=float), np.asarray(labels) == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return float("nan")
    # A threshold passes at most floor(fpr * n_neg) negatives; ties pass together.
    allowed = int(np.floor(fpr * n_neg + 1e-9))
    negative_scores = np.sort(scores[~positives])[::-1]
    threshold = negative_scores[allowed] if allowed < n_neg else -np.inf
    return float((scores[positives] > threshold).mean())


def low_fpr_metrics(scores: np.ndarray, labels: np.ndarray, fprs: tuple[float, ...] = (0.01, 0.001),
                    seed: int = 0) -> dict[str, object]:
    """TPR at each false-positive rate in `fprs` with its 95% bootstrap CI, and the number
    of negatives (a rate below 1/negatives cannot be resolved: its TPR is reported as None)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    negatives = int((labels != 1).sum())
    report: dict[str, object] = {"negatives": negatives}
    for fpr in fprs:
        key = f"tpr_at_{fpr:g}_fpr"
        if fpr * negatives < 1:
            report[key], report[key + "_ci95"] = None, None
            continue
        report[key] = tpr_at_fpr(scores, labels, fpr)
        report[key + "_ci95"] = list(bootstrap_interval(lambda idx: tpr_at_fpr(scores[idx], labels[idx], fpr),
                                                        len(labels), seed))
    return report


def bag_scores(predicted: list[str], truth: list[str]) -> tuple[float, float, float]:
    """Token precision, recall and F1 of two bags (sets) of tokens."""
    guessed, actual = set(predicted), set(truth)
    hits = len(guessed & actual)
    precision = hits / len(guessed) if guessed else 0.0
    recall = hits / len(actual) if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


_ROUGE = rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score)."""
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def clopper_pearson(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95) -> tuple[Any, Any]:
    """Exact two-sided binomial confidence interval (elementwise over arrays of counts)."""
    alpha = 1.0 - confidence
    successes, trials = np.asarray(successes), np.asarray(trials)
    # beta.ppf needs positive shape parameters: the clamped entries are replaced by the exact ends 0 and 1.
    low = np.where(successes == 0, 0.0, beta.ppf(alpha / 2, np.maximum(successes, 1), trials - successes + 1))
    high = np.where(successes == trials, 1.0,
                    beta.ppf(1 - alpha / 2, successes + 1, np.maximum(trials - successes, 1)))
    return low[()], high[()]


def epsilon_lower_bound(true_positives: ArrayLike, positives: ArrayLike, false_positives: ArrayLike,
                        negatives: ArrayLike, delta: float = 0.0, confidence: float = 0.95) -> Any:
    """Empirical ε implied by a test's TPR/FPR at the given confidence (Clopper-Pearson), elementwise
    over arrays of counts: (ε, δ)-DP forces TPR <= e^ε FPR + δ and 1 - FPR <= e^ε (1 - TPR) + δ."""
    # Each ratio is bounded conservatively: its numerator from below, its denominator from above.
    tpr_low, _ = clopper_pearson(true_positives, positives, confidence)
    _, fpr_high = clopper_pearson(false_positives, negatives, confidence)
    tpr_low, fpr_high = np.asarray(tpr_low), np.asarray(fpr_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where((tpr_low - delta > 0) & (fpr_high > 0), np.log((tpr_low - delta) / fpr_high), 0.0)
        second = np.where((1 - fpr_high - delta > 0) & (1 - tpr_low > 0),
                          np.log((1 - fpr_high - delta) / (1 - tpr_low)), 0.0)
    return np.maximum(0.0, np.maximum(first, second))[()]
