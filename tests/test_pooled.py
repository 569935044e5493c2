"""Pooled PAE in process (protocol.modes.pooled, secure_assist.devices.pooled_run): one side network
trained on the union of a pool's caches once its quorum is in, the same whatever the order devices
arrive in; membership, revocation, the pool's bounds, and that a member reads nothing of another.

Real endpoints with random uploads (a tiny network, rank 4) keep these fast; the end-to-end runs with
tiny-llama are tests/test_pooled_transport.py and the `pooled` rows of tests/test_modes_contract.py."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError, UserInputError
from protocol.modes.host import ModeHost
from protocol.modes.pooled.directory import PoolDirectory, parse_pool
from protocol.modes.pooled.messages import PoolPending
from protocol.modes.registry import MODES
from protocol.server.limits import ServerLimits
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.abuse import synthetic_upload
from protocol.transport.allow_list import KeyPoolAdmission
from protocol.transport.identity import KeyDirectory
from protocol.wire.channel import InProcessChannel
from protocol.wire.messages import (
    FetchWeights, Hello, ModeAccepted, RecordedDigest, ResentUpload, SideWeights, TrainReport, TrainUntil, Upload,
    UploadAck, expect,
)
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.devices.pooled_run import run_pooled

TRAINING = ServerTraining(rank=4, batch_size=8)
POOLED = MODES["pooled"]


def member(root: Path, directory: PoolDirectory, name: str, pool: str = "P",
           limits: ServerLimits | None = None) -> tuple[ModeHost, InProcessChannel]:
    """A device's server role in the pool's server, opened with its Hello."""
    host = ModeHost(root / "devices" / name, ("pooled", "side_network"), TRAINING, limits=limits, pools=directory)
    channel = InProcessChannel(host)
    expect(channel.request(Hello(mode="pooled", pool=pool)), ModeAccepted)
    return host, channel


def uploads(seed: int, batches: int = 2, samples: int = 12) -> list[Upload]:
    """A device's uploads: its own random samples (4 layers x 16), in its own order."""
    return [synthetic_upload(samples, 4, 16, seed=100 * seed + b) for b in range(batches)]


def pool_weights(root: Path, order: list[int], interleave: bool) -> dict[str, np.ndarray]:
    """Three members upload (one after another, or batch by batch in turn) and ask for training in
    `order`; the weights every member fetches (they agree)."""
    directory = PoolDirectory(root, root / "devices", {"P": 3}, TRAINING)
    members = {i: member(root, directory, f"device-{i}") for i in order}
    batches = {i: uploads(i) for i in order}
    if interleave:
        for b in range(2):
            for i in order:
                members[i][1].request(batches[i][b])
    else:
        for i in order:
            for upload in batches[i]:
                members[i][1].request(upload)
    replies = [members[i][1].request(TrainUntil(epochs_total=3)) for i in order]
    assert [type(r) for r in replies] == [PoolPending, PoolPending, TrainReport]
    assert (replies[0].ready, replies[0].quorum, replies[1].ready) == (1, 3, 2)
    assert replies[-1].samples == 72 and replies[-1].epochs_done == 3
    fetched = [expect(members[i][1].request(FetchWeights()), SideWeights).state for i in order]
    for state in fetched[1:]:
        assert all(np.array_equal(state[k], fetched[0][k]) for k in fetched[0])
    for host, _ in members.values():
        host.close()
    return fetched[0]


def test_the_pool_trains_the_same_network_whatever_the_arrival_order(tmp_path: Path) -> None:
    first = pool_weights(tmp_path / "a", [0, 1, 2], interleave=False)
    second = pool_weights(tmp_path / "b", [2, 0, 1], interleave=True)
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    # A different member set (a pool without device-2) trains another network: the test can fail.
    directory = PoolDirectory(tmp_path / "c", tmp_path / "c" / "devices", {"P": 2}, TRAINING)
    members = [member(tmp_path / "c", directory, f"device-{i}") for i in (0, 1)]
    for i, (_, channel) in enumerate(members):
        for upload in uploads(i):
            channel.request(upload)
    reports = [channel.request(TrainUntil(epochs_total=3)) for _, channel in members]
    other = expect(members[0][1].request(FetchWeights()), SideWeights).state
    assert reports[-1].samples == 48 and not np.array_equal(other["gate_logits"], first["gate_logits"])


