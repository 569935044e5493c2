"""The training-mode contract: every (mode, mechanism) pair the registries allow runs end to end
on tiny-llama, in process and (classification) over TLS, with the same result both ways; the
deployed model file reproduces the run's accuracy (classification) or generates answers
(generation, on a few Alpaca rows; generation over TLS: tests/test_generation_transport.py);
every mode's messages are registered; and a new mode is one class plus its registration (shown
here with a mode defined in this test)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from protocol.wire.messages import MESSAGE_TYPES
from protocol.model.model_io import load_finetuned
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import VIEW_FIELDS, ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.mechanisms import MECHANISMS
from protocol.modes.registry import MODES
from protocol.modes.host import host_factory
from protocol.modes.side_network.mode import SideNetworkMode
from secure_assist.training.run import run_training
from secure_assist.data import resolve_data
from secure_assist.predict import predict_texts
from tests.generation_data import alpaca_file

BASE = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=16, epochs=2, rank=4, epsilon=4.0,
                      activation_noise_multiplier=0.01, he_features=4, mechanism_seed=0, safeguard_fraction=0.2)


def allowed_pairs() -> Iterator[tuple[str, tuple[str, ...]]]:
    """(mode, mechanism chain) for every mechanism each mode supports; a mode that needs a
    stage (ckks_ridge: encrypt) gets the mechanism composed with that stage's provider."""
    for mode in MODES.values():
        providers = [n for n, c in MECHANISMS.items() if mode.required_stage and c.stage == mode.required_stage]
        for name, cls in MECHANISMS.items():
            if not cls.supports(mode):
                continue
            if mode.required_stage and cls.stage != mode.required_stage:
                if name == "none":
                    continue  # 'none' composes with nothing
                yield mode.name, (name, providers[0])
            else:
                yield mode.name, (name,)


PAIRS = sorted(set(allowed_pairs()))
CLASSIFICATION_PAIRS = [p for p in PAIRS if MODES[p[0]].task_kind == "classification"]
GENERATION_PAIRS = [p for p in PAIRS if MODES[p[0]].task_kind == "generation"]
NETWORK_PAIRS = [p for p in CLASSIFICATION_PAIRS if MODES[p[0]].uploads]


def applied_order(chain: tuple[str, ...]) -> list[str]:
    """The chain's mechanisms in the order they are applied (stage order)."""
    return sorted(chain, key=lambda n: ("label", "delta", "activations", "encrypt").index(MECHANISMS[n].stage))


def test_the_registries_allow_every_mode_and_every_mechanism() -> None:
    assert {mode for mode, _ in PAIRS} == set(MODES)
    assert {name for _, chain in PAIRS for name in chain} == set(MECHANISMS)


