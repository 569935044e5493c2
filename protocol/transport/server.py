"""The asyncio network server: many devices at once, each in its own namespace.

Per connection: TLS 1.3 handshake with a required client certificate (done here, not by
asyncio's listener, so every rejection gets a log line that says why), the device
identity taken from the authenticated certificate's fingerprint, then a loop of
frame -> validated message -> that device's server role (every mode `serve` offers) -> reply frame.
Any violation is answered with an `ErrorReply` where possible, logged, and the
connection is closed; invalid messages never reach the device's state or transcript.

Each device identity owns one work directory `<root>/devices/<fingerprint>` (cache,
side network, transcript; 0700), so a device can only ever read or write its own; a
forged sample id lands in the forger's namespace. Request handling (training is
CPU-heavy) runs on a single-thread executor per device: it keeps the event loop free
for other devices and serializes one device's requests (SQLite objects stay in their
thread). Decoding and validating a request runs on a small shared worker pool, also
off the event loop, so one device's large or malformed frame delays no other device.

What one peer can make the server hold is bounded by `protocol.server.limits.ServerLimits`:
handshake, read and idle timeouts, the frame size, connections per device (one more
replaces the device's oldest idle connection), a global budget for partially received
frames (`protocol.transport.reading`, `protocol.transport.budget`), and, in the
endpoint, the shape, samples and epochs of each device. No TLS state is built for a
connection before its first byte, which must start a TLS handshake. The allow-list is
re-read when it changes, and checked before every request: revoking a device ends its
open connections at their next request. The accept loop survives every accept error
and sheds at the descriptor limit (`protocol.transport.connections`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from protocol.wire.codec import read_metadata
from protocol.errors import ProtocolError
from protocol.files import private_dir
from protocol.server.limits import LimitExceeded, ServerLimits, admit_upload
from protocol.wire.messages import ErrorReply, Message, decode_message, encode_message
from protocol.server.training_settings import ServerTraining
from protocol.transport.connections import Connection, ConnectionTable, accept_forever, connection_capacity
from protocol.transport.framing import encode_frame
from protocol.transport.identity import KeyDirectory, fingerprint
from protocol.transport.reading import FrameReader, Rejected, reason

log = logging.getLogger("secure_assist.transport")
DEVICES_DIR = "devices"
# Namespace of every connection when the server runs without TLS (overhead benchmark only).
PLAINTEXT_IDENTITY = "plaintext-unauthenticated"
_TLS_HANDSHAKE_RECORD = b"\x16"  # the content type of the record that carries a ClientHello


class DeviceEndpoint(Protocol):
    """One device's server role: answers decoded requests, releases its files on close."""

    def handle_message(self, message: Message, data: bytes) -> bytes:
        """Answer one request already decoded from `data` (its wire form)."""

    def close(self) -> None:
        """Release files."""


@dataclass
class _DeviceSlot:
    """One device's server role and the thread that alone touches it."""

    executor: ThreadPoolExecutor
    endpoint: DeviceEndpoint | None = None
    open: list[Connection] = field(default_factory=list)  # oldest first
    connections: int = 0
    requests: int = 0


def decode_request(payload: bytes, limits: ServerLimits) -> Message:
    """Decode and validate one request, and apply the stateless upload limits (on a worker thread,
    before any device namespace is opened); every failure is a ProtocolError."""
    try:
        message = decode_message(payload, limits.max_frame_bytes)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure must become an ErrorReply, not a dead task
        raise ProtocolError(f"undecodable message ({type(exc).__name__}: {str(exc)[:200]})") from exc
    admit_upload(message, limits)
    return message