def test_a_member_waits_for_the_quorum_within_the_server_bound(tmp_path: Path) -> None:
    limits = ServerLimits(pool_wait_seconds=0.3)
    directory = PoolDirectory(tmp_path, tmp_path / "devices", {"P": 2}, TRAINING, limits)
    _, alone = member(tmp_path, directory, "device-0", limits=limits)
    alone.request(uploads(0)[0])
    with pytest.raises(ProtocolError, match="has not trained with this member"):
        alone.request(FetchWeights())
    _, waiting = member(tmp_path, directory, "device-1", limits=limits)
    waiting.request(uploads(1)[0])
    pending = waiting.request(TrainUntil(epochs_total=2))
    assert isinstance(pending, PoolPending) and (pending.ready, pending.quorum) == (1, 2)
    # The device polls as told, and stops once the server refuses to keep it waiting.
    began = time.monotonic()
    with pytest.raises(ProtocolError, match="pool_wait_seconds"):
        POOLED.training_report(waiting, 2)
    assert time.monotonic() - began < 5


def test_a_restarted_server_recovers_the_pool_from_its_members_namespaces(tmp_path: Path) -> None:
    directory = PoolDirectory(tmp_path, tmp_path / "devices", {"P": 2}, TRAINING)
    hosts = [member(tmp_path, directory, f"device-{i}") for i in (0, 1)]
    for i, (_, channel) in enumerate(hosts):
        channel.request(uploads(i)[0])
    assert isinstance(hosts[0][1].request(TrainUntil(epochs_total=2)), PoolPending)
    for host, _ in hosts:
        host.close()
    # A new server process: device-0 does not come back, device-1 finishes; device-0 counts as ready.
    restarted = PoolDirectory(tmp_path, tmp_path / "devices", {"P": 2}, TRAINING)
    host, channel = member(tmp_path, restarted, "device-1")
    report = expect(channel.request(TrainUntil(epochs_total=2)), TrainReport)
    assert report.samples == 24 and report.epochs_done == 2
    host.close()


def test_the_pool_bounds_members_samples_and_epochs(tmp_path: Path) -> None:
    limits = ServerLimits(max_pool_members=2, max_pool_samples=40, max_epochs=5)
    directory = PoolDirectory(tmp_path, tmp_path / "devices", {"P": 2}, TRAINING, limits)
    hosts = [member(tmp_path, directory, f"device-{i}", limits=limits) for i in (0, 1)]
    third = ModeHost(tmp_path / "devices" / "device-2", ("pooled",), TRAINING, limits=limits, pools=directory)
    with pytest.raises(ProtocolError, match="max_pool_members"):
        InProcessChannel(third).request(Hello(mode="pooled", pool="P"))
    assert not (tmp_path / "devices" / "device-2").exists()  # a refused member stores nothing
    (_, first), (_, second) = hosts
    assert first.request(uploads(0)[0]) == UploadAck(stored=12, duplicates=0)
    assert second.request(synthetic_upload(28, 4, 16, seed=7)) == UploadAck(stored=28, duplicates=0)
    with pytest.raises(ProtocolError, match="max_pool_samples"):
        first.request(uploads(0)[1])  # 12 + 28 + 12 > 40
    with pytest.raises(ProtocolError, match="differ from pool 'P'"):
        second.request(synthetic_upload(4, 3, 16, seed=8))  # another member's shape does not pool
    with pytest.raises(ProtocolError, match="max_epochs"):
        first.request(TrainUntil(epochs_total=6))
    assert isinstance(first.request(TrainUntil(epochs_total=2)), PoolPending)
    with pytest.raises(ProtocolError, match="finished its upload"):
        first.request(synthetic_upload(2, 4, 16, seed=9))
    assert isinstance(second.request(TrainUntil(epochs_total=2)), TrainReport)


