"""Server-side request handling shared by every server role: decode and validate a
request, admit it under the server's limits, record it in the server's view, dispatch
it, encode and record the reply.

Admission comes before recording: a request beyond a limit is answered with an
`ErrorReply` naming the limit, logged, and leaves the transcript and every store as
they were. The checks that do not depend on the role (an upload's own shape and size,
the samples the device would hold, the device's disk and memory quotas) live here, so
every role served over the network gets them; a role adds its own by extending `admit`
and declares what a request adds to its disk and memory (`disk_added`, `memory_held_after`).
A role may carry out a short form as the full request it stands for (`carried_out_as`: a boosting
round's refreshed targets are the upload of round 1's states with them), and the full request is then
what is admitted and recorded. A request the role refuses after admission, or that does not decode,
is recorded by kind, digest and size only (it changed nothing); a reply identical to the last one
of its kind is recorded by its digest.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.errors import ProtocolError
from protocol.server.limits import ServerLimits, admit_upload
from protocol.server.quotas import REPLY_ALLOWANCE, REQUEST_COPIES, DeviceQuota
from protocol.wire.messages import (
    ErrorReply, Hello, Message, ModeAccepted, RecordedDigest, ResentUpload, decode_message, encode_message,
)
from protocol.server.transcript import INBOUND, OUTBOUND, TranscriptWriter, digest_record

log = logging.getLogger("secure_assist.server")


class ServerStopping(ProtocolError):
    """The server is shutting down: the request was not (or not entirely) carried out."""


class RecordingEndpoint:
    """Base of server roles: everything admitted in and everything out lands in the transcript.

    `limits` None: no limits beyond decoding (in-process runs, where the device is this
    process). `stop`: set by the hosting server on shutdown; long work checks it between steps.
    """

    requires_hello = False  # a bare role serves without a Hello; `ModeHost` requires one per connection

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES,
                 limits: ServerLimits | None = None, stop: threading.Event | None = None) -> None:
        self.workdir = Path(workdir)
        self.max_message_bytes = max_message_bytes
        self.limits = limits
        self.stop = stop if stop is not None else threading.Event()
        self.transcript = TranscriptWriter(self.workdir)
        self.quota = DeviceQuota(self.workdir, limits) if limits is not None else None
        self.compute_seconds = 0.0
        self._last_reply: tuple[Message, bytes] | None = None
        # The training mode this endpoint serves (set by the host that opened it for a Hello).
        self.mode: str | None = None
        # Round 1's state directory when this endpoint serves a later boosting round (set by the host).
        self.first_round: Path | None = None

    def handle_bytes(self, data: bytes) -> bytes:
        """Answer one encoded request; a protocol violation becomes an ErrorReply."""
        try:
            message = decode_message(data, self.max_message_bytes)
        except ProtocolError as exc:
            self.transcript.record(INBOUND, digest_record("undecodable", "refused", data))
            return self._record_reply(ErrorReply(reason=str(exc)))
        return self.handle_message(message, data)

    def handle_message(self, message: Message, data: bytes) -> bytes:
        """Answer one request already decoded from `data` (its wire form)."""
        start = time.perf_counter()
        try:
            self.check_stop()
            message, data = self.carried_out_as(message, data)
            self.admit(message)
            self.admit_bytes(message, len(data))
        except ProtocolError as exc:
            log.warning("%s: refused %r: %s", self.workdir.name[:16], message.TYPE, exc)
            return encode_message(ErrorReply(reason=str(exc)))  # not recorded: nothing changed
        # Recorded before it is carried out, so a crash cannot store what the view lacks.
        record = self.transcript.record(INBOUND, self.recorded_form(message, data))
        try:
            reply = self.handle(message)
        except ProtocolError as exc:
            # Refused by the role, which changes nothing before it refuses: the digest is the whole
            # record. Work cut short by a shutdown may have changed state: its record stays whole.
            if not isinstance(exc, ServerStopping):
                self.transcript.replace_from(record, INBOUND, digest_record(message.TYPE, "refused", data))
            reply = ErrorReply(reason=str(exc))
        out = self._record_reply(reply)
        self.compute_seconds += time.perf_counter() - start
        return out

    def carried_out_as(self, message: Message, data: bytes) -> tuple[Message, bytes]:
        """The request carried out for `message` and its wire form: the message itself, or for a short form
        the full request it stands for (roles), which is then admitted, recorded and handled in its place."""
        return message, data

    def admit(self, message: Message) -> None:
        """Raise ProtocolError (LimitExceeded for limits) for a request that must change nothing."""
        if isinstance(message, (ResentUpload, RecordedDigest)):  # forged, it would put a false record in the view
            raise ProtocolError(f"{message.TYPE} is a transcript record, never a request")
        if admit_upload(message, self.limits) is not None and self.limits is not None:
            self.limits.check_samples_held(self.samples_after(message))

    def admit_bytes(self, message: Message, size: int) -> None:
        """The device's disk and memory quotas after `message` (`size` bytes on the wire) is carried out."""
        if self.quota is None:
            return
        what = f"request {message.TYPE!r}"
        self.quota.check_disk(REQUEST_COPIES * size + REPLY_ALLOWANCE + self.disk_added(message), what)
        self.quota.check_memory(self.memory_held_after(message), what)

    def disk_added(self, message: Message) -> int:
        """Bytes `message` adds to the device's directory beyond its own copies and a small reply
        (roles that build networks or send large replies)."""
        return 0

    def memory_held_after(self, message: Message) -> int:
        """Bytes the server holds for this device once `message` is carried out (roles that hold state)."""
        return 0

    def samples_after(self, message: Message) -> int:
        """How many samples this device's store would hold after `message` (roles that store samples)."""
        return 0

    def recorded_form(self, message: Message, data: bytes) -> bytes:
        """What the transcript keeps of an admitted request: its wire form (roles may record less of a repeat)."""
        return data

    def handle(self, message: Message) -> Message:
        """Answer one decoded request (subclasses handle their own types first)."""
        if isinstance(message, Hello):
            if message.mode != self.mode:
                raise ProtocolError(f"this device's server state holds training mode {self.mode!r}, "
                                    f"not {message.mode!r}")
            return ModeAccepted(mode=message.mode)
        raise ProtocolError(f"this endpoint does not accept {message.TYPE!r} requests")

    def check_stop(self) -> None:
        """Raise ServerStopping once the hosting server shuts down (call between units of long work)."""
        if self.stop.is_set():
            raise ServerStopping("server is shutting down; retry later")

    def close(self) -> None:
        """Release files and the device's memory reservation."""
        self.transcript.close()
        if self.quota is not None:
            self.quota.release()

    def _record_reply(self, reply: Message) -> bytes:
        # A role answers a repeated request with the same reply object (e.g. cached weights): its
        # encoding is reused, so the repeat costs no encoding and is recognised by its digest
        # (encoding the same message twice need not give the same bytes: header key order).
        if self._last_reply is not None and self._last_reply[0] is reply:
            out = self._last_reply[1]
        else:
            out = encode_message(reply)
            self._last_reply = (reply, out)
        self.transcript.record_once(OUTBOUND, reply.TYPE, out)
        return out
