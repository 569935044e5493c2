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
CPU-heavy) runs on a single-thread executor per device: it keeps the event loop free for
other devices and serializes one device's requests (SQLite objects stay in their thread).
Decoding and validating runs on a small shared worker pool, also off the event loop.

What one peer can make the server hold is bounded by `protocol.server.limits.ServerLimits`:
handshake, read, write and idle timeouts, the frame size, connections per device (one more
replaces the device's oldest idle connection), global budgets for partially received
frames (`reading`, `budget`) and unread replies (`replies`), handshakes in progress
(`handshakes`), peer-triggered log lines (`peer_log`), and, in the endpoint, the shape,
samples and epochs of each device. No TLS state is built for a connection before its
first byte, which must start a TLS handshake. A device's slot (endpoint, thread) is
released once it has had no connection for a while (`slots`). The allow-list is re-read
when it changes, checked before every request and watched: revoking a device ends its
open connections at their next request and stops its training at the next step. The
accept loop survives every accept error and sheds at the descriptor limit (`connections`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from protocol.wire.codec import read_metadata
from protocol.errors import ProtocolError
from protocol.files import private_dir
from protocol.server.limits import LimitExceeded, ServerLimits
from protocol.wire.messages import ErrorReply, Hello, Message, decode_message, encode_message
from protocol.server.training_settings import ServerTraining
from protocol.transport.allow_list import AllowList
from protocol.transport.connections import Connection, ConnectionTable, accept_forever, connection_capacity
from protocol.transport.handshakes import HandshakeGate
from protocol.transport.identity import KeyDirectory, fingerprint
from protocol.transport.peer_log import PeerLog, peer_source
from protocol.transport.reading import FrameReader, Rejected, decode_request, reason
from protocol.transport.replies import ReplySender, close_writer, send_error
from protocol.transport.slots import DeviceEndpoint, DeviceSlot, DeviceStop, side_tuning_endpoint

log = logging.getLogger("secure_assist.transport")
DEVICES_DIR = "devices"
# Namespace of every connection when the server runs without TLS (overhead benchmark only).
PLAINTEXT_IDENTITY = "plaintext-unauthenticated"
_TLS_HANDSHAKE_RECORD = b"\x16"  # the content type of the record that carries a ClientHello
# How often the allow-list is checked for revocations while devices train, and closed log intervals summarized.
WATCH_SECONDS = 0.5
HELLO_FIRST = "the first request of every connection must be 'hello' naming the training mode"


@dataclass
class TransportServer:
    """Serves the PAE server role to authenticated devices over TCP + TLS 1.3."""

    root: Path
    keys: KeyDirectory | None  # None: plain TCP, no authentication (benchmark reference only)
    training: ServerTraining = field(default_factory=ServerTraining)
    limits: ServerLimits = field(default_factory=ServerLimits)
    # `secure-assist serve` passes a `protocol.modes.host.ModeHost` factory (every offered mode,
    # named by the device's Hello); the bare side-network server is the default for transport tests.
    endpoint_factory: Callable[..., DeviceEndpoint] = side_tuning_endpoint

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._slots: dict[str, DeviceSlot] = {}
        self._releasing: dict[str, asyncio.Future] = {}  # slots whose endpoint is closing, by identity
        self._stats: dict[str, dict[str, int]] = {}
        self._watching: asyncio.Task | None = None
        self._connections = ConnectionTable()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._allowed = AllowList(self.keys) if self.keys is not None else None
        self._stop = threading.Event()  # endpoints check it between training steps
        self._decoder = ThreadPoolExecutor(self.limits.decode_workers, thread_name_prefix="decode")
        self._frames = FrameReader(self.limits)
        self.replies = ReplySender(self.limits)
        self.handshakes = HandshakeGate(self.limits.max_handshakes)
        self.peer_log = PeerLog(log, self.limits.log_interval_seconds)

    def workdir(self, identity: str) -> Path:
        """The namespace (work directory) of one device identity."""
        return self.root / DEVICES_DIR / identity

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; return the bound address (port 0 picks a free one)."""
        private_dir(self.root)
        if self.keys is not None:
            self._allowed.refresh()  # fail at start, not at the first device, on missing keys
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(accept_forever(self._listener, self._connections, self._spawn,
                                                             connection_capacity()))
        self._watching = asyncio.create_task(self._watch())
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
        for task in (self._accepting, self._watching):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        tasks = self._connections.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._releasing.values(), return_exceptions=True)
        for identity in list(self._slots):
            await self._release(identity)
        devices = len(self._stats)
        self._decoder.shutdown(wait=True, cancel_futures=True)
        log.info("stopped: %d devices served", devices)

    def device_stats(self) -> dict[str, dict[str, int]]:
        """Per-identity connection and request counts (for logs and benchmarks)."""
        return {identity: dict(counts) for identity, counts in self._stats.items()}

    def open_slots(self) -> int:
        """Devices whose server role is open now (each holds a thread and its files)."""
        return len(self._slots)

    async def _watch(self) -> None:
        """Stop the work of revoked devices at their next training step; summarize closed log intervals."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.peer_log.flush()
            for identity, slot in list(self._slots.items()):
                if not slot.stop.revoked and self._trusted(identity) is not None:
                    log.warning("device %s: revoked; stopping its work in flight", identity[:16])
                    slot.stop.set()

    def _trusted(self, identity: str) -> str | None:
        """None if `identity` may be served now, else why not ("unknown" or "revoked")."""
        if self.keys is None:
            return None
        return self._allowed.refusal(identity)

    def _spawn(self, sock: socket.socket, connection: Connection) -> asyncio.Task:
        return asyncio.create_task(self._on_connection(sock, connection))

    def _peer_line(self, level: int, connection: Connection, message: str, *args: object) -> None:
        """A log line the peer triggered, rate-limited per source."""
        self.peer_log.line(level, peer_source(connection.peer, connection.identity, message % args),
                           "%s: " + message, connection.peer, *args)

    async def _on_connection(self, sock: socket.socket, connection: Connection) -> None:
        writer = None
        try:
            if not await self._first_byte(sock, connection):
                return
            opened = await self._open(sock, connection)
            if opened is None:
                return
            reader, writer = opened
            connection.identity = await self._authenticate(writer, connection)
            if connection.identity is not None:
                await self._serve(connection, reader, writer)
        except asyncio.CancelledError:
            if connection.shed:  # the accept loop and the handshake gate count them: a flood must not flood the log
                log.debug("%s: connection shed (descriptor limit or handshake turns)", connection.peer)
            else:
                why = "superseded by a newer connection of its device" if connection.superseded else "shutdown"
                self._peer_line(logging.INFO, connection, "connection closed (%s)", why)
        except Exception:  # noqa: BLE001 - one connection's failure (a bug, out of descriptors) ends it, logged
            log.exception("%s: internal error; closing the connection", connection.peer)
            if writer is not None:
                await self._send_error(writer, connection, "internal server error")
        finally:
            if writer is not None:  # else the connection table closes the socket when this task ends
                await close_writer(writer, abort=self._stop.is_set() or connection.abort)

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
            self._peer_line(logging.WARNING, connection, "rejected: %s",
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
            self._peer_line(logging.WARNING, connection, "rejected: not a TLS handshake (first byte %r)", first)
            return False
        connection.talking = True
        return True

    async def _open(self, sock: socket.socket,
                    connection: Connection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Streams over the accepted socket, after the TLS handshake (None if it failed, logged).

        The handshake runs inside `connect_accepted_socket`, before any byte reaches a stream buffer, so no
        early byte can bypass TLS. It holds a turn (`HandshakeGate`), waited for no longer than a handshake.
        """
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        if self.keys is not None:
            self._allowed.refresh()  # devices added since the last connection need no restart
        try:
            async with self.handshakes.turn(connection, self.limits.handshake_seconds):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self._allowed.context if self.keys is not None else None,
                    ssl_handshake_timeout=self.limits.handshake_seconds if self.keys is not None else None)
        except (ssl.SSLError, OSError, ConnectionError, asyncio.TimeoutError) as exc:
            self._peer_line(logging.WARNING, connection, "rejected: TLS handshake failed (%s)", reason(exc))
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _authenticate(self, writer: asyncio.StreamWriter, connection: Connection) -> str | None:
        if self.keys is None:
            return PLAINTEXT_IDENTITY
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        except ValueError:
            # The session failed (bad record, reset) before the certificate could be read.
            self._peer_line(logging.WARNING, connection, "rejected: transport error right after the TLS handshake")
            return None
        if der is None:
            # Unreachable while the context demands a certificate (CERT_REQUIRED); should that setting
            # ever be lost, a certificate-less device is refused here, by name, not by a TypeError.
            self._peer_line(logging.WARNING, connection, "rejected: no device certificate")
            await self._send_error(writer, connection, "no device certificate")
            return None
        digest = fingerprint(der)
        why = self._trusted(digest)
        if why is not None:
            self._peer_line(logging.WARNING, connection, "rejected: %s device certificate %s", why, digest)
            await self._send_error(writer, connection, f"device certificate {why}")
            return None
        connection.identity = digest
        self._peer_line(logging.INFO, connection, "authenticated device %r (%s)", self._allowed.name(digest),
                        digest[:16])
        return digest

    async def _serve(self, connection: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        identity = connection.identity
        if identity in self._releasing:  # its endpoint is closing: reopen once its files are released
            await asyncio.gather(self._releasing[identity], return_exceptions=True)
        slot = self._slots.get(identity)
        if slot is None:
            slot = self._slots[identity] = DeviceSlot(identity, DeviceStop(self._stop))
        if len(slot.open) >= self.limits.max_connections_per_device:
            # The device's oldest connection not in a request's handling goes: a device that lost
            # its links (half-open TCP) can always reconnect, and no device holds more than the limit.
            waiting = [c for c in slot.open if not c.handling]
            why = self.limits.exceeded("max_connections_per_device", f"connection {len(slot.open) + 1}")
            if not waiting:
                self._peer_line(logging.WARNING, connection, "rejected: %s", why)
                await self._send_error(writer, connection, str(why))
                return
            waiting[0].superseded = True
            waiting[0].task.cancel()
            slot.open.remove(waiting[0])
            self._peer_line(logging.WARNING, connection, "closing the device's oldest connection %s: %s",
                            waiting[0].peer, why)
        slot.open.append(connection)
        self._stats.setdefault(identity, {"connections": 0, "requests": 0})["connections"] += 1
        try:
            await self._request_loop(connection, slot, reader, writer)
        finally:
            if connection in slot.open:
                slot.open.remove(connection)
            slot.idle_since = time.monotonic()
            self._release_if_idle(slot)

    def _release_if_idle(self, slot: DeviceSlot) -> None:
        """Release a device's slot (its thread, files and memory) once it has had no connection for
        `slot_idle_seconds`: soon enough that gone devices hold nothing, late enough that a device
        reconnecting at once finds its role open."""
        if slot.open or self._slots.get(slot.identity) is not slot or self._stop.is_set():
            return
        idle = time.monotonic() - slot.idle_since
        if idle < self.limits.slot_idle_seconds:
            asyncio.get_running_loop().call_later(self.limits.slot_idle_seconds - idle, self._release_if_idle, slot)
        elif slot.identity not in self._releasing:
            releasing = asyncio.ensure_future(self._release(slot.identity))
            self._releasing[slot.identity] = releasing
            releasing.add_done_callback(lambda _, i=slot.identity: self._releasing.pop(i, None))

    async def _release(self, identity: str) -> None:
        slot = self._slots.pop(identity)
        # Queued behind any handler still running in the device's thread (it sees the stop flag).
        await asyncio.get_running_loop().run_in_executor(slot.executor, slot.release)
        slot.executor.shutdown(wait=True)
        log.debug("device %s: server role released", identity[:16])

    async def _request_loop(self, connection: Connection, slot: DeviceSlot, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        received = 0
        while True:
            try:
                request = await self._frames.read(reader, received, functools.partial(self._decode, connection))
                if request is None:
                    self._peer_line(logging.INFO, connection, "device closed the connection after %d requests",
                                    received)
                    return
                received += 1
                payload, message = request
                connection.handling = True
                try:
                    reply = await loop.run_in_executor(slot.executor, self._handle, slot, connection, message,
                                                       payload)
                finally:
                    connection.handling = False
                if slot.stop.revoked:  # revoked while its request ran: the reply is not delivered
                    raise Rejected("device certificate revoked")
                self._stats[connection.identity]["requests"] += 1
                await self.replies.send(writer, connection.sent, reply)
                connection.sent += 1
            except Rejected as rejection:
                self._peer_line(logging.WARNING, connection, "rejected: %s", rejection)
                if rejection.reply:
                    await self._send_error(writer, connection, str(rejection))
                else:
                    connection.abort = True  # unread bytes are freed with the connection, not flushed
                return
            except LimitExceeded as exc:
                self._peer_line(logging.WARNING, connection, "rejected: %s", exc)
                await self._send_error(writer, connection, str(exc))
                return
            except ProtocolError as exc:
                self._peer_line(logging.WARNING, connection, "rejected: invalid message: %s", exc)
                await self._send_error(writer, connection, f"invalid message: {exc}")
                return
            if read_metadata(reply)["type"] == ErrorReply.TYPE:
                self._peer_line(logging.WARNING, connection, "rejected: server role refused the request: %s",
                                decode_message(reply).reason)
                return

    async def _decode(self, connection: Connection, payload: bytes) -> Message:
        """A request of `connection`, decoded only while its device is trusted; validated before any state
        is touched, off the event loop."""
        why = self._trusted(connection.identity)
        if why is not None:
            raise Rejected(f"device certificate {why}")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, decode_request, payload, self.limits)

    def _handle(self, slot: DeviceSlot, connection: Connection, message: Message, payload: bytes) -> bytes:
        """Runs in the device's own thread."""
        if slot.endpoint is None:
            slot.endpoint = self.endpoint_factory(self.workdir(slot.identity), self.training, limits=self.limits,
                                                  stop=slot.stop)
            log.info("device %s: server role open", slot.identity[:16])
        if not connection.greeted and slot.endpoint.requires_hello and not isinstance(message, Hello):
            return encode_message(ErrorReply(reason=HELLO_FIRST))
        connection.greeted = True
        return slot.endpoint.handle_message(message, payload)

    async def _send_error(self, writer: asyncio.StreamWriter, connection: Connection, reason: str) -> None:
        await send_error(writer, connection, reason, self.limits.max_frame_bytes)
