"""Threats across devices: a curious member's membership inference on the others' samples
through an overfit shared model (positive control) and the backbone alone (negative
control), and the poisoning comparison's bookkeeping on real tiny-model runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import UserInputError
from protocol.model.backbone import Backbone
from secure_assist.audit.auditor import load_ground_truth
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.devices.cross_membership import (
    SHARED_MODEL, ZERO_SHOT, cross_device_membership, device_trained_texts,
)
from secure_assist.devices.poisoning import CLEAN, POISONED, device_configs, poisoning_effect
from secure_assist.training.run import run_training

DEVICES = 4


@pytest.fixture(scope="module")
def overfit_pool(tiny_llama: Backbone,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, str, list[frozenset[str]]]:
    """(4-device config, model file, each device's trained texts) of a side network trained on the
    union of the 4 devices' shares (200 SST-2 samples) to memorise them: 60 epochs, no weight
    decay, adapters at the full rate, no validation split held back. (`tiny_llama` sets one torch
    thread: the side networks are small, and more threads only contend.)"""
    config = FinetuneConfig(model="tiny-llama", train_samples=200, eval_samples=16, epochs=60, weight_decay=0.0,
                            adapter_lr_scale=1.0, safeguard_fraction=0.0, mode="side_network",
                            workdir=str(tmp_path_factory.mktemp("overfit")))
    summary = run_training(config, progress=False)
    pool = replace(config, devices=DEVICES)
    trained = [frozenset(e.text for e in resolve_data(replace(pool, device_index=i))[1]) for i in range(DEVICES)]
    # The model trained on exactly the union of the shares.
    assert frozenset().union(*trained) == device_trained_texts([config.workdir])[0]
    return pool, summary.model_file, trained


def test_curious_device_finds_the_other_devices_members_in_an_overfit_shared_model(overfit_pool: tuple) -> None:
    pool, model_file, trained = overfit_pool
    settings: dict = {}
    report = cross_device_membership(pool, model_file, trained, attacker=1, references=4, progress=False,
                                     settings=settings)
    assert report["attacker"] == 1 and report["attacker_samples_left_out"] == len(trained[1]) == 50
    for row in (SHARED_MODEL, ZERO_SHOT):
        # Members: the other three devices' 150 samples, never the attacker's own.
        assert report[row]["members"] == 150 and report[row]["non_members"] == 1000
    shared, zero_shot = report[SHARED_MODEL]["best"], report[ZERO_SHOT]
    assert shared["tpr_at_0.01_fpr"] > 0.05 and shared["auc"] > 0.7  # chance: 0.01 and 0.5 (measured: 0.11, 0.85)
    for attack in zero_shot["attacks"]:  # the backbone trained on nobody
        assert attack["auc"] < 0.6 and attack["tpr_at_0.01_fpr"] < 0.06
    # Another row over the same devices reuses the attacker's setting (its references), with the same result;
    # another reference count is another setting.
    (built,) = settings.values()
    assert cross_device_membership(pool, model_file, trained, attacker=1, references=4, progress=False,
                                   settings=settings) == report
    assert list(settings.values()) == [built]
    cross_device_membership(pool, model_file, trained, attacker=1, references=2, progress=False, settings=settings)
    assert len(settings) == 2 and all(v.references.candidate_scores.shape[0] == n
                                      for v, n in zip(settings.values(), (4, 2)))


def test_cross_device_membership_rejects_a_wrong_device_list(overfit_pool: tuple) -> None:
    pool, model_file, trained = overfit_pool
    with pytest.raises(UserInputError, match="each of the 4 devices"):
        cross_device_membership(pool, model_file, trained[:3], progress=False)
    with pytest.raises(UserInputError, match="attacker device 4"):
        cross_device_membership(pool, model_file, trained, attacker=4, progress=False)
    with pytest.raises(UserInputError, match="kind membership"):
        cross_device_membership(pool, model_file, trained, attacks=["delta_argmax"], progress=False)


def test_poisoning_compares_honest_devices_of_the_same_setting(tmp_path: Path) -> None:
    config = FinetuneConfig(model="tiny-llama", train_samples=48, eval_samples=16, epochs=2, devices=3,
                            mode="device_local", safeguard_fraction=0.0, workdir=str(tmp_path / "unused"))
    produced: list[list[FinetuneConfig]] = []

    def separate_devices(configs: list[FinetuneConfig]) -> list:
        produced.append(configs)
        return [run_training(c, progress=False) for c in configs]

    report = poisoning_effect(config, separate_devices, tmp_path / "runs", poisoner=2)
    clean, poisoned = produced
    assert [c.flip_labels for c in clean] == [False] * 3 and [c.flip_labels for c in poisoned] == [False, False, True]
    # The poisoner's run trained on its own samples with every label flipped.
    truth = {run: {t.text: t.label for t in load_ground_truth(Path(configs[2].workdir)).values()}
             for run, configs in ((CLEAN, clean), (POISONED, poisoned))}
    assert truth[CLEAN].keys() == truth[POISONED].keys() and len(truth[CLEAN]) == 16
    assert all(truth[POISONED][text] == 1 - label for text, label in truth[CLEAN].items())
    # Separate devices share nothing: the honest devices' runs are the same in both settings.
    per_device = report["per_device_accuracy"]
    assert per_device[CLEAN][:2] == per_device[POISONED][:2]
    assert report["honest_accuracy_change"] == {"mean": 0.0, "ci95": (0.0, 0.0)}
    honest = np.array(per_device[CLEAN][:2])
    assert report[CLEAN]["honest_accuracy"] == pytest.approx(
        {"mean": honest.mean(), "p10": np.percentile(honest, 10), "min": honest.min()})
    assert report[POISONED]["poisoner_accuracy"] == per_device[POISONED][2]
    assert report["honest_devices"] == 2


def test_poisoning_needs_a_poisoner_among_several_devices(tmp_path: Path) -> None:
    config = FinetuneConfig(model="tiny-llama", devices=3, workdir=str(tmp_path))
    with pytest.raises(UserInputError, match="poisoner device 3"):
        poisoning_effect(config, lambda configs: [], tmp_path, poisoner=3)
    with pytest.raises(UserInputError, match="two devices"):
        poisoning_effect(replace(config, devices=1), lambda configs: [], tmp_path)
    assert [c.workdir for c in device_configs(config, "runs/x", 1)] == [f"runs/x/device_{i}" for i in range(3)]
