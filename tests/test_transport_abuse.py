"""The abuse attacks on a real `secure-assist serve` process (TLS 1.3 on loopback, started here and
stopped by pid), one regression test per weakness found. Each attack is bounded in count and time;
each test failed on the server before the fix. Beyond a limit the server answers an error
naming the limit, logs it, and changes nothing."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.wire.channel import InProcessChannel
from protocol.errors import ProtocolError
from protocol.modes.generation.messages import HeadGram
from protocol.modes.generation.server import GenerationServer
from protocol.modes.ckks_ridge.messages import EncryptedUpload
from protocol.server.limits import MIB, ServerLimits
from protocol.wire.messages import (ErrorReply, FetchWeights, Message, ResentUpload, SideWeights,
                               TrainUntil, UploadAck, encode_message)
from protocol.server.recovery import TRAINING_STATE_FILE
from protocol.server.training_settings import ServerTraining
from protocol.server.side_tuning import SideTuningServer
from protocol.server.transcript import CACHE_FILE, TRANSCRIPT_FILE, ServerView
from protocol.transport.abuse import (connect, exchange, flood_descriptors, hold_partial_frames, hostile_json_messages,
                                      huge_header_message, outcome, synthetic_upload)
from protocol.transport.client import NetworkChannel
from protocol.transport.connections import Connection, ConnectionTable, accept_forever
from protocol.transport.framing import encode_frame
from protocol.transport.identity import KeyDirectory
from protocol.transport.serve_process import ServeProcess
from protocol.modes.ckks_ridge.server import HeHeadServer
from test_transport_recovery import epochs_in_checkpoint

NAMES = ["alice", "bob", "carol", "dave", "eve", "oscar", "trudy", "walter", "peggy"]
TIGHT = ["--max-frame-mib", "8", "--max-partial-frames-mib", "16", "--read-seconds", "3"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    directory = KeyDirectory(tmp_path_factory.mktemp("keys") / "keys")
    directory.init(NAMES)
    return directory


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, keys: KeyDirectory):
    """`serve` with its default limits, started under umask 022 (a common default)."""
    with ServeProcess(tmp_path_factory.mktemp("serve"), keys, umask=0o022) as process:
        yield process


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, keys: KeyDirectory):
    """`serve` with 8 MiB frames, a 16 MiB partial-frame budget and a 3 s read timeout."""
    with ServeProcess(tmp_path_factory.mktemp("tight"), keys, TIGHT) as process:
        yield process


def channel(server: ServeProcess, keys: KeyDirectory, name: str, timeout: float = 30.0,
            reconnect: float = 1.0) -> NetworkChannel:
    context, pinned = keys.device_context(name)
    return NetworkChannel(*server.address, context, pinned, timeout=timeout, reconnect_seconds=reconnect,
                          mode="side_network")


def namespace(server: ServeProcess, keys: KeyDirectory, name: str) -> Path:
    return server.workdir / "devices" / next(fp for fp, e in keys.load_trust().items() if e["name"] == name)


def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*"))} if root.exists() else {}


def test_accept_loop_survives_running_out_of_descriptors(tmp_path: Path, keys: KeyDirectory) -> None:
    """Before the fix: the accept task died on EMFILE and the server never accepted again."""
    with ServeProcess(tmp_path, keys, nofile=128) as server:
        channel(server, keys, "alice").request(synthetic_upload(4, 2, 8))
        flood = flood_descriptors(server.address, 300)
        try:
            fresh = channel(server, keys, "alice", timeout=10.0, reconnect=40.0)
            began = time.monotonic()
            assert isinstance(fresh.request(FetchWeights()), SideWeights)
            assert time.monotonic() - began < 40
        finally:
            for sock in flood:
                sock.close()
        assert server.alive()
        log = server.log()
    # Shed at the connection capacity derived from the descriptor limit (128 - 64), before EMFILE.
    assert "at the connection capacity (64, from the descriptor limit)" in log


def test_accept_errors_are_logged_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    """The EMFILE error path itself: EMFILE sheds the newest unauthenticated connection,
    any other accept error is logged, and accepting resumes."""
    caplog.set_level(logging.INFO, "secure_assist.transport")

    async def scenario() -> tuple[list[str], bool]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        table, accepted = ConnectionTable(), []
        failures = [RuntimeError("unexpected"), OSError(errno.EMFILE, "Too many open files")]
        real_accept = loop.sock_accept

        async def flaky_accept(sock: socket.socket) -> tuple[socket.socket, tuple]:
            if len(accepted) == 1 and failures:  # after the first connection: fail twice, then recover
                raise failures.pop()
            return await real_accept(sock)

        def serve_one(sock: socket.socket, connection: Connection) -> asyncio.Task:
            accepted.append(connection)
            return asyncio.create_task(asyncio.sleep(60))  # a handshake that never finishes

        loop.sock_accept = flaky_accept
        accepting = asyncio.create_task(accept_forever(listener, table, serve_one, capacity=100))
        clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
        while len(accepted) < 2:
            await asyncio.sleep(0.01)
        first_shed = accepted[0].shed
        accepting.cancel()
        for connection in accepted:
            connection.task.cancel()
        await asyncio.sleep(0.05)
        for sock in (*clients, listener):
            sock.close()
        return [c.peer for c in accepted], first_shed

    peers, first_shed = asyncio.run(scenario())
    assert len(peers) == 2 and first_shed  # EMFILE shed the one unauthenticated connection
    messages = [r.getMessage() for r in caplog.records]
    assert any("accept failed ([Errno 24] Too many open files)" in m and "shed the 1 newest" in m for m in messages)
    assert any("accept failed (unexpected)" in m for m in messages)


def test_zero_sample_and_oversized_uploads_are_refused(serve: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: a 288-byte zero-sample upload of width 1,000,000 sized a side network of gigabytes."""
    rss = serve.rss()
    attacks = {"zero samples": synthetic_upload(0, 1, 1_000_000), "max_width=4096": synthetic_upload(1, 1, 100_000),
               "max_layers=64": synthetic_upload(1, 65, 8), "max_classes=64": synthetic_upload(1, 2, 8, classes=65)}
    assert len(encode_message(attacks["zero samples"])) < 400
    for expected, upload in attacks.items():
        link = connect(serve.address, keys, "eve")
        reply = exchange(link, encode_message(upload))
        link.close()
        assert isinstance(reply, ErrorReply) and expected in reply.reason, reply
        assert expected in serve.log()
    assert files(namespace(serve, keys, "eve")) == {}
    assert serve.rss() - rss < 64 * MIB


