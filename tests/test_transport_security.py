"""Attacks on the network transport: each is rejected, logged with its reason, and changes nothing."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import ProtocolError
from protocol.wire.messages import (ErrorReply, FetchWeights, ResentUpload, SideWeights, Upload, UploadAck, decode_message,
                               encode_message)
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import ServerView
from protocol.transport.background import BackgroundServer
from protocol.transport.client import NetworkChannel, _Link
from protocol.transport.framing import HEADER, HEADER_BYTES, MAGIC, FRAME_VERSION, encode_frame, parse_header
from protocol.transport.identity import KeyDirectory, make_identity
from protocol.server.limits import ServerLimits
from protocol.transport.server import TransportServer

MAX_FRAME = 256 * 1024


def make_upload(seed: int, n: int = 4, ids: np.ndarray | None = None) -> Upload:
    rng = np.random.default_rng(seed)
    return Upload(sample_ids=ids if ids is not None else rng.integers(0, 256, (n, 16), dtype=np.uint8),
                  activations=rng.standard_normal((n, 2, 8)).astype(np.float16),
                  delta=rng.standard_normal((n, 2)).astype(np.float32), layers=(1, 2))


@pytest.fixture()
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    directory.init(["alice", "mallory"])
    return directory


@pytest.fixture()
def server(tmp_path: Path, keys: KeyDirectory):
    transport = TransportServer(tmp_path / "server", keys, ServerTraining(rank=4),
                                ServerLimits(max_frame_mib=MAX_FRAME / 2**20, idle_seconds=5.0))
    with BackgroundServer(transport) as running:
        yield running


def channel(running: BackgroundServer, keys: KeyDirectory, name: str) -> NetworkChannel:
    context, pinned = keys.device_context(name)
    return NetworkChannel(*running.address, context, pinned, max_frame_bytes=MAX_FRAME, reconnect_seconds=1.0)


def link(running: BackgroundServer, keys: KeyDirectory, name: str) -> _Link:
    context, pinned = keys.device_context(name)
    return _Link(*running.address, context, pinned, timeout=5.0)


def state_of(running: BackgroundServer, keys: KeyDirectory, name: str) -> dict[str, bytes]:
    """Every file in the device's namespace (empty when it has none)."""
    digest = next(fp for fp, e in keys.load_trust().items() if e["name"] == name)
    root = running.server.workdir(digest)
    return {p.name: p.read_bytes() for p in sorted(root.glob("*"))} if root.exists() else {}


def read_reply(connection: _Link, expected: int = 0) -> object:
    header = parse_header(connection.recv_exact(HEADER_BYTES), expected, MAX_FRAME)
    return decode_message(connection.recv_exact(header.length))


