"""Device-to-server channels. Every channel moves real serialized messages and counts
their bytes; the network transport implements the same interface."""

from __future__ import annotations

from typing import Protocol

from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.errors import ProtocolError
from protocol.wire.messages import ErrorReply, Message, decode_message, encode_message


class Channel(Protocol):
    """A request/response link from the device to the server."""

    bytes_up: int
    bytes_down: int

    def request(self, message: Message) -> Message:
        """Send one request and return the server's (validated) reply."""

    def reopen(self) -> "Channel":
        """A fresh link to the same server, its byte counts at zero (a boosting round's connection);
        this link is closed."""

    def close(self) -> None:
        """Release the link (the server keeps the device's state)."""


class ByteHandler(Protocol):
    """Anything that answers wire bytes with wire bytes (the server role)."""

    def handle_bytes(self, data: bytes) -> bytes:
        """Answer one encoded request."""


class InProcessChannel:
    """Calls a server object in the same process, through the full encode/decode path."""

    def __init__(self, server: ByteHandler, max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._server = server
        self._max = max_message_bytes
        self.bytes_up = 0
        self.bytes_down = 0

    def request(self, message: Message) -> Message:
        """Encode, count, deliver, decode; an ErrorReply from the server raises ProtocolError."""
        data = encode_message(message)
        self.bytes_up += len(data)
        reply_bytes = self._server.handle_bytes(data)
        self.bytes_down += len(reply_bytes)
        reply = decode_message(reply_bytes, self._max)
        if isinstance(reply, ErrorReply):
            raise ProtocolError(f"server rejected {message.TYPE!r}: {reply.reason}")
        return reply

    def reopen(self) -> "InProcessChannel":
        """A fresh channel to the same server object."""
        return InProcessChannel(self._server, self._max)

    def close(self) -> None:
        """Nothing to release: the server object is its owner's."""