def test_training_is_bounded_and_sigterm_stops_it_within_10_s(tmp_path: Path, keys: KeyDirectory) -> None:
    """Before the fix: TrainUntil(10^9) ran on after the device left, and SIGTERM did not stop the server."""
    server = ServeProcess(tmp_path, keys, ["--rank", "4", "--checkpoint-seconds", "0.001"]).start()  # watch epochs
    try:
        mallory = channel(server, keys, "dave", timeout=20.0)
        mallory.request(synthetic_upload(64, 2, 8, seed=1))
        with pytest.raises(ProtocolError, match="max_epochs=1000"):
            mallory.request(TrainUntil(epochs_total=10**9))
        bob = channel(server, keys, "bob", timeout=60.0)
        for seed in range(8):
            bob.request(synthetic_upload(128, 2, 8, seed=10 + seed))
        worker = threading.Thread(target=_request_quietly, args=(bob, TrainUntil(epochs_total=1000)), daemon=True)
        worker.start()
        checkpoint = namespace(server, keys, "bob") / TRAINING_STATE_FILE
        deadline = time.monotonic() + 60
        while epochs_in_checkpoint(checkpoint) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 3 <= epochs_in_checkpoint(checkpoint) < 1000  # mid-training
        seconds = server.stop(timeout=10.0)
        worker.join(timeout=30)
    finally:
        server.kill()
    assert seconds is not None and seconds <= 10.0, "serve did not stop within 10 s of SIGTERM"
    assert server.process.returncode == 0 and "signal received" in server.log()
    assert epochs_in_checkpoint(checkpoint) < 1000


