"""Hostile clients of `secure-assist serve`: the attacks of issue 13, each bounded in size and time.

One implementation serves the regression tests (`tests/test_transport_abuse.py`) and the abuse
benchmark (`benchmarks/transport_abuse.py`). Authenticated attacks use an allow-listed
identity over a raw TLS link, so they can send what `NetworkChannel` never would: half a
frame, a message with zero samples, hostile metadata. Loopback use only.
"""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np

from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.messages import PROTOCOL_VERSION, Message, Upload, decode_message
from protocol.transport.client import _Link
from protocol.transport.framing import HEADER, HEADER_BYTES, MAGIC, FRAME_VERSION, encode_frame, parse_header
from protocol.transport.identity import KeyDirectory

Address = tuple[str, int]


def connect(address: Address, keys: KeyDirectory, name: str, timeout: float = 10.0) -> _Link:
    """An authenticated TLS link of device `name` that sends raw frames."""
    context, pinned = keys.device_context(name)
    return _Link(*address, context, pinned, timeout=timeout)


def read_reply(link: _Link, sequence: int = 0) -> Message:
    """The next reply frame's message."""
    header = parse_header(link.recv_exact(HEADER_BYTES), sequence, 2**32 - 1)
    return decode_message(link.recv_exact(header.length))


def exchange(link: _Link, payload: bytes, sequence: int = 0) -> Message:
    """Send one frame carrying `payload`, return the reply."""
    link.send(encode_frame(sequence, payload, max_frame_bytes=2**32 - 1))
    return read_reply(link, sequence)


def outcome(link: _Link, sequence: int = 0) -> str:
    """What the server did with a link: the ErrorReply's reason, or how the link ended."""
    try:
        reply = read_reply(link, sequence)
    except (ConnectionError, OSError, ProtocolError) as exc:
        return f"closed ({type(exc).__name__})"
    return getattr(reply, "reason", f"answered {reply.TYPE}")


def flood_descriptors(address: Address, count: int) -> list[socket.socket]:
    """`count` plain TCP connections that never start TLS (the caller closes them)."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(address, timeout=2.0))
        except OSError:  # the backlog is full: what is open already holds the server's descriptors
            break
    return sockets


def synthetic_upload(samples: int, layers: int, width: int, classes: int = 2, seed: int = 0) -> Upload:
    """An upload of random values with this shape (zero samples: a few hundred bytes, whatever the width)."""
    rng = np.random.default_rng(seed)
    return Upload(sample_ids=rng.integers(0, 256, (samples, 16), dtype=np.uint8),
                  activations=rng.standard_normal((samples, layers, width)).astype(np.float16),
                  delta=rng.standard_normal((samples, classes)).astype(np.float32),
                  layers=tuple(range(1, layers + 1)))


def huge_header_message(size: int) -> bytes:
    """A malformed message whose JSON header is ~`size` bytes of numbers: slow to parse, never valid."""
    numbers = ",".join(["1"] * (size // 2))
    header = ('{"__metadata__": {"type": "upload", "version": "%d", "fields": "{}"}, "pad": [%s]}'
              % (PROTOCOL_VERSION, numbers)).encode()
    return struct.pack("<Q", len(header)) + header


def hostile_json_messages() -> dict[str, bytes]:
    """Messages that made the old decoder raise something other than ProtocolError."""
    meta = {"type": "train_until", "version": str(PROTOCOL_VERSION)}
    deep = "[" * 100_000 + "]" * 100_000
    header = ('{"__metadata__": {"type": "fetch_weights", "version": "%d", "fields": "{}"}, "x": %s}'
              % (PROTOCOL_VERSION, deep)).encode()
    return {
        "5000-digit integer field": encode({}, {**meta, "fields": '{"epochs_total": ' + "9" * 5000 + "}"}),
        "100,000-deep fields": encode({}, {**meta, "fields": deep}),
        "100,000-deep header": struct.pack("<Q", len(header)) + header,
    }


def hold_partial_frames(address: Address, keys: KeyDirectory, name: str, connections: int, declared: int,
                        sent: int, timeout: float = 10.0) -> list[_Link]:
    """Open `connections` links as `name`, each sending a frame header for `declared` bytes and
    then only `sent` of them, and stall; return the links (the caller reads their outcome and closes)."""
    links = [connect(address, keys, name, timeout) for _ in range(connections)]

    def send_part(link: _Link) -> None:
        try:
            link.send(HEADER.pack(MAGIC, FRAME_VERSION, 0, declared) + bytes(sent))
        except OSError:  # the server stopped reading (it refused or dropped the frame): the attack is over
            pass

    threads = [threading.Thread(target=send_part, args=(link,), daemon=True) for link in links]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return links
