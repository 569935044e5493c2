"""`secure-assist device` applies the configured mechanisms on the network path (tiny-llama over
TLS) and refuses to resume a randomized upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol.errors import UserInputError
from protocol.wire.messages import Upload
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from secure_assist.config import FinetuneConfig
from protocol.modes.host import host_factory
from secure_assist.training.run import run_training


def test_network_run_applies_the_mechanism_chain(tiny_llama, tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["alice"])
    config = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=8, epochs=2, device_batch_size=8,
                            mechanism=("gaussian", "int8_activations"), epsilon=1.0, mechanism_seed=0,
                            workdir=str(tmp_path / "device"))
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("alice")
        summary = run_training(config, NetworkChannel(*running.address, context, pinned), progress=False).to_json()
        with pytest.raises(UserInputError, match="randomized mechanism"):
            run_training(config, NetworkChannel(*running.address, context, pinned), progress=False)
    assert [m["name"] for m in summary["mechanisms"]] == ["gaussian", "int8_activations"]
    assert summary["n_train"] == 30 and summary["safeguard"]["validation_samples"] == 10  # the floor, not 20% (8)
    fingerprint = next(iter(keys.load_trust()))
    uploads = ServerView(transport.workdir(fingerprint)).received(Upload)
    delta = np.concatenate([u.delta for u in uploads])
    acts = np.concatenate([u.activations for u in uploads]).astype(np.float32)
    assert len(delta) == 30
    # A clean Δ = onehot(y) - p_b sums to 0 per row; the Gaussian's noise does not.
    assert (np.abs(delta.sum(axis=1)) > 1e-3).mean() > 0.9
    # int8_activations: every layer vector sits on its own grid of 255 levels (up to float16 rounding).
    levels = acts / (np.abs(acts).max(axis=-1, keepdims=True) / 127)
    assert np.abs(levels - np.round(levels)).max() < 0.1