def test_half_sent_frames_hold_at_most_the_budget(tight: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: 16 connections each holding 60 MB of a declared 64 MB frame held +960 MB for 300 s.

    Here two devices open five connections each (the limit is four) and send 7.5 of a declared
    8 MiB; the budget is 16 MiB. An honest device's request meanwhile is served at once. The
    baseline is taken after one honest request, so that what serving costs once is not counted."""
    assert channel(tight, keys, "carol").request(synthetic_upload(4, 2, 8)) == UploadAck(stored=4, duplicates=0)
    baseline, peak, running = tight.rss(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], tight.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    links: list = []
    attackers = [threading.Thread(target=lambda n=n: links.extend(hold_partial_frames(
        tight.address, keys, n, 5, 8 * MIB, int(7.5 * MIB)))) for n in ("oscar", "walter")]
    for thread in attackers:
        thread.start()
    time.sleep(1.0)
    began = time.monotonic()
    assert channel(tight, keys, "carol").request(synthetic_upload(4, 2, 8, seed=1)) == UploadAck(stored=4, duplicates=0)
    honest_seconds = time.monotonic() - began
    for thread in attackers:
        thread.join(timeout=60)
    outcomes = [outcome(link) for link in links]
    running[0] = False
    sampler.join()
    for link in links:
        link.close()
    log = tight.log()
    assert peak[0] - baseline < 48 * MIB, f"server grew by {(peak[0] - baseline) / MIB:.0f} MiB"
    assert honest_seconds < 5.0
    assert len(outcomes) == 10 and all(not o.startswith("answered") for o in outcomes), outcomes
    assert log.count("max_connections_per_device=4") >= 2
    assert "max_partial_frames_mib=16" in log and "read_seconds=3" in log


def test_resent_uploads_are_recorded_by_id_and_digest(tight: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: 10 re-sends of a 10.7 MB upload added 107 MB of transcript; the cache did not change."""
    bob = channel(tight, keys, "bob")
    upload = synthetic_upload(64, 2, 4096, seed=5)  # 1 MiB
    assert bob.request(upload) == UploadAck(stored=64, duplicates=0)
    transcript = namespace(tight, keys, "bob") / TRANSCRIPT_FILE
    before = transcript.stat().st_size
    for _ in range(10):
        assert bob.request(upload) == UploadAck(stored=0, duplicates=64)
    assert transcript.stat().st_size - before < 10 * 4096
    records = [r for r in ServerView(transcript.parent).messages() if isinstance(r.message, ResentUpload)]
    assert len(records) == 10 and all(len(r.message.sha256) == 64 for r in records)
    assert {r.size for r in records} == {len(encode_message(upload))}  # the bytes received are still counted


def test_decoding_a_huge_malformed_frame_delays_no_other_device(serve: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: a 63 MB malformed frame was decoded on the event loop and delayed others by 2.1 s."""
    carol = channel(serve, keys, "carol")
    carol.request(synthetic_upload(4, 2, 8, seed=6))
    replies: list = []
    payload = huge_header_message(60 * MIB)  # built first: building it holds this process's GIL
    link = connect(serve.address, keys, "peggy", timeout=60.0)

    def attack() -> None:
        replies.append(exchange(link, payload))
        link.close()

    attacker = threading.Thread(target=attack)
    attacker.start()
    slowest = 0.0
    while attacker.is_alive():
        began = time.monotonic()
        assert isinstance(carol.request(FetchWeights()), SideWeights)
        slowest = max(slowest, time.monotonic() - began)
    attacker.join()
    assert slowest < 1.0, f"another device waited {slowest:.2f} s"
    assert isinstance(replies[0], ErrorReply) and "header of" in replies[0].reason


def test_malformed_metadata_is_answered_with_an_error(serve: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: a 5,000-digit integer or 100,000-deep JSON got no reply, only a late task exception."""
    for name, payload in hostile_json_messages().items():
        link = connect(serve.address, keys, "dave")
        link.send(encode_frame(0, payload))
        reply = outcome(link)
        link.close()
        assert "invalid message" in reply, (name, reply)
    time.sleep(0.2)
    assert "Task exception was never retrieved" not in serve.log() and "Traceback" not in serve.log()


def test_revocation_reaches_open_connections(serve: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: `keys revoke` did not reach a connection that was already open."""
    trudy = channel(serve, keys, "trudy")
    assert trudy.request(synthetic_upload(4, 2, 8, seed=8)) == UploadAck(stored=4, duplicates=0)
    before = files(namespace(serve, keys, "trudy"))
    keys.revoke("trudy")
    with pytest.raises(ProtocolError, match="revoked"):
        trudy.request(synthetic_upload(4, 2, 8, seed=9))
    assert "rejected: device certificate revoked" in serve.log()
    assert files(namespace(serve, keys, "trudy")) == before


def test_server_state_is_private_under_umask_022(serve: ServeProcess, keys: KeyDirectory) -> None:
    """Before the fix: transcript.log and cache.sqlite (activations and Δ) were 0644 in 0755 directories."""
    alice = channel(serve, keys, "alice")
    alice.request(synthetic_upload(8, 2, 8, seed=11))
    alice.request(TrainUntil(epochs_total=2))
    alice.request(FetchWeights())
    paths = [serve.workdir, *serve.workdir.rglob("*")]
    names = {p.name for p in paths}
    assert {TRANSCRIPT_FILE, CACHE_FILE, CACHE_FILE + "-wal", TRAINING_STATE_FILE} <= names
    modes = {str(p.relative_to(serve.root)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    assert all(mode == (0o700 if (serve.root / p).is_dir() else 0o600) for p, mode in modes.items()), modes


def test_devices_never_seed_the_global_rng(tmp_path: Path) -> None:
    """Before the fix: `torch.manual_seed` from a device's thread let one device's timing change
    another device's initial weights; the server must draw only from its own generators."""
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    server = SideTuningServer(tmp_path / "server", ServerTraining(rank=4))
    channel = InProcessChannel(server)
    channel.request(synthetic_upload(40, 2, 8, seed=12))
    channel.request(TrainUntil(epochs_total=3))
    down = server.network.down.detach().clone()
    server.close()
    assert torch.equal(torch.get_rng_state(), state)
    other = SideTuningServer(tmp_path / "other", ServerTraining(rank=4))
    torch.manual_seed(99)  # whatever another thread did to the global RNG
    InProcessChannel(other).request(synthetic_upload(40, 2, 8, seed=12))
    InProcessChannel(other).request(TrainUntil(epochs_total=3))
    assert torch.equal(other.network.down, down)
    other.close()


def _request_quietly(device: NetworkChannel, message: Message) -> None:
    """A request whose outcome does not matter (the server is stopped under it)."""
    try:
        device.request(message)
    except ProtocolError:
        pass


def test_the_ckks_head_server_takes_the_same_limits(tmp_path: Path) -> None:
    """The limits that do not depend on the role are enforced for every endpoint, not only PAE's."""
    server = HeHeadServer(tmp_path, limits=ServerLimits(max_samples_per_device=3, max_width=8))
    channel = InProcessChannel(server)

    def encrypted(samples: int, width: int) -> EncryptedUpload:
        rng = np.random.default_rng(samples)
        return EncryptedUpload(sample_ids=rng.integers(0, 256, (samples, 16), dtype=np.uint8),
                               activations=np.ones((samples, 1, width), np.float32),
                               ciphertexts=np.zeros(4, np.uint8), ciphertext_sizes=np.array([2, 2], np.int64),
                               public_context=np.zeros(4, np.uint8), layers=(1,))

    for upload, expected in ((encrypted(0, 4), "zero samples"), (encrypted(1, 9), "max_width=8"),
                             (encrypted(4, 4), "max_samples_per_device=3")):
        with pytest.raises(ProtocolError, match=expected):
            channel.request(upload)
    server.close()
    assert (tmp_path / TRANSCRIPT_FILE).stat().st_size == 0  # refused before anything was recorded


def test_samples_held_are_bounded_across_uploads(tmp_path: Path) -> None:
    """max_samples_per_device bounds what a device has stored in total, not only one upload: uploads
    each under the limit are refused once their sum would pass it; re-sent ids cost nothing."""
    server = SideTuningServer(tmp_path, ServerTraining(rank=4), limits=ServerLimits(max_samples_per_device=6))
    channel = InProcessChannel(server)
    first = synthetic_upload(4, 2, 8, seed=21)
    assert channel.request(first) == UploadAck(stored=4, duplicates=0)
    transcript = (tmp_path / TRANSCRIPT_FILE).stat().st_size
    with pytest.raises(ProtocolError, match="max_samples_per_device=6"):
        channel.request(synthetic_upload(4, 2, 8, seed=22))
    assert len(server.cache) == 4 and (tmp_path / TRANSCRIPT_FILE).stat().st_size == transcript  # nothing changed
    assert channel.request(first) == UploadAck(stored=0, duplicates=4)
    assert channel.request(synthetic_upload(2, 2, 8, seed=23)) == UploadAck(stored=2, duplicates=0)
    with pytest.raises(ProtocolError, match="7 samples stored"):
        channel.request(synthetic_upload(1, 2, 8, seed=24))
    server.close()


def test_training_epochs_are_bounded_in_process(tmp_path: Path) -> None:
    """max_epochs bounds the total a training request would reach, before any epoch runs; a request
    within it trains to exactly that total."""
    server = SideTuningServer(tmp_path, ServerTraining(rank=4), limits=ServerLimits(max_epochs=3))
    channel = InProcessChannel(server)
    channel.request(synthetic_upload(4, 2, 8, seed=25))
    with pytest.raises(ProtocolError, match="max_epochs=3"):
        channel.request(TrainUntil(epochs_total=4))
    assert server.epochs_done == 0  # refused before the trainer ran an epoch
    assert channel.request(TrainUntil(epochs_total=3)).epochs_done == 3
    server.close()


def test_a_device_at_its_connection_limit_can_still_reconnect(serve: ServeProcess, keys: KeyDirectory) -> None:
    """The per-device limit must not lock out a device whose old links died without a FIN: a new
    connection replaces the device's oldest idle one."""
    stale = [connect(serve.address, keys, "oscar") for _ in range(4)]
    time.sleep(0.5)  # all four authenticated and idle on the server
    assert channel(serve, keys, "oscar").request(synthetic_upload(4, 2, 8, seed=13)).stored == 4
    assert outcome(stale[0]).startswith("closed")
    for link in stale:
        link.close()
    assert "closing the device's oldest connection" in serve.log() and "max_connections_per_device=4" in serve.log()


def test_the_generation_server_bounds_the_head_gram_width(tmp_path: Path) -> None:
    """The head's Gram matrix is d×d and eigen-decomposed: a peer cannot send one wider than max_width."""
    server = GenerationServer(tmp_path, limits=ServerLimits(max_width=8))
    channel = InProcessChannel(server)
    with pytest.raises(ProtocolError, match="max_width=8"):
        channel.request(HeadGram(gram=np.eye(9, dtype=np.float32)))
    assert channel.request(HeadGram(gram=np.eye(8, dtype=np.float32))) == UploadAck(stored=1, duplicates=0)
    server.close()
