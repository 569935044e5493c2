"""The asyncio network server: many devices at once, each in its own namespace.

Per connection: TLS 1.3 handshake with a required client certificate (done here, not by
asyncio's listener, so every rejection gets a log line that says why), the device
identity taken from the authenticated certificate's fingerprint, then a loop of
frame -> validated message -> that device's server role (every mode `serve` offers) -> reply frame.
Any violation is answered with an `ErrorReply` where possible, logged, and the
connection is closed; invalid messages never reach the device's state or transcript.

Each device identity owns one work directory `<root>/devices/<fingerprint>` (cache,
side network, transcript), so a device can only ever read or write its own; a forged
sample id lands in the forger's namespace. Request handling (training is CPU-heavy)
runs on a single-thread executor per device: it keeps the event loop free for other
devices and serializes one device's requests (SQLite objects stay in their thread).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from protocol.codec import read_metadata
from protocol.errors import ProtocolError
from protocol.messages import ErrorReply, decode_message, encode_message
from protocol.server import ServerTraining, SideTuningServer
from protocol.transport.framing import DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, encode_frame, parse_header
from protocol.transport.identity import KeyDirectory, fingerprint

log = logging.getLogger("secure_assist.transport")
DEVICES_DIR = "devices"
# Namespace of every connection when the server runs without TLS (overhead benchmark only).
PLAINTEXT_IDENTITY = "plaintext-unauthenticated"


@dataclass
class TransportLimits:
    """Bounds on what a peer can make the server wait for or allocate."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    handshake_seconds: float = 10.0
    idle_seconds: float = 300.0


class DeviceEndpoint(Protocol):
    """One device's server role: answers wire bytes, releases its files on close."""

    def handle_bytes(self, data: bytes) -> bytes:
        """Answer one encoded request."""

    def close(self) -> None:
        """Release files."""


@dataclass
class _DeviceSlot:
    """One device's server role and the thread that alone touches it."""

    executor: ThreadPoolExecutor
    endpoint: DeviceEndpoint | None = None
    connections: int = 0
    requests: int = 0


class _Rejected(Exception):
    """Internal: end this connection, after sending `reason` back if the link allows."""

    def __init__(self, reason: str, reply: bool = True) -> None:
        super().__init__(reason)
        self.reply = reply


