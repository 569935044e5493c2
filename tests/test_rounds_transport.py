"""Boosting rounds against `serve` (`secure-assist device --rounds R`): each round's Hello names it, the server
opens that round's role in the device's namespace (`round<k>/`), the run gives the same model as in process,
a round's disk use counts against the device's whole quota, the round a Hello names is bounded, and a round
begun over the network is not run twice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError, UserInputError
from protocol.model.model_io import load_finetuned
from protocol.modes.host import ModeHost, host_factory
from protocol.server.limits import MIB, ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.abuse import synthetic_upload
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel
from protocol.transport.identity import KeyDirectory
from protocol.transport.server import TransportServer
from protocol.wire.channel import InProcessChannel
from protocol.wire.messages import MAX_ROUNDS, Hello, Upload, decode_message, encode_message
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.training.run import run_training

CONFIG = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=16, epochs=2, rank=4, mechanism_seed=0,
                        rounds=2, safeguard_fraction=0.0)


def test_rounds_over_tls_equal_the_in_process_rounds_and_are_not_run_twice(tiny_llama, tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init(["alice"])
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4), endpoint_factory=host_factory())
    remote_config = replace(CONFIG, workdir=str(tmp_path / "remote"))
    with BackgroundServer(transport) as running:
        context, pinned = keys.device_context("alice")
        remote = run_training(remote_config, NetworkChannel(*running.address, context, pinned),
                              progress=False).to_json()
        # Run again on the same work directory: round 1 resumes, round 2 (fresh ids) is refused, not re-sent.
        with pytest.raises(UserInputError, match="already began boosting round 2 against this server"):
            run_training(remote_config, NetworkChannel(*running.address, context, pinned), progress=False)
    local = run_finetune(replace(CONFIG, workdir=str(tmp_path / "local")), progress=False).to_json()
    assert [r["round"] for r in remote["rounds"]] == [1, 2] and remote["accuracy"] == local["accuracy"]
    assert all(r["server_view"] is None and r["server_seconds"] is None for r in remote["rounds"])
    assert remote["server_seconds"] is None and remote["rounds"][1]["bytes_up"] > 0
    remote_parts = load_finetuned(remote["model_file"]).side_network.parts
    local_parts = load_finetuned(local["model_file"]).side_network.parts
    for remote_part, local_part in zip(remote_parts, local_parts, strict=True):
        for (name, value), (_, expected) in zip(remote_part.state_dict().items(), local_part.state_dict().items()):
            np.testing.assert_array_equal(value.numpy(), expected.numpy(), err_msg=name)
    namespace = transport.workdir(next(iter(keys.load_trust())))
    first, second = ServerView(namespace), ServerView(namespace / "round2")
    assert first.mode() == second.mode() == "side_network"
    stored = {len(view.received(Upload)) > 0 for view in (first, second)}
    assert stored == {True} and [m.round for m in second.received(Hello)][:1] == [2]
    assert not (namespace / "round3").exists()


def test_every_round_counts_against_the_devices_whole_disk_quota(tmp_path: Path) -> None:
    host = ModeHost(tmp_path, ("side_network",), ServerTraining(rank=4), limits=ServerLimits(max_device_disk_mib=2.0))
    channel = InProcessChannel(host)
    channel.request(Hello(mode="side_network", round=2))
    assert channel.request(synthetic_upload(64, 2, 512, seed=1)).stored == 64  # 128 KiB: within the quota
    # What the device made the server keep in another round (here: round 3's, 2 MiB) is in the same quota.
    (tmp_path / "round3").mkdir()
    (tmp_path / "round3" / "held").write_bytes(bytes(2 * MIB))
    with pytest.raises(ProtocolError, match="--max-device-disk-mib"):
        channel.request(synthetic_upload(64, 2, 512, seed=2))
    host.close()


def test_a_new_round_closes_the_last_and_the_same_round_resumes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    host = ModeHost(tmp_path, ("side_network", "generation"), ServerTraining(rank=4))
    channel = InProcessChannel(host)
    channel.request(Hello(mode="side_network"))
    first, closed = host.endpoint, []
    monkeypatch.setattr(first, "close", lambda: closed.append(first))
    channel.request(Hello(mode="side_network", round=3))
    assert host.endpoint is not first and host.round == 3 and host.endpoint.workdir == tmp_path / "round3"
    assert closed == [first]  # one round's files and memory are held at a time
    third = host.endpoint
    channel.request(Hello(mode="side_network", round=3))  # a reconnecting device: the same role answers
    assert host.endpoint is third
    with pytest.raises(ProtocolError, match="holds training mode 'side_network', not 'generation'"):
        channel.request(Hello(mode="generation", round=2))
    assert host.endpoint is third
    host.close()


@pytest.mark.parametrize("meta, reason", [
    ({"round": MAX_ROUNDS + 1}, f"field 'round' must be at most {MAX_ROUNDS}"),
    ({"round": 1}, "field 'round' must be an integer >= 2"),  # round 1 is the field left off
    ({"round": 0}, "field 'round' must be an integer >= 2"),
    ({"round": "2"}, "field 'round' must be an integer >= 2"),
    ({"round": True}, "field 'round' must be an integer >= 2"),
])
def test_the_round_a_hello_names_is_bounded(meta: dict, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Hello.from_parts({}, {"mode": "side_network", **meta})


def test_a_hello_carries_its_round_and_round_one_as_before() -> None:
    assert decode_message(encode_message(Hello(mode="generation", round=MAX_ROUNDS))) == Hello("generation", "",
                                                                                               MAX_ROUNDS)
    assert Hello(mode="generation").parts() == ({}, {"mode": "generation"})  # the wire form of earlier devices


def test_a_pooled_device_names_no_round(tmp_path: Path) -> None:
    host = ModeHost(tmp_path, ("pooled",), ServerTraining(rank=4), pools=object())
    with pytest.raises(ProtocolError, match="pool 'p' trains once: a pooled device names no boosting round"):
        InProcessChannel(host).request(Hello(mode="pooled", pool="p", round=2))
    assert not any(tmp_path.iterdir())
