"""Attack hyper-parameters tuned on public data only: the fold choice, the recorded values, and the same
choice whatever the device's view and truth (the tuning reads public knowledge alone)."""

from __future__ import annotations

import numpy as np
import pytest

from attack_views import random_ids, write_truth, write_view
from attacks.base import PublicFeatures, PublicKnowledge
from attacks.labels import PCA_GRID, PROBE_C_GRID, tuned_probe
from attacks.public_model import public_backbone, token_states
from attacks.reconstruction import RIDGE_GRID
from attacks.tuning import choose_by_folds, public_choice
from protocol.data.tasks import SST2, Example, builtin_split
from protocol.wire.messages import FullUpload, Upload
from secure_assist.audit.auditor import audit

N = 120


def test_fold_choice_takes_the_best_mean_and_the_default_on_a_tie() -> None:
    seen: list[tuple[int, int]] = []

    def score(value: str, train: np.ndarray, test: np.ndarray) -> float:
        seen.append((len(train), len(test)))
        return {"default": 0.5, "better": 0.7, "worse": 0.1}[value]

    chosen, details = choose_by_folds(("default", "better", "worse"), score, 30, "knob")
    knob = details["tuned"]["knob"]
    assert chosen == "better" and knob["chosen"] == "better" and knob["grid"] == ["default", "better", "worse"]
    assert knob["public_cv_scores"] == pytest.approx([0.5, 0.7, 0.1]) and set(seen) == {(20, 10)}
    assert choose_by_folds(("default", "same"), lambda v, a, b: 1.0, 30, "knob")[0] == "default"
    assert public_choice((16, 4), lambda n: 0.5, "pca")[1] == {
        "tuned": {"pca": {"chosen": 16, "grid": [16, 4], "public_scores": [0.5, 0.5]}}}


def test_probe_c_is_cross_validated_on_the_public_examples() -> None:
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 16)
    x = rng.normal(size=(32, 10)) + 2.0 * labels[:, None]
    probe, details = tuned_probe(x, labels)
    tuned = details["tuned"]["C"]
    assert tuned["chosen"] in PROBE_C_GRID and len(tuned["public_cv_scores"]) == len(PROBE_C_GRID)
    assert probe.named_steps["logistic"].C == tuned["chosen"] and (probe.predict(x) == labels).mean() > 0.9
    fallback = tuned_probe(x[:3], np.array([0, 1, 1]))[1]["tuned"]["C"]  # one example of class 0: no split
    assert fallback["chosen"] == PROBE_C_GRID[0] and isinstance(fallback["public_cv_scores"], str)


def _public_with_probe_signal() -> PublicKnowledge:
    backbone = public_backbone("tiny-llama")
    direction = np.random.default_rng(7).normal(size=backbone.hidden_size)

    def features(texts: list[str], layers: tuple[int, ...]) -> PublicFeatures:
        rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
        signs = np.array([1.0 if t.startswith("good") else -1.0 for t in texts])
        acts = rng.normal(size=(len(texts), len(layers), backbone.hidden_size)) + 2 * signs[:, None, None] * direction
        return PublicFeatures(activations=acts.astype(np.float32), label_logits=np.zeros((len(texts), 2), np.float32))

    labeled = tuple(Example(f"{'good' if i % 2 else 'bad'} {i}", i % 2) for i in range(32))
    return PublicKnowledge(backbone_name="tiny-llama", task=SST2, labeled=labeled, features=features)


@pytest.mark.parametrize("attack,key,grid", [("model_completion_k32", "C", PROBE_C_GRID),
                                             ("clustering_activations", "pca_components", PCA_GRID)])
def test_label_attacks_record_a_choice_that_the_private_data_does_not_move(tmp_path, attack, key, grid) -> None:
    public = _public_with_probe_signal()
    backbone = public_backbone("tiny-llama")
    chosen = []
    for seed in (1, 2):  # two devices: different states, labels and texts; one attacker's public knowledge
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, N)
        acts = rng.normal(size=(N, 2, backbone.hidden_size)).astype(np.float32) * (1 + seed)
        ids = random_ids(N, seed)
        folder = tmp_path / str(seed)
        write_view(folder, [Upload(sample_ids=ids, activations=acts, delta=np.zeros((N, 2), np.float32),
                                   layers=(1, 2))])
        write_truth(folder, ids, labels.tolist(), [f"device {seed} text {i}" for i in range(N)])
        result, report = audit(attack, folder, public=public)
        tuned = result.details["tuned"][key]
        assert tuned["chosen"] in grid and tuned["grid"] == list(grid) and report["tuned"] == result.details["tuned"]
        chosen.append(tuned)
    assert chosen[0] == chosen[1]


def test_inversion_ridge_is_chosen_on_public_positions_only(tmp_path) -> None:
    backbone = public_backbone("tiny-llama")
    public = PublicKnowledge("tiny-llama", SST2,
                             unlabeled_texts=tuple(e.text for e in builtin_split("sst2", "train")[:60]))
    chosen = []
    for text in ("quietly moving", "an utter mess of a film"):
        states, prompt = token_states(backbone, SST2, [text], 1)
        sample = random_ids(1)
        folder = tmp_path / text.replace(" ", "_")
        write_view(folder, [FullUpload(sample_ids=sample, activations=states[None, None].astype(np.float16),
                                       attention_mask=np.ones((1, len(prompt)), np.uint8), labels=np.array([1]))])
        write_truth(folder, sample, [1], [text])
        result, report = audit("full_activation_inversion", folder, public=public)
        tuned = result.details["tuned"]["ridge"]
        assert tuned["chosen"] in RIDGE_GRID and len(tuned["public_cv_scores"]) == len(RIDGE_GRID)
        assert report["position_token_accuracy"] >= 0.9
        chosen.append(tuned)
    assert chosen[0] == chosen[1]
