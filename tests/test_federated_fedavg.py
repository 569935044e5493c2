"""Federated averaging with Flower (tiny-llama, three devices, the simulation engine): the global
model trains, every device deploys it behind its safeguard, the server's view holds each device's
update (plain) or only their sum (SecAgg+), and the label-share attack on the head's updates
beats the prior-only guess on a label-skewed partition, but not through SecAgg+."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason='the FedAvg tests need Flower: pip install -e ".[federated]"')

from attacks.base import PublicKnowledge  # noqa: E402
from attacks.fedavg_updates import POOL, fedavg_update_leak  # noqa: E402
from protocol.errors import UserInputError  # noqa: E402
from protocol.server.federated_view import aggregate, global_model, node_updates  # noqa: E402
from secure_assist.audit.public_knowledge import CachedFeatures, public_data  # noqa: E402
from secure_assist.config import FinetuneConfig  # noqa: E402
from secure_assist.data import resolve_data  # noqa: E402
from secure_assist.federated.run import FedAvgOutcome, run_fedavg  # noqa: E402
from secure_assist.federated.server import dp_accounting  # noqa: E402
from secure_assist.federated.settings import FedAvgSettings  # noqa: E402
from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon  # noqa: E402

DEVICES, ROUNDS, LOCAL_EPOCHS = 3, 3, 2
# shards:1 over three devices: one holds only negatives, one only positives, one both.
BASE = FinetuneConfig(model="tiny-llama", train_samples=120, eval_samples=16, devices=DEVICES, partition="shards:1",
                      safeguard_fraction=0.2, seed=0)


def federated(root: Path, variant: str) -> FedAvgOutcome:
    configs = [replace(BASE, device_index=i, workdir=str(root / f"device_{i}")) for i in range(DEVICES)]
    return run_fedavg(configs, FedAvgSettings(variant=variant, rounds=ROUNDS, local_epochs=LOCAL_EPOCHS),
                      progress=False)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> FedAvgOutcome:
    return federated(tmp_path_factory.mktemp("fedavg_plain"), "plain")


@pytest.fixture(scope="module")
def secagg(tmp_path_factory: pytest.TempPathFactory) -> FedAvgOutcome:
    return federated(tmp_path_factory.mktemp("fedavg_secagg"), "secagg")


@pytest.fixture(scope="module")
def public() -> PublicKnowledge:
    """128 public labeled SST-2 rows the devices do not hold, through the public (tiny) backbone."""
    task, train, evaluate = resolve_data(BASE)
    rows = public_data(task, None, None, train + evaluate, seed=0).examples[:128]
    return PublicKnowledge(backbone_name=BASE.model, task=task, labeled=tuple(rows),
                           features=CachedFeatures(BASE.model, task, [[e.text for e in rows]], progress=False))


def leak(outcome: FedAvgOutcome, public: PublicKnowledge) -> dict:
    return fedavg_update_leak(outcome.updates_dir, outcome.label_counts(2), public, (1, 2), BASE.server_training(),
                              LOCAL_EPOCHS, shadows=12)


def assert_trained_and_deployed(outcome: FedAvgOutcome) -> None:
    first, last = global_model(outcome.updates_dir, 0), global_model(outcome.updates_dir, ROUNDS)
    assert max(float(np.abs(a - b).max()) for a, b in zip(first, last)) > 1e-3
    assert len(outcome.summaries) == DEVICES
    for summary in outcome.summaries:
        assert summary.mode == "fedavg" and summary.epochs_done == ROUNDS * LOCAL_EPOCHS
        assert summary.safeguard is not None and summary.safeguard["action"] in {"kept", "shrunk", "dropped"}
        assert Path(summary.model_file).is_file() and 0.0 <= summary.metrics["accuracy"] <= 1.0
        assert summary.bytes_up > 0 and summary.bytes_down > 0 and summary.device_seconds > 0


def test_plain_fedavg_trains_and_every_device_deploys(plain: FedAvgOutcome) -> None:
    assert_trained_and_deployed(plain)
    nodes = {s.details["fedavg_node_id"] for s in plain.summaries}
    for server_round in range(1, ROUNDS + 1):
        assert set(node_updates(plain.updates_dir, server_round)) == nodes
        assert aggregate(plain.updates_dir, server_round) is None
    assert plain.accounting is None


def test_secagg_view_holds_only_the_aggregate(secagg: FedAvgOutcome) -> None:
    assert_trained_and_deployed(secagg)
    for server_round in range(1, ROUNDS + 1):
        assert node_updates(secagg.updates_dir, server_round) == {}
        assert aggregate(secagg.updates_dir, server_round) is not None
    assert not list(secagg.updates_dir.rglob("node_*"))


def test_label_shares_leak_from_plain_updates(plain: FedAvgOutcome, public: PublicKnowledge) -> None:
    result = leak(plain, public)
    assert result["view"] == "each device's update" and result["devices"] == DEVICES
    # The prior-only guess is off by 0.4 on average here; the updates must do far better.
    assert result["mean_tv"] < result["prior_mean_tv"] - 0.1


def test_secagg_leaves_only_the_pools_shares(secagg: FedAvgOutcome, public: PublicKnowledge) -> None:
    result = leak(secagg, public)
    assert result["view"] == "aggregate only"
    estimates = {tuple(d["estimate"]) for d in result["per_device"].values()}
    assert len(estimates) == 1  # one estimate, the pool's, for every device
    # Without per-device updates the attack cannot beat the pool's shares by much.
    assert result["mean_tv"] > result["prior_mean_tv"] - 0.05


def test_dp_accounting_matches_the_gaussian_composition() -> None:
    # Full participation: R rounds of the Gaussian mechanism with noise multiplier z are one Gaussian
    # mechanism with z / sqrt(R); RDP's conversion is an upper bound a little above the exact value.
    settings = FedAvgSettings(variant="dp", rounds=16, noise_multiplier=2.0, delta=1e-5)
    accounting = dp_accounting(settings, devices=20)
    exact = analytic_gaussian_epsilon(2.0 / math.sqrt(16), 1e-5)
    assert exact <= accounting["epsilon"] <= 1.5 * exact
    sampled = dp_accounting(replace(settings, fraction_train=0.25), devices=20)
    assert sampled["sample_rate"] == 0.25 and sampled["epsilon"] < accounting["epsilon"]
    assert dp_accounting(replace(settings, variant="plain"), devices=20) is None


def test_bad_device_sets_are_one_line_errors(tmp_path: Path) -> None:
    configs = [replace(BASE, device_index=i, workdir=str(tmp_path / f"d{i}")) for i in range(DEVICES)]
    with pytest.raises(UserInputError, match="one config per device"):
        run_fedavg(configs[:2], progress=False)
    with pytest.raises(UserInputError, match="mechanisms"):
        run_fedavg([replace(c, mechanism=("gaussian",)) for c in configs], progress=False)
    with pytest.raises(UserInputError, match="variant"):
        FedAvgSettings(variant="krum")


def test_an_update_of_another_shape_or_an_outsized_weight_is_neither_stored_nor_averaged(tmp_path: Path) -> None:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg

    from secure_assist.federated.recording import RecordingStrategy

    model = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]

    def result(arrays: list[np.ndarray]) -> FitRes:
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 10, {})

    strategy = RecordingStrategy(FedAvg(initial_parameters=ndarrays_to_parameters(model), accept_failures=False),
                                 tmp_path, secure_aggregation=False, max_weight=10)
    strategy.initialize_parameters(None)
    honest = (GridClientProxy(1, None, 0), result([a + 1 for a in model]))
    oversized = (GridClientProxy(2, None, 0), result([np.ones((2000, 3), np.float32), model[1]]))
    poisoned = (GridClientProxy(3, None, 0), result([np.full((2, 3), np.nan, np.float32), model[1]]))
    outweighing = (GridClientProxy(4, None, 0), result([a + 1 for a in model]))
    outweighing[1].num_examples = 11  # claims more samples than any device holds
    parameters, _ = strategy.aggregate_fit(1, [honest, oversized, poisoned, outweighing], [])
    assert parameters is None  # failures are not accepted: the round does not move the global model
    assert [p.name for p in (tmp_path / "round_001").iterdir()] == ["node_1.safetensors"]
