"""The server's view: every message it received or sent, what it cached, and φ.

The server writes its view into its work directory as it goes (0700 directory, 0600 files):
  transcript.log            length-prefixed records (direction byte, u64 length, message): what
                            the server accepted and sent. An upload re-sent with samples the cache
                            already held is recorded as a `ResentUpload` (ids, SHA-256, size); a
                            request refused inside the server's role, one that did not decode, and a
                            reply identical to one already recorded as a `RecordedDigest` (kind,
                            SHA-256, size): none of them costs a second full copy
  cache.sqlite              the activation cache
  side_network.safetensors  the latest trained φ
`ServerView` reads that directory back. It is the single input of every attack,
which therefore sees exactly what the server process saw and nothing else.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from protocol.server.cache import ActivationCache
from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.errors import ProtocolError, UserInputError
from protocol.files import open_private_append, private_dir
from protocol.wire.messages import Hello, Message, RecordedDigest, ResentUpload, decode_message, encode_message

TRANSCRIPT_FILE = "transcript.log"
CACHE_FILE = "cache.sqlite"
SIDE_NETWORK_FILE = "side_network.safetensors"
INBOUND, OUTBOUND = 0, 1

# What a server view can hold, by name: a training mode declares the fields its views hold
# and an attack the fields it needs, so a view that should hold a field but does not is an
# error (the audit fails closed) rather than a silent "not applicable".
PIVOT_ACTIVATIONS = "pivot_activations"  # one state per uploaded layer and sample
DELTA = "delta"  # the plaintext (possibly noised or masked) prediction difference
SIDE_NETWORK = "side_network"  # φ, trained and kept by the server in the clear
ENCRYPTED_HEAD = "encrypted_head"  # the CKKS head: the server computed enc(W) and its feature map
FULL_ACTIVATIONS = "full_activations"  # every token's states (MobiLLM-style, split learning)
GRADIENTS = "gradients"  # output gradients (split learning)
# Generation tasks: states at every loss position, r_t there, and the server's hidden-space correction.
ANSWER_ACTIVATIONS = "answer_activations"
RESIDUAL = "residual"
HIDDEN_CORRECTION = "hidden_correction"
VIEW_FIELDS = (PIVOT_ACTIVATIONS, DELTA, SIDE_NETWORK, ENCRYPTED_HEAD, FULL_ACTIVATIONS, GRADIENTS, ANSWER_ACTIVATIONS,
               RESIDUAL, HIDDEN_CORRECTION)
_RECORD = struct.Struct("<BQ")
# Records this small are kept verbatim even when repeated: their digest would not be smaller.
_DIGEST_WORTHY_BYTES = 512


class TranscriptWriter:
    """Appends every message the server handles, flushed per record so a crash loses none."""

    def __init__(self, workdir: Path) -> None:
        private_dir(workdir)
        self._file: BinaryIO = open_private_append(workdir / TRANSCRIPT_FILE)
        self._last: dict[str, str] = {}  # kind -> digest of the last large message recorded in full by `record_once`

    def record(self, direction: int, data: bytes) -> int:
        """Append one message in wire form; return where its record starts (see `replace_from`)."""
        start = self._file.seek(0, 2)
        self._file.write(_RECORD.pack(direction, len(data)))
        self._file.write(data)
        self._file.flush()
        return start

    def record_once(self, direction: int, kind: str, data: bytes) -> None:
        """Append a message, or only its digest if it repeats the last message of its kind recorded
        here (a reply sent again with nothing changed in between: the view holds it already, a
        second copy would only fill the disk)."""
        if len(data) <= _DIGEST_WORTHY_BYTES:
            self.record(direction, data)
            return
        digest = hashlib.sha256(data).hexdigest()
        if self._last.get(kind) == digest:
            self.record(direction, digest_record(kind, "repeated", data))
        else:
            self.record(direction, data)
            self._last[kind] = digest

    def replace_from(self, start: int, direction: int, data: bytes) -> None:
        """Drop every record from `start` (a `record` return value) and append `data` instead."""
        self._file.truncate(start)
        self.record(direction, data)

    def close(self) -> None:
        """Close the log file."""
        self._file.close()


def digest_record(kind: str, outcome: str, data: bytes) -> bytes:
    """The wire form of a `RecordedDigest` standing for the message `data` of type `kind`."""
    return encode_message(RecordedDigest(kind=kind, outcome=outcome, sha256=hashlib.sha256(data).hexdigest(),
                                         wire_bytes=len(data)))


@dataclass(frozen=True)
class RecordedMessage:
    """One transcript entry."""

    direction: int
    message: Message
    size: int  # bytes on the wire (for a `ResentUpload` or `RecordedDigest`, those of the message it stands for)


class ServerView:
    """Read-only access to everything an honest-but-curious server holds."""

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.workdir = Path(workdir)
        if not (self.workdir / TRANSCRIPT_FILE).is_file():
            raise UserInputError(f"{self.workdir} holds no server transcript ({TRANSCRIPT_FILE})")
        self._max = max_message_bytes

    def messages(self) -> Iterator[RecordedMessage]:
        """Every recorded message, in order, decoded and validated."""
        with open(self.workdir / TRANSCRIPT_FILE, "rb") as log:
            while header := log.read(_RECORD.size):
                if len(header) < _RECORD.size:
                    raise ProtocolError("transcript ends inside a record header")
                direction, size = _RECORD.unpack(header)
                if direction not in (INBOUND, OUTBOUND) or size > self._max:
                    raise ProtocolError("corrupt transcript record")
                data = log.read(size)
                if len(data) != size:
                    raise ProtocolError("transcript ends inside a record")
                message = decode_message(data, self._max)
                if isinstance(message, (ResentUpload, RecordedDigest)):
                    size = message.wire_bytes
                yield RecordedMessage(direction, message, size)

    def received(self, kind: type[Message]) -> list[Message]:
        """Inbound messages of one type."""
        return [r.message for r in self.messages() if r.direction == INBOUND and isinstance(r.message, kind)]

    def mode(self) -> str | None:
        """The training mode the device named (its first `Hello`), None for views without one
        (the MobiLLM-style and split-learning baselines)."""
        return next((r.message.mode for r in self.messages()
                     if r.direction == INBOUND and isinstance(r.message, Hello)), None)

    def cache_contents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, activations, delta) as stored in the server's cache."""
        cache = ActivationCache(self.workdir / CACHE_FILE)
        try:
            return cache.load_all()
        finally:
            cache.close()

    @property
    def side_network_path(self) -> Path:
        """Where the server keeps its trained φ."""
        return self.workdir / SIDE_NETWORK_FILE
