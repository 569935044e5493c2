"""Server-side request handling shared by every server role: decode and validate a
request, record it in the server's view, dispatch it, encode and record the reply."""

from __future__ import annotations

import time
from pathlib import Path

from protocol.codec import DEFAULT_MAX_BYTES
from protocol.errors import ProtocolError
from protocol.messages import ErrorReply, Hello, Message, ModeAccepted, decode_message, encode_message
from protocol.transcript import INBOUND, OUTBOUND, TranscriptWriter


class RecordingEndpoint:
    """Base of server roles: everything in and out lands in the transcript."""

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.workdir = Path(workdir)
        self.max_message_bytes = max_message_bytes
        self.transcript = TranscriptWriter(self.workdir)
        self.compute_seconds = 0.0
        # The training mode this endpoint serves (set by the host that opened it for a Hello).
        self.mode: str | None = None

    def handle_bytes(self, data: bytes) -> bytes:
        """Answer one encoded request; a protocol violation becomes an ErrorReply."""
        start = time.perf_counter()
        self.transcript.record(INBOUND, data)
        try:
            reply = self.handle(decode_message(data, self.max_message_bytes))
        except ProtocolError as exc:
            reply = ErrorReply(reason=str(exc))
        out = encode_message(reply)
        self.transcript.record(OUTBOUND, out)
        self.compute_seconds += time.perf_counter() - start
        return out

    def handle(self, message: Message) -> Message:
        """Answer one decoded request (subclasses handle their own types first)."""
        if isinstance(message, Hello):
            if message.mode != self.mode:
                raise ProtocolError(f"this device's server state holds training mode {self.mode!r}, "
                                    f"not {message.mode!r}")
            return ModeAccepted(mode=message.mode)
        raise ProtocolError(f"this endpoint does not accept {message.TYPE!r} requests")

    def close(self) -> None:
        """Release files."""
        self.transcript.close()