def test_membership_comes_from_the_key_directory_and_revoking_drops_samples(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    keys.init([])
    prints = {name: keys.add_device(name, pools=("P",)) for name in ("alice", "bob", "carol")}
    prints["mallory"] = keys.add_device("mallory", pools=("Q",))
    directory = PoolDirectory(tmp_path / "server", tmp_path / "server" / "devices", {"P": 2, "Q": 1}, TRAINING,
                              admission=KeyPoolAdmission(keys))
    for pool, reason in (("P", "does not list it as a member"), ("R", "hosts no pool 'R'")):
        host = ModeHost(tmp_path / "server" / "devices" / prints["mallory"], ("pooled",), TRAINING, pools=directory)
        with pytest.raises(ProtocolError, match=reason):
            InProcessChannel(host).request(Hello(mode="pooled", pool=pool))
    assert not (tmp_path / "server" / "devices").exists()
    channels = {name: member(tmp_path / "server", directory, prints[name])[1] for name in ("alice", "bob", "carol")}
    for seed, channel in enumerate(channels.values()):
        channel.request(uploads(seed)[0])
    reports = [channel.request(TrainUntil(epochs_total=2)) for channel in channels.values()]
    assert isinstance(reports[0], PoolPending) and reports[-1].samples == 36
    before = expect(channels["alice"].request(FetchWeights()), SideWeights).state
    keys.revoke("carol")
    after_report = expect(channels["alice"].request(TrainUntil(epochs_total=2)), TrainReport)
    after = expect(channels["alice"].request(FetchWeights()), SideWeights).state
    assert after_report.samples == 24 and not np.array_equal(after["head.weight"], before["head.weight"])
    with pytest.raises(ProtocolError, match="has not trained with this member"):
        channels["carol"].request(FetchWeights())  # (the transport refuses a revoked device before this)
    # With bob revoked too, one active member is below the quorum of 2: the pool waits, never trains on alice alone.
    keys.revoke("bob")
    pending = channels["alice"].request(TrainUntil(epochs_total=2))
    assert isinstance(pending, PoolPending) and (pending.ready, pending.quorum) == (1, 2)
    with pytest.raises(ProtocolError, match="trained with a member since revoked"):
        channels["alice"].request(FetchWeights())  # the φ trained with bob's samples is not served any more
    # The namespace belongs to pool P for good; a mode without pools refuses a pool name.
    with pytest.raises(ProtocolError, match="pool 'P', not 'Q'"):
        channels["alice"].request(Hello(mode="pooled", pool="Q"))
    fresh = ModeHost(tmp_path / "server" / "devices" / "x", ("side_network",), TRAINING, pools=directory)
    with pytest.raises(ProtocolError, match="takes no pool"):
        InProcessChannel(fresh).request(Hello(mode="side_network", pool="P"))


class RecordingHandler:
    """A device's server role, keeping every reply it sends as bytes."""

    def __init__(self, host: ModeHost) -> None:
        self.host, self.replies = host, []

    def handle_bytes(self, data: bytes) -> bytes:
        self.replies.append(self.host.handle_bytes(data))
        return self.replies[-1]


def test_a_member_reads_nothing_of_another_through_any_message(tmp_path: Path) -> None:
    directory = PoolDirectory(tmp_path, tmp_path / "devices", {"P": 2}, TRAINING)
    _, victim = member(tmp_path, directory, "device-0")
    spy_host, _ = member(tmp_path, directory, "device-1")
    secret = uploads(0, batches=1)[0]
    victim.request(secret)
    marker = secret.activations[0].tobytes()  # 128 bytes only the victim's upload holds
    recorder = RecordingHandler(spy_host)
    spied = InProcessChannel(recorder)
    own = Upload(sample_ids=secret.sample_ids, activations=np.zeros_like(secret.activations),
                 delta=np.zeros_like(secret.delta), layers=secret.layers)
    attempts = [Hello(mode="pooled", pool="P"), FetchWeights(), own, own,
                ResentUpload(sample_ids=secret.sample_ids, sha256="0" * 64, wire_bytes=10),
                RecordedDigest(kind="upload", outcome="refused", sha256="0" * 64, wire_bytes=10),
                TrainUntil(epochs_total=2), FetchWeights()]
    for attempt in attempts:
        try:
            spied.request(attempt)
        except ProtocolError:
            pass
    victim.request(TrainUntil(epochs_total=2))
    assert isinstance(spied.request(FetchWeights()), SideWeights)
    assert len(recorder.replies) == len(attempts) + 1 and not any(marker in r for r in recorder.replies)
    # The spy's forged ids landed in its own namespace; the victim's cache is as it uploaded it.
    _, victim_acts, _ = ServerView(tmp_path / "devices" / "device-0").cache_contents()
    _, spy_acts, _ = ServerView(tmp_path / "devices" / "device-1").cache_contents()
    assert np.array_equal(victim_acts, secret.activations) and not spy_acts.any()
    for path in (tmp_path / "devices" / "device-1").iterdir():
        assert marker not in path.read_bytes(), path.name


@pytest.mark.parametrize("mechanism, reason", [("he_ckks", "multi-key"), ("activation_rotation", "own secret"),
                                               ("rotation_mask", "own secret")])
def test_mechanisms_a_shared_network_cannot_serve_are_refused_before_any_work(tmp_path: Path, mechanism: str,
                                                                              reason: str) -> None:
    base = FinetuneConfig(model="tiny-llama", train_samples=16, devices=2, mechanism=(mechanism,), he_features=4)
    configs = [replace(base, device_index=i, workdir=str(tmp_path / f"d{i}")) for i in range(2)]
    with pytest.raises(UserInputError, match=f"refuses mechanism '{mechanism}'.*{reason}"):
        run_pooled(configs, progress=False)
    assert not list(tmp_path.iterdir())


def test_pool_specifications_are_checked() -> None:
    assert parse_pool("clinic-a:5") == ("clinic-a", 5)
    for bad in ("clinic", "clinic:0", ":3", "a b:2"):
        with pytest.raises(UserInputError, match="NAME:QUORUM"):
            parse_pool(bad)
    for mode, pool in ((None, "clinics"), ("pooled", "a b")):
        with pytest.raises(UserInputError, match="needs --mode pooled"):
            FinetuneConfig(mode=mode, pool=pool)
    with pytest.raises(UserInputError, match="max-pool-members"):
        PoolDirectory(Path("unused"), Path("unused"), {"P": 9}, TRAINING, ServerLimits(max_pool_members=8))


def test_the_commands_host_pools_and_list_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(tmp_path / "keys")
    assert main(["keys", "init", "--dir", keys, "--devices", "phone1"]) == 0
    assert main(["keys", "add-device", "phone2", "--pool", "clinics", "--dir", keys]) == 0
    capsys.readouterr()
    assert main(["keys", "show", "--dir", keys]) == 0
    shown = capsys.readouterr().out
    assert '"pools": [\n        "clinics"\n      ]' in shown and '"pools": []' in shown
    for flags, reason in ((["--pool", "clinics"], "NAME:QUORUM"), (["--pool", "a:1", "--pool", "a:2"], "named twice"),
                          (["--pool", "a:1", "--modes", "side_network"], "offer it in --modes")):
        assert main(["serve", "--keys", keys, "--workdir", str(tmp_path / "srv"), *flags]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error:") and reason in error and error.count("\n") == 1
    assert not (tmp_path / "srv").exists()
