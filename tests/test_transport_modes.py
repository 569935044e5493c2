"""Every server mode over TLS: the device names its mode first, `serve` hosts each one,
refuses modes it does not offer, and the CKKS mode runs end to end over the network
with the same result as in process (tiny-llama)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.wire.channel import InProcessChannel
from protocol.errors import ProtocolError, UserInputError
from protocol.wire.messages import FetchWeights, Hello, ModeAccepted, Upload, expect
from protocol.model.model_io import load_finetuned
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import INBOUND, OUTBOUND, ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from protocol.modes.host import ModeHost, host_factory
from secure_assist.training.run import run_training

HE = FinetuneConfig(model="tiny-llama", train_samples=48, eval_samples=16, epochs=1, mechanism=("he_ckks",),
                    he_features=4, mechanism_seed=0)


def test_ckks_mode_over_tls_equals_the_in_process_run(tiny_llama, tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["alice"])
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("alice")
        remote = run_training(replace(HE, workdir=str(tmp_path / "remote")),
                              NetworkChannel(*running.address, context, pinned), progress=False).to_json()
    local = run_finetune(replace(HE, workdir=str(tmp_path / "local")), progress=False)
    assert remote["mode"] == local.mode == "ckks_ridge" and remote["head"] == "ridge_head"
    assert remote["accuracy"] == local.metrics["accuracy"] and remote["n_train"] == local.n_train
    remote_head = load_finetuned(tmp_path / "remote" / "model.safetensors").side_network
    local_head = load_finetuned(tmp_path / "local" / "model.safetensors").side_network
    # CKKS encryption is randomized: the decrypted weights agree to the scheme's precision.
    np.testing.assert_allclose(remote_head.weights, local_head.weights, atol=1e-4)
    # Bytes are counted on the wire (TLS included), so they exceed the bytes of the messages the server
    # recorded. (Not the in-process run's: SEAL compresses ciphertexts, whose size varies with the randomness.)
    view = ServerView(transport.workdir(next(iter(keys.load_trust()))))
    received = sum(r.size for r in view.messages() if r.direction == INBOUND)
    sent = sum(r.size for r in view.messages() if r.direction == OUTBOUND)
    assert remote["bytes_up"] > received > 0 and remote["bytes_down"] > sent > 0
    assert view.mode() == "ckks_ridge" and not view.received(Upload)


def test_first_request_must_name_an_offered_mode(tmp_path: Path) -> None:
    host = ModeHost(tmp_path / "server", ("side_network",))
    channel = InProcessChannel(host)
    with pytest.raises(ProtocolError, match="first request must be 'hello'"):
        channel.request(FetchWeights())
    with pytest.raises(ProtocolError, match="does not offer training mode 'ckks_ridge'"):
        channel.request(Hello(mode="ckks_ridge"))
    assert not (tmp_path / "server").exists()  # refusals store nothing
    assert expect(channel.request(Hello(mode="side_network")), ModeAccepted).mode == "side_network"
    host.close()
    # The device's state now belongs to side_network: another mode is refused, even after a restart.
    reopened = InProcessChannel(ModeHost(tmp_path / "server", ("side_network", "ckks_ridge")))
    with pytest.raises(ProtocolError, match="holds training mode 'side_network'"):
        reopened.request(Hello(mode="ckks_ridge"))


def test_device_local_is_refused_by_the_device_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1 and no key directory exists: a refusal proves nothing was attempted.
    code = main(["device", "--server", "127.0.0.1:1", "--keys", str(tmp_path / "keys"), "--name", "alice",
                 "--model", "tiny-llama", "--mode", "device_local", "--workdir", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "device_local" in error and "finetune" in error
    assert not (tmp_path / "run").exists()


def test_run_training_refuses_device_local_over_a_channel_before_sending(tmp_path: Path) -> None:
    # The run path's own guard, below the CLI's: given a channel, a mode that uploads nothing must not
    # talk to it at all. The host here would even accept device_local, so only the guard stops it.
    host = ModeHost(tmp_path / "elsewhere", ("device_local",))
    channel = InProcessChannel(host)
    config = FinetuneConfig(model="tiny-llama", train_samples=16, eval_samples=8, epochs=1, mode="device_local",
                            workdir=str(tmp_path / "run"))
    with pytest.raises(UserInputError, match="'device_local' uploads nothing"):
        run_training(config, channel, progress=False)
    host.close()
    assert channel.bytes_up == channel.bytes_down == 0
    assert not (tmp_path / "elsewhere").exists()


def test_serve_refuses_to_offer_a_mode_that_uploads_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--keys", str(tmp_path / "keys"), "--workdir", str(tmp_path / "srv"),
                 "--modes", "side_network,device_local"])
    assert code == 2 and "device_local" in capsys.readouterr().err
