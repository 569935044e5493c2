"""Splitting the training set over devices: disjoint, covering, seed-fixed, label-skewed as asked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from protocol.errors import UserInputError
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.devices.partition import Partition, own_distribution_weights

LABELS = np.repeat([0, 1], [600, 400])


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.5", "dirichlet_equal:0.5", "shards:2"])
def test_every_sample_on_exactly_one_device(text: str) -> None:
    parts = Partition.parse(text).indices(len(LABELS), 20, seed=3, labels=LABELS)
    assert len(parts) == 20
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert all(len(p) >= 1 for p in parts)
    again = Partition.parse(text).indices(len(LABELS), 20, seed=3, labels=LABELS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_label_skew_grows_as_alpha_shrinks() -> None:
    def mean_majority(alpha: float) -> float:
        parts = Partition("dirichlet", alpha=alpha).indices(len(LABELS), 20, seed=0, labels=LABELS)
        return float(np.mean([np.bincount(LABELS[p], minlength=2).max() / len(p) for p in parts]))

    iid = np.mean([np.bincount(LABELS[p], minlength=2).max() / len(p)
                   for p in Partition("iid").indices(len(LABELS), 20, seed=0)])
    assert mean_majority(0.3) > mean_majority(100.0) > 0.5
    assert abs(mean_majority(100.0) - iid) < 0.05


def test_equal_label_skew_gives_every_device_its_size_and_skews_as_alpha_shrinks() -> None:
    # The setting `dirichlet` cannot split (100 devices over 2,000 samples at 0.5): here every device holds 20.
    labels = np.repeat([0, 1], [905, 1095])
    with pytest.raises(UserInputError, match="fewer than 5 samples"):
        Partition("dirichlet", alpha=0.5).indices(len(labels), 100, seed=0, labels=labels)

    def majorities(alpha: float) -> np.ndarray:
        parts = Partition("dirichlet_equal", alpha=alpha).indices(len(labels), 100, seed=0, labels=labels)
        assert [len(p) for p in parts] == [20] * 100
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
        return np.array([np.bincount(labels[p], minlength=2).max() / len(p) for p in parts])

    skewed, mild = majorities(0.5), majorities(100.0)
    assert skewed.mean() > 0.75 and (skewed == 1.0).mean() > 0.2  # many one-class devices
    # Near IID only the last devices filled can meet an exhausted class (seed 0: 1 of 100).
    assert mild.mean() < 0.65 and (mild == 1.0).mean() <= 0.05
    assert str(Partition.parse("dirichlet_equal:0.5")) == "dirichlet_equal:0.5"


def test_equal_label_skew_leaves_no_device_index_the_leftovers() -> None:
    # Devices are filled in a seed-fixed random order: the one-class devices that an exhausted class leaves near IID
    # fall on any index, not on the highest ones every time.
    labels = np.repeat([0, 1], [905, 1095])
    one_class = [i for seed in range(10)
                 for i, p in enumerate(Partition("dirichlet_equal", alpha=100.0).indices(2000, 100, seed, labels))
                 if len(np.unique(labels[p])) == 1]
    assert one_class and min(one_class) < 80


def test_two_shards_give_at_most_two_label_runs() -> None:
    parts = Partition("shards", shards=2).indices(len(LABELS), 20, seed=1, labels=LABELS)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert all(len(p) == 50 for p in parts)


@pytest.mark.parametrize("text", ["", "dirichlet", "dirichlet:0", "dirichlet:x", "dirichlet_equal",
                                  "dirichlet_equal:-1", "shards:0", "iid:3", "noniid"])
def test_bad_partitions_are_user_errors(text: str) -> None:
    with pytest.raises(UserInputError, match="--partition"):
        Partition.parse(text)


def test_more_devices_than_samples_is_refused() -> None:
    with pytest.raises(UserInputError, match="cannot share"):
        Partition("iid").indices(5, 6, seed=0)


def test_own_distribution_weights_match_the_device_label_shares() -> None:
    eval_labels = np.repeat([0, 1], [300, 100])
    weights = own_distribution_weights(np.array([1, 1, 1, 0]), eval_labels, 2)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[eval_labels == 1].sum() == pytest.approx(0.75)


def test_devices_of_one_run_hold_disjoint_shares_of_its_training_set() -> None:
    base = FinetuneConfig(train_samples=200, devices=4, partition="dirichlet:0.5")
    whole = resolve_data(replace(base, devices=1))[1]
    shares = [resolve_data(replace(base, device_index=i))[1] for i in range(4)]
    texts = [e.text for share in shares for e in share]
    assert sorted(texts) == sorted(e.text for e in whole)
    flipped = resolve_data(replace(base, device_index=2, flip_labels=True))[1]
    assert [1 - e.label for e in flipped] == [e.label for e in shares[2]]


def test_device_index_outside_the_devices_is_refused() -> None:
    with pytest.raises(UserInputError, match="device_index"):
        FinetuneConfig(devices=3, device_index=3)
    with pytest.raises(UserInputError, match="--partition"):
        FinetuneConfig(partition="dirichlet:-1")