def test_every_mode_declares_registered_messages_and_known_view_fields() -> None:
    for mode in MODES.values():
        for message in mode.messages:
            assert MESSAGE_TYPES[message.TYPE] is message, (mode.name, message)
        assert mode.view_fields <= set(VIEW_FIELDS), mode.name
        assert bool(mode.view_fields) == mode.uploads, mode.name


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyDirectory, BackgroundServer]]:
    root = tmp_path_factory.mktemp("network")
    keys = KeyDirectory(root / "keys")
    keys.init(["device"])
    transport = TransportServer(root / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        yield keys, running


@pytest.mark.parametrize("mode, chain", CLASSIFICATION_PAIRS,
                         ids=[f"{m}-{'+'.join(c)}" for m, c in CLASSIFICATION_PAIRS])
def test_pair_runs_in_process_and_its_model_file_reproduces_it(tiny_llama, tmp_path: Path, mode: str,
                                                                chain: tuple[str, ...]) -> None:
    config = replace(BASE, mode=mode, mechanism=chain, workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert summary.mode == mode and [m["name"] for m in summary.mechanisms] == applied_order(chain)
    if MODES[mode].uploads:
        assert ServerView(summary.server_view).mode() == mode and summary.bytes_up > 0
    else:
        assert summary.server_view is None and summary.bytes_up == summary.bytes_down == 0
        assert not (tmp_path / "run" / "server").exists() and summary.device_train_seconds > 0
    # PAE's cost claim, in the run path itself: one forward per training sample in epoch 1, and none in
    # the rest of training (BASE asks for two epochs), which reads the server's cache, the device's own
    # features or, for ckks_ridge's one closed-form fit, nothing new.
    assert summary.epochs == 2 and summary.device_forwards_epoch1 == summary.n_train
    assert summary.device_forwards_after_epoch1 == 0
    # The deployed model, reloaded from its file, makes the predictions the run scored.
    _, _, evaluate = resolve_data(config)
    rows = predict_texts(summary.model_file, [e.text for e in evaluate], progress=False)
    labels = load_finetuned(summary.model_file).task.labels
    hits = [labels.index(row["label"]) == example.label for row, example in zip(rows, evaluate)]
    assert np.mean(hits) == pytest.approx(summary.metrics["accuracy"])


@pytest.mark.parametrize("mode, chain", GENERATION_PAIRS, ids=[f"{m}-{'+'.join(c)}" for m, c in GENERATION_PAIRS])
def test_generation_pair_runs_in_process_and_its_model_file_generates(tiny_llama, tmp_path: Path, mode: str,
                                                                      chain: tuple[str, ...]) -> None:
    config = replace(BASE, task="generation", train_file=str(alpaca_file(tmp_path, 30)), train_samples=20,
                     eval_samples=4, max_answer_tokens=4, rouge_samples=2, mode=mode, mechanism=chain,
                     workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert summary.mode == mode and [m["name"] for m in summary.mechanisms] == applied_order(chain)
    assert np.isfinite(summary.metrics["eval_answer_nll"]) and np.isfinite(summary.metrics["zero_shot_answer_nll"])
    if MODES[mode].uploads:
        assert ServerView(summary.server_view).mode() == mode and summary.bytes_up > 0
    else:
        assert summary.server_view is None and summary.bytes_up == summary.bytes_down == 0
    rows = predict_texts(summary.model_file, ["Name a color."], progress=False)
    assert isinstance(rows[0]["answer"], str)


@pytest.mark.parametrize("mode, chain", NETWORK_PAIRS, ids=[f"{m}-{'+'.join(c)}" for m, c in NETWORK_PAIRS])
def test_pair_over_tls_matches_the_in_process_run(tiny_llama, network, tmp_path: Path, mode: str,
                                                  chain: tuple[str, ...]) -> None:
    keys, running = network
    config = replace(BASE, mode=mode, mechanism=chain)
    # A device's server state holds one mode: each pair runs as its own (newly trusted) device.
    name = f"device{NETWORK_PAIRS.index((mode, chain))}"
    keys.add_device(name)
    remote = run_training(replace(config, workdir=str(tmp_path / "remote")),
                          NetworkChannel(*running.address, *keys.device_context(name)), progress=False)
    local = run_finetune(replace(config, workdir=str(tmp_path / "local")), progress=False)
    assert remote.mode == local.mode == mode and remote.n_train == local.n_train
    assert remote.metrics["accuracy"] == local.metrics["accuracy"]
    # CKKS encryption is randomised: decrypted corrections differ from run to run in their last digits, so the
    # safeguard's continuous scores agree to rounding while its choice (factor, action) agrees exactly.
    assert remote.safeguard.keys() == local.safeguard.keys()
    for key, value in local.safeguard.items():
        expected = pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value
        assert remote.safeguard[key] == expected, key


class SingleEpochMode(SideNetworkMode):
    """A mode defined outside the package: the side network without cached epochs."""

    name = "single_epoch"
    description = "test mode: φ after the streaming epoch only"

    def train(self, channel, epochs, mechanisms):  # noqa: ANN001, ANN201 (signature of TrainingMode.train)
        return super().train(channel, 1, mechanisms)


def test_a_new_mode_is_one_class_plus_its_registration(tiny_llama, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODES, SingleEpochMode.name, SingleEpochMode())
    config = replace(BASE, mode="single_epoch", mechanism=("gaussian",), epochs=5)
    local = run_finetune(replace(config, workdir=str(tmp_path / "local")), progress=False)
    assert local.mode == "single_epoch" and local.epochs_done == 1
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["device"])
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        remote = run_training(replace(config, workdir=str(tmp_path / "remote")),
                              NetworkChannel(*running.address, *keys.device_context("device")), progress=False)
    assert remote.mode == "single_epoch" and remote.metrics["accuracy"] == local.metrics["accuracy"]


def test_rotation_mask_composes_with_he_ckks_exactly(tiny_llama, tmp_path: Path) -> None:
    """The device folds the secret rotation back into the decrypted ridge head: the deployed
    head equals the one fitted on unrotated Δ (ridge regression is rotation invariant)."""
    config = replace(BASE, mechanism=("he_ckks",), safeguard_fraction=0.0)  # no shrink: compare raw heads
    plain = run_finetune(replace(config, workdir=str(tmp_path / "he")), progress=False)
    rotated = run_finetune(replace(config, mechanism=("rotation_mask", "he_ckks"), workdir=str(tmp_path / "rot")),
                           progress=False)
    he, rot = (load_finetuned(s.model_file).side_network for s in (plain, rotated))
    assert np.abs(he.weights).max() > 1e-3  # a real head, not an all-zero one
    np.testing.assert_allclose(rot.weights, he.weights, atol=1e-4)
    assert rotated.metrics["accuracy"] == plain.metrics["accuracy"]
