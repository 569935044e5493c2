"""Reading requests from a connection within the server's limits.

The header is awaited for at most `idle_seconds`; the payload is read only once its
declared length fits the global partial-frame budget (`protocol.transport.budget`), and
must then arrive within `read_seconds`. A dropped frame's buffer is freed at once.
`decode_request` then decodes and validates it, off the event loop, while its bytes are
still reserved.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Awaitable, Callable

from protocol.errors import ProtocolError
from protocol.server.limits import ServerLimits, admit_upload
from protocol.wire.messages import Message, decode_message
from protocol.transport.budget import PartialFrame, PartialFrameBudget
from protocol.transport.framing import HEADER_BYTES, parse_header

_CHUNK = 256 * 1024


class Rejected(Exception):
    """End this connection, after sending `reason` back if the link allows."""

    def __init__(self, reason: str, reply: bool = True) -> None:
        super().__init__(reason)
        self.reply = reply


class FrameReader:
    """Reads frames for every connection of one server, sharing its partial-frame budget."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.budget = PartialFrameBudget(limits.max_partial_frame_bytes, str(limits.exceeded(
            "max_partial_frames_mib", "frame dropped to make room for a smaller one (largest partial frames first)")))

    async def read(self, reader: asyncio.StreamReader, expected: int,
                   decode: Callable[[bytes], Awaitable[Message]]) -> tuple[bytes, Message] | None:
        """The next frame's payload and its message (`decode`, awaited while the payload is still
        reserved), None on a clean close between frames."""
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_BYTES), self.limits.idle_seconds)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise Rejected(f"truncated connection: {len(exc.partial)} of {HEADER_BYTES} header bytes", reply=False)
        except asyncio.TimeoutError:
            raise Rejected(str(self.limits.exceeded("idle_seconds", "no request")))
        except (ssl.SSLError, ConnectionError) as exc:
            raise Rejected(f"transport error: {reason(exc)}", reply=False)
        try:
            frame = parse_header(header, expected, self.limits.max_frame_bytes)
        except ProtocolError as exc:
            raise Rejected(str(exc)) from exc
        return await self._payload(reader, frame.length, decode)

    async def _payload(self, reader: asyncio.StreamReader, length: int,
                       decode: Callable[[bytes], Awaitable[Message]]) -> tuple[bytes, Message]:
        """The payload, read only once its bytes fit the global partial-frame budget, and its message:
        the reservation is held until it is decoded (the decoding workers' queue is otherwise unbounded)."""
        frame = PartialFrame(length)
        if not await self.budget.reserve(frame, self.limits.read_seconds):
            raise Rejected(str(self.limits.exceeded(
                "max_partial_frames_mib", f"no room within read_seconds for a frame of {length} bytes")))
        try:
            try:
                frame.reader = asyncio.ensure_future(_receive(reader, length))
                payload = await asyncio.wait_for(frame.reader, self.limits.read_seconds)
            except asyncio.CancelledError:
                if frame.dropped is None or asyncio.current_task().cancelling():
                    raise  # server shutdown, not a drop
                raise Rejected(frame.dropped)
            except asyncio.TimeoutError:
                raise Rejected(str(self.limits.exceeded("read_seconds", f"a frame of {length} bytes still arriving")))
            except (ssl.SSLError, ConnectionError) as exc:
                raise Rejected(f"transport error: {reason(exc)}", reply=False)
            frame.received = True
            return payload, await decode(payload)
        finally:
            await self.budget.release(frame)


async def _receive(reader: asyncio.StreamReader, length: int) -> bytes:
    """`length` bytes, gathered in a buffer this coroutine owns: a dropped frame frees it at once."""
    # Sized once (the budget has reserved `length`): growing by appends would copy, holding up to twice the frame.
    buffer, filled = bytearray(length), 0
    try:
        while filled < length:
            chunk = await reader.read(min(length - filled, _CHUNK))
            if not chunk:
                raise Rejected(f"truncated connection: {filled} of {length} payload bytes", reply=False)
            buffer[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return bytes(buffer)
    finally:
        # Now, not when the traceback of a drop (which references this frame) is collected.
        buffer.clear()


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


def reason(exc: BaseException) -> str:
    """A short description of a transport error."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__
