"""The device side of the network transport: a `Channel` over TCP + TLS 1.3.

TLS runs through `ssl.SSLObject` over memory BIOs so that `bytes_up` / `bytes_down`
count the real bytes on the wire (TLS records and handshakes included), which is what
the cost tables compare. After the handshake the server's certificate must be exactly
the pinned one.

Reconnect and resume *(choice)*: a request that fails because the link broke (refused,
reset, closed, timed out) is re-sent on a fresh connection until `reconnect_seconds`
have passed. This is safe because every request the device sends is idempotent:
uploads by sample id (the server stores a repeated id once and counts it as a duplicate),
`TrainUntil` by its target epoch, `FetchWeights` trivially. Every connection starts with
the device's `Hello` (its training mode): the channel replays the last one it sent on each
new connection before the retried request. Authentication failures and protocol errors
are never retried. Resuming after the *device process* restarts is the
caller's job (`secure_assist.training.upload` keeps a progress file of acknowledged batches).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass, replace

from protocol.errors import ProtocolError
from protocol.wire.messages import ErrorReply, Hello, Message, decode_message, encode_message
from protocol.transport.framing import DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, encode_frame, parse_header
from protocol.transport.identity import fingerprint

log = logging.getLogger("secure_assist.transport")
_CHUNK = 256 * 1024


class _Link:
    """One TCP connection, optionally wrapped in TLS, counting raw bytes both ways."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, pinned: str | None,
                 timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up = self.down = 0
        self._buffer = bytearray()
        self.tls: ssl.SSLObject | None = None
        if context is not None:
            self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False)
            try:
                self._handshake(pinned)
            except BaseException:
                self.sock.close()
                raise

    def _handshake(self, pinned: str | None) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()
        seen = fingerprint(self.tls.getpeercert(binary_form=True))
        if seen != pinned:
            raise ProtocolError(f"server identity {seen[:16]}... is not the pinned certificate")

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)
            self.up += len(data)

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            raise ConnectionError("server closed the connection")
        self.down += len(data)
        self._incoming.write(data)

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            self.up += len(data)
            return
        view = memoryview(data)
        while view:
            written = self.tls.write(view)
            view = view[written:]
            self._flush()

    def recv_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self.tls is None:
                chunk = self.sock.recv(max(_CHUNK, n - len(self._buffer)))
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.down += len(chunk)
            else:
                try:
                    chunk = self.tls.read(n - len(self._buffer))
                except ssl.SSLWantReadError:
                    self._fill()
                    continue
                if not chunk:
                    raise ConnectionError("server closed the TLS session")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def close(self) -> None:
        self.sock.close()


@dataclass
class NetworkChannel:
    """Request/response to a `TransportServer`; same interface as `InProcessChannel`."""

    host: str
    port: int
    context: ssl.SSLContext | None  # None: plain TCP (overhead reference only)
    pinned_server: str | None = None  # server certificate fingerprint, required with TLS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    timeout: float = 600.0
    reconnect_seconds: float = 120.0
    # The training mode to name on every connection; None: the caller sends its own `Hello`.
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.context is not None and not self.pinned_server:
            raise ProtocolError("a TLS channel needs the pinned server fingerprint")
        self._closed_up = self._closed_down = 0
        self.reconnects = 0
        self._link: _Link | None = None
        self._sent = self._received = 0
        # Replayed first on every new connection.
        self._hello: bytes | None = None if self.mode is None else encode_message(Hello(mode=self.mode))


    def request(self, message: Message) -> Message:
        """Send one request, reconnecting if the link breaks; an ErrorReply raises ProtocolError."""
        data = encode_message(message)
        if isinstance(message, Hello):
            self._hello = data
        deadline = time.monotonic() + self.reconnect_seconds
        delay = 0.05
        while True:
            try:
                payload = self._exchange(data)
                break
            except ssl.SSLError as exc:
                self._drop()
                raise ProtocolError(f"TLS failure talking to {self.host}:{self.port}: {exc.reason or exc}") from exc
            except (ConnectionError, TimeoutError, OSError) as exc:
                self._drop()
                if time.monotonic() + delay > deadline:
                    raise ProtocolError(f"server {self.host}:{self.port} unreachable: {exc}") from exc
                log.info("link to %s:%d broke (%s); retrying %r", self.host, self.port, exc, message.TYPE)
                self.reconnects += 1
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        reply = decode_message(payload, self.max_frame_bytes)
        if isinstance(reply, ErrorReply):
            self._drop()  # the server closes after an error reply
            raise ProtocolError(f"server rejected {message.TYPE!r}: {reply.reason}")
        return reply

    def _exchange(self, data: bytes) -> bytes:
        if self._link is None:
            self._link = _Link(self.host, self.port, self.context, self.pinned_server, self.timeout)
            self._sent = self._received = 0  # a new connection numbers its frames afresh
            if self._hello is not None and data is not self._hello:
                reply = decode_message(self._round_trip(self._hello), self.max_frame_bytes)
                if isinstance(reply, ErrorReply):
                    raise ProtocolError(f"server refused the mode on reconnecting: {reply.reason}")
        return self._round_trip(data)

    def _round_trip(self, data: bytes) -> bytes:
        self._link.send(encode_frame(self._sent, data, self.max_frame_bytes))
        self._sent += 1
        header = parse_header(self._link.recv_exact(HEADER_BYTES), self._received, self.max_frame_bytes)
        payload = self._link.recv_exact(header.length)
        self._received += 1
        return payload

    @property
    def bytes_up(self) -> int:
        """Raw bytes sent on the wire, TLS handshakes and records included."""
        return self._closed_up + (self._link.up if self._link else 0)

    @property
    def bytes_down(self) -> int:
        """Raw bytes received on the wire."""
        return self._closed_down + (self._link.down if self._link else 0)

    def _drop(self) -> None:
        if self._link is not None:
            self._closed_up += self._link.up
            self._closed_down += self._link.down
            self._link.close()
            self._link = None

    def reopen(self) -> "NetworkChannel":
        """A fresh connection to the same server, naming no mode until its caller's Hello; this one is closed."""
        self.close()
        return replace(self, mode=None)

    def close(self) -> None:
        """Close the connection (the server keeps the device's state)."""
        self._drop()
