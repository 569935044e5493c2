"""Sending replies within a global budget for bytes not yet read, and a write timeout.

A reply stays in memory until the peer reads it, so a device that asks and never
reads (on every connection it may open) would make the server hold its replies for
as long as the connection lives. Each reply's frame is reserved in a server-wide budget
before it is written (`protocol.transport.budget`, the same policy as partial frames:
when it does not fit, larger unread replies are dropped first); one that still does not
fit is refused at once rather than held while it waits. A reply must be read within
`write_seconds`; a refused, dropped or slow reader's connection is aborted, which frees
its buffers at once.
"""

from __future__ import annotations

import asyncio
import ssl

from protocol.server.limits import ServerLimits
from protocol.wire.messages import ErrorReply, encode_message

FLUSH_POLL_SECONDS = 0.01
from protocol.transport.budget import PartialFrame, PartialFrameBudget
from protocol.transport.connections import Connection
from protocol.transport.framing import HEADER_BYTES, encode_frame
from protocol.transport.reading import Rejected, reason


class ReplySender:
    """Writes reply frames for every connection of one server, sharing its unsent-reply budget."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.budget = PartialFrameBudget(limits.max_unsent_reply_bytes, str(limits.exceeded(
            "max_unsent_replies_mib", "unread reply dropped to make room for a smaller one (largest first)")))
        self.peak = 0  # the most reply bytes ever held at once
        self.dropped = 0  # replies not delivered: no room in time, dropped for a smaller one, or not read in time

    async def send(self, writer: asyncio.StreamWriter, sequence: int, payload: bytes) -> None:
        """Write one reply frame and wait until the process holds none of it; Rejected (no reply possible)
        if it does not fit the budget, is dropped for a smaller one, or is not read in time."""
        frame = PartialFrame(HEADER_BYTES + len(payload))
        if not self.budget.try_reserve(frame):
            self.dropped += 1
            raise Rejected(str(self.limits.exceeded(
                "max_unsent_replies_mib", f"no room for a reply of {frame.size} bytes")), reply=False)
        self.peak = max(self.peak, self.budget.used)
        try:
            writer.write(encode_frame(sequence, payload, self.limits.max_frame_bytes))
            frame.reader = asyncio.ensure_future(_flushed(writer))
            if frame.dropped is not None:  # dropped between its reservation and its write
                frame.reader.cancel()
            await asyncio.wait_for(frame.reader, self.limits.write_seconds)
        except asyncio.CancelledError:
            if frame.dropped is None or asyncio.current_task().cancelling():
                raise  # server shutdown, not a drop
            self.dropped += 1
            raise Rejected(frame.dropped, reply=False)
        except asyncio.TimeoutError:
            self.dropped += 1
            raise Rejected(str(self.limits.exceeded("write_seconds", f"a reply of {frame.size} bytes not read")),
                           reply=False)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            raise Rejected(f"transport error: {reason(exc)}", reply=False)
        finally:
            await self.budget.release(frame)


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait until every byte written has been handed to the kernel."""
    await writer.drain()
    while unsent_bytes(writer.transport) > 0:
        await asyncio.sleep(FLUSH_POLL_SECONDS)


def unsent_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes written to `transport` that the process still holds. asyncio's TLS transport reports only
    its own buffer, and its `drain()` returns once the encrypted bytes have moved to the socket
    transport under it, where a whole reply can wait for a peer that never reads: both are counted."""
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return transport.get_write_buffer_size() + (inner.get_write_buffer_size() if inner is not None else 0)


async def send_error(writer: asyncio.StreamWriter, connection: Connection, why: str, max_frame_bytes: int) -> None:
    """Send an `ErrorReply`, best effort: the link may already be gone."""
    try:
        writer.write(encode_frame(connection.sent, encode_message(ErrorReply(reason=why)), max_frame_bytes))
        connection.sent += 1
        await asyncio.wait_for(writer.drain(), 5.0)
    except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
        pass


async def close_writer(writer: asyncio.StreamWriter, abort: bool) -> None:
    """Close a connection; bounded, because a TLS close waits for a peer that may never answer."""
    if abort:  # shutting down, or bytes the peer did not read: no TLS close_notify exchange
        writer.transport.abort()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        writer.transport.abort()  # its unsent bytes go now, not when the peer reads them