def _side_tuning(workdir: Path, training: ServerTraining, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> DeviceEndpoint:
    # Imported on first use: it loads torch, and `serve` listens before paying for that.
    from protocol.server.side_tuning import SideTuningServer

    return SideTuningServer(workdir, training, limits=limits, stop=stop)


@dataclass
class TransportServer:
    """Serves the PAE server role to authenticated devices over TCP + TLS 1.3."""

    root: Path
    keys: KeyDirectory | None  # None: plain TCP, no authentication (benchmark reference only)
    training: ServerTraining = field(default_factory=ServerTraining)
    limits: ServerLimits = field(default_factory=ServerLimits)
    # `secure-assist serve` passes a `protocol.modes.host.ModeHost` factory (every offered mode,
    # named by the device's Hello); the bare side-network server is the default for transport tests.
    endpoint_factory: Callable[..., DeviceEndpoint] = _side_tuning

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._slots: dict[str, _DeviceSlot] = {}
        self._connections = ConnectionTable()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._context: ssl.SSLContext | None = None
        self._trust: dict[str, dict] = {}
        self._trust_stamp: tuple[int, int, int] | None = None
        self._stop = threading.Event()  # endpoints check it between training steps
        self._decoder = ThreadPoolExecutor(self.limits.decode_workers, thread_name_prefix="decode")
        self._frames = FrameReader(self.limits)

    def workdir(self, identity: str) -> Path:
        """The namespace (work directory) of one device identity."""
        return self.root / DEVICES_DIR / identity

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        private_dir(self.root)
        if self.keys is not None:
            self._refresh_trust()  # fail at start, not at the first device, on missing keys
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(accept_forever(self._listener, self._connections, self._spawn,
                                                             connection_capacity()))
        bound = self._listener.getsockname()
        log.info("listening on %s:%d (%s)", bound[0], bound[1], "TLS 1.3, mutual auth" if self.keys else "PLAINTEXT")
        return bound[0], bound[1]

    async def serve_until_signal(self, host: str, port: int, on_ready: Callable[[str, int], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM, then shut down cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        address = await self.start(host, port)
        if on_ready:
            on_ready(*address)
        await stop.wait()
        log.info("signal received: shutting down")
        await self.close()

    async def close(self) -> None:
        """Stop listening, end connections, stop in-flight training, close every device's files."""
        self._stop.set()
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        tasks = self._connections.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for slot in self._slots.values():
            if slot.endpoint is not None:
                # Queued behind any handler still running in the device's thread (it sees the stop flag).
                await loop.run_in_executor(slot.executor, slot.endpoint.close)
            slot.executor.shutdown(wait=True)
        devices = len(self._slots)
        self._slots.clear()
        self._decoder.shutdown(wait=True, cancel_futures=True)
        log.info("stopped: %d device namespaces closed", devices)

    def device_stats(self) -> dict[str, dict[str, int]]:
        """Per-identity connection and request counts (for logs and benchmarks)."""
        return {identity: {"connections": s.connections, "requests": s.requests} for identity, s in self._slots.items()}

    def _refresh_trust(self) -> None:
        """Re-read the allow-list and rebuild the TLS context when the file changed (no restart needed)."""
        stat = os.stat(self.keys.trust_file)
        stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)  # replaced atomically: a new inode
        if stamp != self._trust_stamp:
            self._trust, self._context = self.keys.load_trust(), self.keys.server_context()
            self._trust_stamp = stamp

    def _trusted(self, identity: str) -> str | None:
        """None if `identity` may be served now, else why not ("unknown" or "revoked")."""
        if self.keys is None:
            return None
        self._refresh_trust()
        entry = self._trust.get(identity)
        return "unknown" if entry is None else ("revoked" if entry.get("revoked", False) else None)

    def _spawn(self, sock: socket.socket, connection: Connection) -> asyncio.Task:
        return asyncio.create_task(self._on_connection(sock, connection))

    async def _on_connection(self, sock: socket.socket, connection: Connection) -> None:
        writer = None
        try:
            if not await self._first_byte(sock, connection):
                return
            opened = await self._open(sock, connection.peer)
            if opened is None:
                return
            reader, writer = opened
            connection.identity = await self._authenticate(writer, connection)
            if connection.identity is not None:
                await self._serve(connection, reader, writer)
        except asyncio.CancelledError:
            if connection.shed:  # the accept loop logs a summary: a flood must not flood the log
                log.debug("%s: connection shed at the descriptor limit", connection.peer)
            else:
                why = "superseded by a newer connection of its device" if connection.superseded else "shutdown"
                log.info("%s: connection closed (%s)", connection.peer, why)
        except Exception:  # noqa: BLE001 - one connection's failure (a bug, out of descriptors) ends it, logged
            log.exception("%s: internal error; closing the connection", connection.peer)
            if writer is not None:
                await self._send_error(writer, connection, "internal server error")
        finally:
            if writer is not None:  # else the connection table closes the socket when this task ends
                await _close(writer, abort=self._stop.is_set())

    async def _first_byte(self, sock: socket.socket, connection: Connection) -> bool:
        """Wait for the peer's first byte before building any TLS state (asyncio's SSL protocol
        allocates a 256 KiB buffer per connection): a silent connection costs only its descriptor."""
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, self.limits.handshake_seconds)
            first = sock.recv(1, socket.MSG_PEEK)
        except asyncio.TimeoutError:
            log.warning("%s: rejected: %s", connection.peer,
                        self.limits.exceeded("handshake_seconds", "no TLS handshake started"))
            return False
        except OSError as exc:
            log.debug("%s: gone before its first byte (%s)", connection.peer, exc)
            return False
        finally:
            loop.remove_reader(sock.fileno())
        if not first:  # closed without a word (a descriptor flood ending): nothing to log per connection
            log.debug("%s: closed before its first byte", connection.peer)
            return False
        if self.keys is not None and first != _TLS_HANDSHAKE_RECORD:
            log.warning("%s: rejected: not a TLS handshake (first byte %r)", connection.peer, first)
            return False
        connection.talking = True
        return True

    async def _open(self, sock: socket.socket, peer: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Streams over the accepted socket, after the TLS handshake (None if it failed, logged).

        The handshake runs inside `connect_accepted_socket`, before any byte reaches a
        stream buffer, so no early byte can bypass TLS.
        """
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        if self.keys is not None:
            self._refresh_trust()  # devices added since the last connection need no restart
        context = self._context if self.keys is not None else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context,
                ssl_handshake_timeout=self.limits.handshake_seconds if context else None)
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log.warning("%s: rejected: TLS handshake failed (%s)", peer, reason(exc))
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _authenticate(self, writer: asyncio.StreamWriter, connection: Connection) -> str | None:
        if self.keys is None:
            return PLAINTEXT_IDENTITY
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        except ValueError:
            # The session failed (bad record, reset) before the certificate could be read.
            log.warning("%s: rejected: transport error right after the TLS handshake", connection.peer)
            return None
        if der is None:
            # Unreachable while the context demands a certificate (CERT_REQUIRED); should that setting
            # ever be lost, a certificate-less device is refused here, by name, not by a TypeError.
            log.warning("%s: rejected: no device certificate", connection.peer)
            await self._send_error(writer, connection, "no device certificate")
            return None
        digest = fingerprint(der)
        why = self._trusted(digest)
        if why is not None:
            log.warning("%s: rejected: %s device certificate %s", connection.peer, why, digest)
            await self._send_error(writer, connection, f"device certificate {why}")
            return None
        log.info("%s: authenticated device %r (%s)", connection.peer, self._trust[digest]["name"], digest[:16])
        return digest

    async def _serve(self, connection: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slot = self._slot(connection.identity)
        if len(slot.open) >= self.limits.max_connections_per_device:
            # The device's oldest connection not in a request's handling goes: a device that lost
            # its links (half-open TCP) can always reconnect, and no device holds more than the limit.
            waiting = [c for c in slot.open if not c.handling]
            why = self.limits.exceeded("max_connections_per_device", f"connection {len(slot.open) + 1}")
            if not waiting:
                log.warning("%s: rejected: %s", connection.peer, why)
                await self._send_error(writer, connection, str(why))
                return
            waiting[0].superseded = True
            waiting[0].task.cancel()
            slot.open.remove(waiting[0])
            log.warning("%s: closing the device's oldest connection %s: %s", connection.peer, waiting[0].peer, why)
        slot.open.append(connection)
        slot.connections += 1
        try:
            await self._request_loop(connection, slot, reader, writer)
        finally:
            if connection in slot.open:
                slot.open.remove(connection)

    async def _request_loop(self, connection: Connection, slot: _DeviceSlot, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        peer, received = connection.peer, 0
        while True:
            try:
                payload = await self._frames.read(reader, received)
                if payload is None:
                    log.info("%s: device closed the connection after %d requests", peer, received)
                    return
                received += 1
                why = self._trusted(connection.identity)
                if why is not None:
                    raise Rejected(f"device certificate {why}")
                # Validated before any state is touched, off the event loop.
                message = await loop.run_in_executor(self._decoder, decode_request, payload, self.limits)
            except Rejected as rejection:
                log.warning("%s: rejected: %s", peer, rejection)
                if rejection.reply:
                    await self._send_error(writer, connection, str(rejection))
                return
            except LimitExceeded as exc:
                log.warning("%s: rejected: %s", peer, exc)
                await self._send_error(writer, connection, str(exc))
                return
            except ProtocolError as exc:
                log.warning("%s: rejected: invalid message: %s", peer, exc)
                await self._send_error(writer, connection, f"invalid message: {exc}")
                return
            connection.handling = True
            try:
                reply = await loop.run_in_executor(slot.executor, self._handle, slot, connection.identity, message,
                                                   payload)
            finally:
                connection.handling = False
            slot.requests += 1
            writer.write(encode_frame(connection.sent, reply, self.limits.max_frame_bytes))
            connection.sent += 1
            try:
                await asyncio.wait_for(writer.drain(), self.limits.read_seconds)
            except asyncio.TimeoutError:
                log.warning("%s: rejected: reply not read within read_seconds=%s", peer, self.limits.read_seconds)
                return
            if read_metadata(reply)["type"] == ErrorReply.TYPE:
                log.warning("%s: rejected: server role refused the request: %s", peer, decode_message(reply).reason)
                return

    def _slot(self, identity: str) -> _DeviceSlot:
        if identity not in self._slots:
            self._slots[identity] = _DeviceSlot(ThreadPoolExecutor(1, thread_name_prefix=f"device-{identity[:8]}"))
        return self._slots[identity]

    def _handle(self, slot: _DeviceSlot, identity: str, message: Message, payload: bytes) -> bytes:
        """Runs in the device's own thread."""
        if slot.endpoint is None:
            slot.endpoint = self.endpoint_factory(self.workdir(identity), self.training, limits=self.limits,
                                                  stop=self._stop)
            log.info("device %s: server role open", identity[:16])
        return slot.endpoint.handle_message(message, payload)

    async def _send_error(self, writer: asyncio.StreamWriter, connection: Connection, reason: str) -> None:
        """Best effort: the link may already be gone."""
        try:
            writer.write(encode_frame(connection.sent, encode_message(ErrorReply(reason=reason)),
                                      self.limits.max_frame_bytes))
            connection.sent += 1
            await asyncio.wait_for(writer.drain(), 5.0)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
            pass


async def _close(writer: asyncio.StreamWriter, abort: bool) -> None:
    """Close a connection; bounded, because a TLS close waits for a peer that may never answer."""
    if abort:  # shutting down: no TLS close_notify exchange
        writer.transport.abort()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        pass
