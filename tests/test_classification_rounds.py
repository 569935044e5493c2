"""benchmarks/classification_rounds.py: each round is fitted to Δ refreshed at the deployed sum, judged against
that sum, and added at its chosen factor (synthetic features whose label a side network can read)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from attacks.membership_references import LabeledFeatures, TrainingRecipe
from protocol.server.training_settings import ServerTraining

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("classification_rounds", ROOT / "benchmarks" / "classification_rounds.py")
rounds_script = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rounds_script
_spec.loader.exec_module(rounds_script)


def _features(n: int, rng: np.random.Generator) -> LabeledFeatures:
    labels = rng.integers(0, 2, n)
    activations = rng.normal(size=(n, 2, 8)).astype(np.float32)
    activations[:, 1, 0] += 3.0 * (2 * labels - 1)  # the label, noisily, in one coordinate of the last layer
    return LabeledFeatures(activations, rng.normal(scale=0.1, size=(n, 2)).astype(np.float32), labels)


def test_each_round_starts_from_the_sum_the_device_deployed() -> None:
    rng = np.random.default_rng(0)
    splits = {"upload": _features(240, rng), "validation": _features(80, rng), "eval": _features(200, rng)}
    recipe = TrainingRecipe(ServerTraining(), epochs=10, upload_size=16)
    first, second = rounds_script.boosted_rounds(splits, recipe, [1, 2], seed=0)
    assert first["validation"]["factor"] > 0  # round 1 deployed, so round 2 has another model to beat
    assert first["accuracy"]["accuracy"] > first["accuracy"]["prior_baseline"] + 0.05
    # Round 2's model to beat is round 1's deployed sum, not the backbone.
    assert np.isclose(second["validation"]["validation_accuracy_backbone"],
                      first["validation"]["validation_accuracy_chosen"])
    assert not np.isclose(second["validation"]["validation_brier_backbone"],
                          first["validation"]["validation_brier_backbone"])
    assert first["gain_over_first_scored_round"]["difference"] == 0.0
    assert first["dropped_at_round"] is None
    if second["validation"]["factor"] == 0:  # a dropped round leaves the deployed sum as it was
        assert second["dropped_at_round"] == 2
        assert second["accuracy"]["accuracy"] == first["accuracy"]["accuracy"]