def rejected(caplog: pytest.LogCaptureFixture, text: str, wait: float = 5.0) -> bool:
    """Whether the server logged a rejection containing `text` (it may log just after closing)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if any("rejected" in r.getMessage() and text in r.getMessage() for r in caplog.records):
            return True
        time.sleep(0.02)
    return False


def test_honest_device_round_trip_records_transcript(server, keys):
    alice = channel(server, keys, "alice")
    assert alice.request(make_upload(0)) == UploadAck(stored=4, duplicates=0)
    assert alice.request(make_upload(0)) == UploadAck(stored=0, duplicates=4)
    assert isinstance(alice.request(FetchWeights()), SideWeights)
    alice.close()
    digest = next(fp for fp, e in keys.load_trust().items() if e["name"] == "alice")
    view = ServerView(server.server.workdir(digest))
    assert len(view.received(Upload)) == 1  # the re-send is recorded by ids and digest only
    (resent,) = view.received(ResentUpload)
    np.testing.assert_array_equal(resent.sample_ids, make_upload(0).sample_ids)
    assert resent.wire_bytes == len(encode_message(make_upload(0)))
    assert len(view.cache_contents()[0]) == 4
    assert alice.bytes_up > len(encode_message(make_upload(0))) * 2  # TLS records and handshake counted


def test_replayed_frame_is_rejected(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    connection = link(server, keys, "alice")
    frame = encode_frame(0, encode_message(make_upload(1)))
    connection.send(frame)
    assert isinstance(read_reply(connection, 0), UploadAck)
    before = state_of(server, keys, "alice")
    connection.send(frame)  # the same frame again
    reply = read_reply(connection, 1)
    assert isinstance(reply, ErrorReply) and "replayed" in reply.reason
    with pytest.raises(ConnectionError):
        connection.recv_exact(1)
    assert rejected(caplog, "replayed frame")
    assert state_of(server, keys, "alice") == before


def test_reordered_frame_is_rejected(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    connection = link(server, keys, "alice")
    connection.send(encode_frame(1, encode_message(make_upload(2))))  # frame 0 skipped
    reply = read_reply(connection, 0)
    assert isinstance(reply, ErrorReply) and "out-of-order" in reply.reason
    assert rejected(caplog, "out-of-order frame")
    assert state_of(server, keys, "alice") == {}


def test_frame_over_the_limit_is_rejected_before_reading_it(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    connection = link(server, keys, "alice")
    connection.send(HEADER.pack(MAGIC, FRAME_VERSION, 0, 2**32 - 1))  # claims 4 GiB, sends none of it
    reply = read_reply(connection, 0)
    assert isinstance(reply, ErrorReply) and "exceeds the limit" in reply.reason
    assert rejected(caplog, "exceeds the limit")
    assert state_of(server, keys, "alice") == {}


def test_truncated_connection_is_rejected(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    connection = link(server, keys, "alice")
    frame = encode_frame(0, encode_message(make_upload(3)))
    connection.send(frame[:len(frame) // 2])
    connection.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError):
        connection.recv_exact(1)
    assert rejected(caplog, "truncated connection")
    assert state_of(server, keys, "alice") == {}


def test_invalid_message_gets_error_reply_and_no_state(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    bad = make_upload(4)
    bad.delta[0, 0] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        channel(server, keys, "alice").request(bad)
    assert rejected(caplog, "NaN")
    assert state_of(server, keys, "alice") == {}


def test_unknown_client_certificate_is_rejected(server, keys, tmp_path, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    stranger_key, stranger_cert = make_identity("alice")  # same name, different key: not pinned
    (tmp_path / "stranger.key").write_bytes(stranger_key)
    (tmp_path / "stranger.crt").write_bytes(stranger_cert)
    context, pinned = keys.device_context("alice")
    context.load_cert_chain(tmp_path / "stranger.crt", tmp_path / "stranger.key")
    with pytest.raises(ProtocolError):
        NetworkChannel(*server.address, context, pinned, reconnect_seconds=0.5).request(make_upload(5))
    assert rejected(caplog, "TLS handshake failed")
    assert not (tmp_path / "server" / "devices").exists() or not any((tmp_path / "server" / "devices").iterdir())


def test_revoked_client_certificate_is_rejected(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    mallory = channel(server, keys, "mallory")
    mallory.request(make_upload(6))
    before = state_of(server, keys, "mallory")
    keys.revoke("mallory")
    mallory.close()
    with pytest.raises(ProtocolError, match="revoked"):
        mallory.request(make_upload(7))
    assert rejected(caplog, "revoked device certificate")
    assert state_of(server, keys, "mallory") == before


def test_wrong_server_identity_is_refused_by_the_device(server, keys, tmp_path, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    _, impostor_cert = make_identity("impostor")
    (tmp_path / "impostor.crt").write_bytes(impostor_cert)
    context, pinned = keys.device_context("alice", server_cert=tmp_path / "impostor.crt")
    with pytest.raises(ProtocolError, match="TLS failure"):
        NetworkChannel(*server.address, context, pinned, reconnect_seconds=0.5).request(make_upload(8))
    assert rejected(caplog, "TLS handshake failed")
    assert state_of(server, keys, "alice") == {}


def test_the_device_pin_check_alone_refuses_another_server(server, keys, tmp_path, caplog):
    # TLS verification is one layer, the fingerprint pin the other: with verification switched off,
    # the pin alone must still refuse a server whose certificate is not the pinned one.
    caplog.set_level(logging.INFO, "secure_assist.transport")
    _, impostor_cert = make_identity("impostor")
    (tmp_path / "impostor.crt").write_bytes(impostor_cert)
    context, _ = keys.device_context("alice")
    context.verify_mode = ssl.CERT_NONE
    _, wrong_pin = keys.device_context("alice", server_cert=tmp_path / "impostor.crt")
    with pytest.raises(ProtocolError, match="not the pinned certificate"):
        NetworkChannel(*server.address, context, wrong_pin, reconnect_seconds=0.5).request(make_upload(12))
    assert state_of(server, keys, "alice") == {}
    # The same unverifying context with the right pin connects: the pin was what refused.
    _, right_pin = keys.device_context("alice")
    assert NetworkChannel(*server.address, context, right_pin).request(make_upload(12)).stored == 4


def certificateless_context(keys: KeyDirectory) -> ssl.SSLContext:
    """A device context that verifies the server but presents no certificate of its own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=keys.server_cert.read_text())
    return context