@dataclass
class TransportServer:
    """Serves the PAE server role to authenticated devices over TCP + TLS 1.3."""

    root: Path
    keys: KeyDirectory | None  # None: plain TCP, no authentication (benchmark reference only)
    training: ServerTraining = field(default_factory=ServerTraining)
    limits: TransportLimits = field(default_factory=TransportLimits)
    # `secure-assist serve` passes a `secure_assist.modes.host.ModeHost` factory (every offered mode,
    # named by the device's Hello); the bare side-network server is the default for transport tests.
    endpoint_factory: Callable[[Path, ServerTraining], DeviceEndpoint] = SideTuningServer

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._slots: dict[str, _DeviceSlot] = {}
        self._tasks: set[asyncio.Task] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._context: ssl.SSLContext | None = None
        self._trust_stamp: float | None = None

    def workdir(self, identity: str) -> Path:
        """The namespace (work directory) of one device identity."""
        return self.root / DEVICES_DIR / identity

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        if self.keys is not None:
            self._tls_context()  # fail at start, not at the first device, on missing keys
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_loop())
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
        """Stop listening, end connections, finish in-flight work, close every device's files."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for slot in self._slots.values():
            if slot.endpoint is not None:
                # Queued behind any handler still running in the device's thread.
                await loop.run_in_executor(slot.executor, slot.endpoint.close)
            slot.executor.shutdown(wait=True)
        self._slots.clear()

    def device_stats(self) -> dict[str, dict[str, int]]:
        """Per-identity connection and request counts (for logs and benchmarks)."""
        return {identity: {"connections": s.connections, "requests": s.requests} for identity, s in self._slots.items()}

    def _tls_context(self) -> ssl.SSLContext:
        # Rebuilt when the allow-list changes so added devices need no restart.
        stamp = self.keys.trust_file.stat().st_mtime_ns
        if self._context is None or stamp != self._trust_stamp:
            self._context, self._trust_stamp = self.keys.server_context(), stamp
        return self._context

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(self._listener)
            task = asyncio.create_task(self._on_connection(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _on_connection(self, connection: socket.socket) -> None:
        peer = "%s:%s" % connection.getpeername()[:2]
        writer = None
        try:
            opened = await self._open(connection, peer)
            if opened is None:
                return
            reader, writer = opened
            identity = await self._authenticate(writer, peer)
            if identity is not None:
                await self._serve(identity, peer, reader, writer)
        except asyncio.CancelledError:
            log.info("%s: connection closed by server shutdown", peer)
        finally:
            if writer is None:
                connection.close()
            else:
                writer.close()
                try:
                    await writer.wait_closed()
                except (OSError, ssl.SSLError):
                    pass

    async def _open(self, connection: socket.socket, peer: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Streams over the accepted socket, after the TLS handshake (None if it failed, logged).

        The handshake runs inside `connect_accepted_socket`, before any byte reaches a
        stream buffer, so no early byte can bypass TLS.
        """
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        context = self._tls_context() if self.keys is not None else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, connection, ssl=context,
                ssl_handshake_timeout=self.limits.handshake_seconds if context else None)
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log.warning("%s: rejected: TLS handshake failed (%s)", peer, _reason(exc))
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _authenticate(self, writer: asyncio.StreamWriter, peer: str) -> str | None:
        if self.keys is None:
            return PLAINTEXT_IDENTITY
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        except ValueError:
            # The session failed (bad record, reset) before the certificate could be read.
            log.warning("%s: rejected: transport error right after the TLS handshake", peer)
            return None
        digest = fingerprint(der)
        entry = self.keys.load_trust().get(digest)
        if entry is None or entry.get("revoked", False):
            why = "revoked" if entry is not None else "unknown"
            log.warning("%s: rejected: %s device certificate %s", peer, why, digest)
            await _send_error(writer, 0, f"device certificate {why}", self.limits.max_frame_bytes)
            return None
        log.info("%s: authenticated device %r (%s)", peer, entry["name"], digest[:16])
        return digest

    async def _serve(self, identity: str, peer: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        slot = self._slot(identity)
        slot.connections += 1
        loop = asyncio.get_running_loop()
        received = sent = 0
        while True:
            try:
                payload = await self._read_frame(reader, received, identity)
                if payload is None:
                    log.info("%s: device closed the connection after %d requests", peer, received)
                    return
                received += 1
                decode_message(payload, self.limits.max_frame_bytes)  # validated before any state is touched
            except _Rejected as rejection:
                log.warning("%s: rejected: %s", peer, rejection)
                if rejection.reply:
                    await _send_error(writer, sent, str(rejection), self.limits.max_frame_bytes)
                return
            except ProtocolError as exc:
                log.warning("%s: rejected: invalid message: %s", peer, exc)
                await _send_error(writer, sent, f"invalid message: {exc}", self.limits.max_frame_bytes)
                return
            reply = await loop.run_in_executor(slot.executor, self._handle, slot, identity, payload)
            slot.requests += 1
            writer.write(encode_frame(sent, reply, self.limits.max_frame_bytes))
            sent += 1
            await writer.drain()
            if read_metadata(reply)["type"] == ErrorReply.TYPE:
                log.warning("%s: rejected: server role refused the request: %s", peer,
                            decode_message(reply).reason)
                return

    async def _read_frame(self, reader: asyncio.StreamReader, expected: int, identity: str) -> bytes | None:
        """The next frame's payload, None on a clean close between frames."""
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_BYTES), self.limits.idle_seconds)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise _Rejected(f"truncated connection: {len(exc.partial)} of {HEADER_BYTES} header bytes", reply=False)
        except asyncio.TimeoutError:
            raise _Rejected(f"idle for more than {self.limits.idle_seconds} s")
        except (ssl.SSLError, ConnectionError) as exc:
            raise _Rejected(f"transport error: {_reason(exc)}", reply=False)
        try:
            frame = parse_header(header, expected, self.limits.max_frame_bytes)
        except ProtocolError as exc:
            raise _Rejected(str(exc)) from exc
        try:
            return await asyncio.wait_for(reader.readexactly(frame.length), self.limits.idle_seconds)
        except asyncio.IncompleteReadError as exc:
            raise _Rejected(f"truncated connection: {len(exc.partial)} of {frame.length} payload bytes",
                            reply=False)
        except asyncio.TimeoutError:
            raise _Rejected(f"stalled inside a frame for more than {self.limits.idle_seconds} s")
        except (ssl.SSLError, ConnectionError) as exc:
            raise _Rejected(f"transport error: {_reason(exc)}", reply=False)

    def _slot(self, identity: str) -> _DeviceSlot:
        if identity not in self._slots:
            self._slots[identity] = _DeviceSlot(ThreadPoolExecutor(1, thread_name_prefix=f"device-{identity[:8]}"))
        return self._slots[identity]

    def _handle(self, slot: _DeviceSlot, identity: str, payload: bytes) -> bytes:
        """Runs in the device's own thread."""
        if slot.endpoint is None:
            slot.endpoint = self.endpoint_factory(self.workdir(identity), self.training)
            log.info("device %s: server role open", identity[:16])
        return slot.endpoint.handle_bytes(payload)


async def _send_error(writer: asyncio.StreamWriter, sequence: int, reason: str, max_frame_bytes: int) -> None:
    """Best effort: the link may already be gone."""
    try:
        writer.write(encode_frame(sequence, encode_message(ErrorReply(reason=reason)), max_frame_bytes))
        await asyncio.wait_for(writer.drain(), 5.0)
    except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__
