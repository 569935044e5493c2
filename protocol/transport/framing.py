"""Versioned, length-prefixed, sequence-numbered frames.

A frame is a 16-byte header followed by the payload (one `protocol.wire.messages` wire blob):
    magic b"PAE" | version u8 | sequence u64 | payload length u32      (big-endian)
The length is checked against the configured maximum *before* any buffer is allocated.
Each direction of a connection numbers its frames 0, 1, 2, ...; a receiver accepts only
the next number, so a replayed, dropped or reordered frame is a protocol error. (TLS
already rejects replayed or reordered records from the network; the frame numbers also
catch them from a buggy or malicious peer, and on the plain-TCP channel used as the
overhead reference.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from protocol.errors import ProtocolError

MAGIC = b"PAE"
FRAME_VERSION = 1
HEADER = struct.Struct(">3sBQI")
HEADER_BYTES = HEADER.size
# The largest payload a 32-bit length can name; configured limits must stay below it.
MAX_LENGTH_FIELD = 2**32 - 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FrameHeader:
    """A parsed, validated frame header."""

    sequence: int
    length: int


def encode_frame(sequence: int, payload: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Header + payload; refuses to send what the peer would refuse to receive."""
    if len(payload) > max_frame_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the frame limit of {max_frame_bytes}")
    return HEADER.pack(MAGIC, FRAME_VERSION, sequence, len(payload)) + payload


def parse_header(header: bytes, expected_sequence: int, max_frame_bytes: int) -> FrameHeader:
    """Validate a frame header; raise ProtocolError on any deviation."""
    if len(header) != HEADER_BYTES:
        raise ProtocolError(f"frame header is {len(header)} bytes, expected {HEADER_BYTES}")
    magic, version, sequence, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic (not a PAE frame)")
    if version != FRAME_VERSION:
        raise ProtocolError(f"unsupported frame version {version}")
    if sequence != expected_sequence:
        kind = "replayed" if sequence < expected_sequence else "out-of-order"
        raise ProtocolError(f"{kind} frame: sequence {sequence}, expected {expected_sequence}")
    if length > max_frame_bytes:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame_bytes}")
    return FrameHeader(sequence=sequence, length=length)


def decode_frame(data: bytes, expected_sequence: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """The payload of one complete frame held in memory (used by tests and fuzzing)."""
    header = parse_header(data[:HEADER_BYTES], expected_sequence, max_frame_bytes)
    payload = data[HEADER_BYTES:]
    if len(payload) != header.length:
        raise ProtocolError(f"frame payload is {len(payload)} bytes, header says {header.length}")
    return payload