def no_device_state(running: BackgroundServer) -> bool:
    devices = running.server.root / "devices"
    return running.server.device_stats() == {} and (not devices.exists() or not any(devices.iterdir()))


def test_a_client_without_a_certificate_fails_the_handshake(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    _, pinned = keys.device_context("alice")
    with pytest.raises(ProtocolError):
        NetworkChannel(*server.address, certificateless_context(keys), pinned,
                       reconnect_seconds=0.5).request(make_upload(13))
    # Refused by TLS itself (the server demands a certificate), not later by the application.
    assert rejected(caplog, "TLS handshake failed")
    assert not any("internal error" in r.getMessage() or "no device certificate" in r.getMessage()
                   for r in caplog.records)
    assert no_device_state(server)


class OptionalClientCertificates(KeyDirectory):
    """A server key directory whose TLS context was misconfigured to make client certificates optional."""

    def server_context(self) -> ssl.SSLContext:
        context = super().server_context()
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


def test_a_server_context_without_required_certificates_still_refuses_clearly(tmp_path, keys, caplog):
    # Defence in depth: should CERT_REQUIRED ever be lost, authentication refuses by name.
    caplog.set_level(logging.INFO, "secure_assist.transport")
    transport = TransportServer(tmp_path / "lax", OptionalClientCertificates(keys.root), ServerTraining(rank=4))
    with BackgroundServer(transport) as running:
        _, pinned = keys.device_context("alice")
        with pytest.raises(ProtocolError, match="no device certificate"):
            NetworkChannel(*running.address, certificateless_context(keys), pinned,
                           reconnect_seconds=0.5).request(make_upload(14))
        assert rejected(caplog, "no device certificate")
        assert not any("internal error" in r.getMessage() for r in caplog.records)
        assert no_device_state(running)


class TamperingProxy:
    """A TCP relay that flips one bit of the device -> server stream after `skip` bytes."""

    def __init__(self, target: tuple[str, int], skip: int) -> None:
        self.target, self.skip = target, skip
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()
        self._pipe(client, upstream, self.skip)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, flip_at: int | None) -> None:
        seen = 0
        try:
            while data := source.recv(65536):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0x01
                seen += len(data)
                sink.sendall(bytes(data))
        except OSError:
            pass
        finally:
            sink.close()


def test_tampered_bytes_are_rejected(server, keys, caplog):
    caplog.set_level(logging.INFO, "secure_assist.transport")
    # Measure where the application data starts: the client's handshake flight size.
    probe = link(server, keys, "alice")
    handshake_bytes = probe.up
    probe.close()
    proxy = TamperingProxy(server.address, skip=handshake_bytes + 400)
    context, pinned = keys.device_context("alice")
    tampered = NetworkChannel(*proxy.address, context, pinned, timeout=5.0, reconnect_seconds=0.5)
    with pytest.raises(ProtocolError):
        tampered.request(make_upload(9, n=64))
    assert rejected(caplog, "transport error")
    assert state_of(server, keys, "alice") == {}


def test_devices_are_isolated_even_with_forged_ids(server, keys):
    alice, mallory = channel(server, keys, "alice"), channel(server, keys, "mallory")
    honest = make_upload(10)
    alice.request(honest)
    alice_before = state_of(server, keys, "alice")
    # Mallory replays Alice's sample ids with poisoned values: they land in Mallory's namespace.
    forged = make_upload(11, ids=honest.sample_ids.copy())
    assert mallory.request(forged) == UploadAck(stored=4, duplicates=0)
    assert state_of(server, keys, "alice") == alice_before
    alice_view = ServerView(server.server.workdir(next(fp for fp, e in keys.load_trust().items()
                                                      if e["name"] == "alice")))
    ids, acts, _ = alice_view.cache_contents()
    np.testing.assert_array_equal(acts, honest.activations)
    # What Mallory fetches is her own side network, trained on her own uploads only.
    weights_m = mallory.request(FetchWeights())
    weights_a = alice.request(FetchWeights())
    assert any(not np.array_equal(weights_m.state[k], weights_a.state[k]) for k in weights_a.state)
