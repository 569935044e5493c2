"""Property-based fuzzing of the frame decoder and the message decoder.

Over 10,000 generated inputs in total (see the `max_examples` settings): arbitrary
bytes, structurally valid headers with hostile fields, and bit-flipped valid messages;
plus 3,400 damaged frames spread over every registered message type
(`protocol.transport.fuzz`, which the abuse benchmark runs at 50,000+), through the
server's own decoding path.
The only exception allowed is ProtocolError. Allocation is bounded by construction (the
frame length is checked before reading, the safetensors header before loading); hostile
size fields are checked with tracemalloc (which sees numpy buffers) in a separate test,
because tracing every generated input would triple the run time.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.server.limits import ServerLimits
from protocol.wire.messages import Upload, decode_message, encode_message
from protocol.transport.framing import FRAME_VERSION, HEADER, MAGIC, decode_frame, encode_frame
from protocol.transport.fuzz import EXAMPLES, hostile_frames, registered_types, server_verdict

LIMIT = 1 << 20
# Decoding may copy the input a few times (bytes(), tensor views, JSON); never more.
ALLOCATION_SLACK = 256 * 1024
def fuzz(examples: int) -> settings:
    """Settings of one fuzz test: `examples` inputs, no deadline, no example database on disk."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None)

VALID = encode_message(Upload(sample_ids=np.arange(32, dtype=np.uint8).reshape(2, 16),
                              activations=np.ones((2, 3, 4), np.float16),
                              delta=np.zeros((2, 2), np.float32), layers=(1, 2, 3)))


def only_protocol_errors(decoder, data: bytes) -> None:
    try:
        decoder(data)
    except ProtocolError:
        pass


@fuzz(3000)
@given(st.binary(max_size=4096), st.integers(0, 3))
def test_frame_decoder_on_arbitrary_bytes(data: bytes, expected: int) -> None:
    only_protocol_errors(lambda d: decode_frame(d, expected, LIMIT), data)


@fuzz(2000)
@given(st.binary(min_size=3, max_size=3), st.integers(0, 255), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1), st.binary(max_size=512), st.booleans())
def test_frame_decoder_on_hostile_headers(magic: bytes, version: int, sequence: int, length: int,
                                          payload: bytes, plausible: bool) -> None:
    if plausible:
        magic, version = MAGIC, FRAME_VERSION
    data = HEADER.pack(magic, version, sequence, length) + payload
    only_protocol_errors(lambda d: decode_frame(d, 0, LIMIT), data)


@fuzz(2500)
@given(st.binary(max_size=4096))
def test_message_decoder_on_arbitrary_bytes(data: bytes) -> None:
    only_protocol_errors(lambda d: decode_message(d, LIMIT), data)


@fuzz(2500)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)))
def test_message_decoder_on_mutated_valid_messages(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for position, mask in flips:
        data[position] ^= mask
    only_protocol_errors(lambda d: decode_message(d, LIMIT), bytes(data[:cut]))


def test_valid_frame_round_trip() -> None:
    assert decode_frame(encode_frame(5, VALID), 5, LIMIT) == VALID


def _safetensors_claiming(shape: list[int], end: int) -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, end]},
                         "__metadata__": {"type": "upload", "version": "1", "fields": "{}"}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 64


HOSTILE = {
    "frame claims 4 GiB": (lambda d: decode_frame(d, 0, LIMIT), HEADER.pack(MAGIC, FRAME_VERSION, 0, 2**32 - 1)),
    "header length 2^63": (lambda d: decode_message(d, LIMIT), struct.pack("<Q", 2**63) + b"{}"),
    "tensor claims 2^40 floats": (lambda d: decode_message(d, LIMIT), _safetensors_claiming([2**20, 2**20], 2**42)),
    "tensor shape overflows": (lambda d: decode_message(d, LIMIT), _safetensors_claiming([2**62, 2**62], 64)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_size_fields_allocate_nothing_large(name: str) -> None:
    decoder, data = HOSTILE[name]
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decoder(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * len(data) + ALLOCATION_SLACK, f"{peak} bytes allocated for a {len(data)}-byte input"


def test_fuzzing_covers_every_registered_message_type() -> None:
    types = registered_types()  # every message module imported explicitly by protocol.transport.fuzz
    assert len(types) >= 15 and {"upload", "encrypted_upload", "he_fit_reply", "split_forward"} <= set(types)
    assert set(EXAMPLES) == set(types), "a registered message type has no fuzzing example"
    rng = np.random.default_rng(0)
    for name, example in EXAMPLES.items():
        assert decode_message(encode_message(example(rng))).TYPE == name


def test_damaged_frames_of_every_type_get_protocol_errors_only() -> None:
    limits = ServerLimits(max_frame_mib=1.0)
    verdicts: Counter = Counter()
    for name, frame in hostile_frames(np.random.default_rng(13), 200 * len(EXAMPLES), limits.max_frame_bytes):
        verdicts[name, server_verdict(frame, limits)] += 1  # anything but ProtocolError raises here
    assert {name for name, _ in verdicts} == set(registered_types())
    assert sum(n for (_, verdict), n in verdicts.items() if verdict == "rejected") > 0.9 * sum(verdicts.values())
