"""Generated hostile frames for every registered message type (CI fuzz tests and the abuse benchmark).

`protocol.wire.messages.MESSAGE_TYPES` lists every message type explicitly, so the registry is
complete whatever the caller imported before; `EXAMPLES` holds one valid-message factory per
registered type, and a test checks that the two lists match, so a new type cannot go unfuzzed. Each generated frame
starts from a valid message of one type and is then damaged in one way: bit flips, a cut,
hostile scalar fields (huge integers, deep nesting, wrong types), a replaced tensor (wrong
dtype or shape, NaN), a hostile safetensors header, or hostile frame-header fields. The
server's own decoding path (`decode_frame`, then `decode_request`) must either accept the
frame or raise ProtocolError; anything else is a bug that would skip the error reply.
"""

from __future__ import annotations

import json
import struct
from typing import Callable, Iterator

import numpy as np

import protocol.modes.generation.messages as gen
import protocol.modes.ckks_ridge.messages as he
import protocol.modes.pooled.messages as pooled
import protocol.wire.split_messages as split
from protocol.wire import messages as plain
from protocol.wire.codec import encode
from protocol.errors import ProtocolError
from protocol.server.limits import ServerLimits
from protocol.wire.messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message, encode_message
from protocol.transport.framing import FRAME_VERSION, HEADER, MAGIC, decode_frame, encode_frame
from protocol.transport.reading import decode_request

Rng = np.random.Generator


def _ids(rng: Rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 16), dtype=np.uint8)


def _floats(rng: Rng, *shape: int, dtype: str = "float32") -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _bytes(rng: Rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, n, dtype=np.uint8)


# One valid instance per registered type, small enough to fuzz tens of thousands of times.
EXAMPLES: dict[str, Callable[[Rng], Message]] = {
    plain.Upload.TYPE: lambda r: plain.Upload(sample_ids=_ids(r, 2), activations=_floats(r, 2, 3, 4, dtype="float16"),
                                              delta=_floats(r, 2, 2), layers=(1, 2, 3)),
    plain.RefreshedTargets.TYPE: lambda r: plain.RefreshedTargets(sample_ids=_ids(r, 2), counts=np.array([1, 2], np.int64),
                                                                  targets=_floats(r, 3, 4)),
    plain.ResentUpload.TYPE: lambda r: plain.ResentUpload(sample_ids=_ids(r, 2), sha256="ab" * 32, wire_bytes=1000),
    plain.RecordedDigest.TYPE: lambda r: plain.RecordedDigest(kind="upload", outcome="refused", sha256="ab" * 32,
                                                              wire_bytes=1000),
    plain.Hello.TYPE: lambda r: plain.Hello(mode="pooled", pool="clinics"),
    plain.ModeAccepted.TYPE: lambda r: plain.ModeAccepted(mode="ckks_ridge"),
    plain.FullUpload.TYPE: lambda r: plain.FullUpload(sample_ids=_ids(r, 2), activations=_floats(r, 2, 2, 3, 4),
                                                      attention_mask=np.ones((2, 3), np.uint8),
                                                      labels=np.array([0, 1], np.int64)),
    plain.UploadAck.TYPE: lambda r: plain.UploadAck(stored=2, duplicates=1),
    plain.TrainUntil.TYPE: lambda r: plain.TrainUntil(epochs_total=5),
    plain.TrainReport.TYPE: lambda r: plain.TrainReport(epochs_done=5, samples=2, loss=0.25),
    plain.FetchWeights.TYPE: lambda r: plain.FetchWeights(),
    plain.SideWeights.TYPE: lambda r: plain.SideWeights(state={"head.weight": _floats(r, 2, 4)},
                                                        architecture={"n_layers": 1, "hidden_size": 4}),
    plain.ErrorReply.TYPE: lambda r: plain.ErrorReply(reason="no"),
    he.EncryptedUpload.TYPE: lambda r: he.EncryptedUpload(sample_ids=_ids(r, 2), activations=_floats(r, 2, 3, 4),
                                                          ciphertexts=_bytes(r, 10),
                                                          ciphertext_sizes=np.array([4, 6], np.int64),
                                                          public_context=_bytes(r, 32), layers=(1, 2, 3)),
    he.HeFitRequest.TYPE: lambda r: he.HeFitRequest(public_context=_bytes(r, 32), n_features=4, ridge=10.0),
    he.HeFitReply.TYPE: lambda r: he.HeFitReply(input_mean=_floats(r, 6), input_scale=_floats(r, 6),
                                                components=_floats(r, 2, 6), ciphertexts=_bytes(r, 12),
                                                ciphertext_sizes=np.array([2] * 6, np.int64)),
    split.SplitForward.TYPE: lambda r: split.SplitForward(sample_ids=_ids(r, 2), activations=_floats(r, 2, 3, 4),
                                                          attention_mask=np.ones((2, 3), np.uint8), cut_layer=1),
    split.SplitActivations.TYPE: lambda r: split.SplitActivations(activations=_floats(r, 2, 3, 4)),
    split.SplitBackward.TYPE: lambda r: split.SplitBackward(sample_ids=_ids(r, 2),
                                                            output_gradients=_floats(r, 2, 3, 4)),
    split.CutGradients.TYPE: lambda r: split.CutGradients(gradients=_floats(r, 2, 3, 4)),
    gen.GenerationUpload.TYPE: lambda r: gen.GenerationUpload(sample_ids=_ids(r, 2), counts=np.array([2, 1], np.int64),
                                                              activations=_floats(r, 3, 2, 4, dtype="float16"),
                                                              residual=_floats(r, 3, 4), layers=(1, 2)),
    gen.HeadGram.TYPE: lambda r: gen.HeadGram(gram=np.eye(4, dtype=np.float32)),
    pooled.PoolPending.TYPE: lambda r: pooled.PoolPending(ready=2, quorum=5, retry_seconds=0.5, wait_left_seconds=60.0),
}

# JSON texts spliced in place of one scalar field's value.
HOSTILE_JSON = ("9" * 5000, "-" + "1" * 4400, "[" * 50 + "]" * 50, "-123456789012", str(2**64 + 5), "1e400", "NaN",
                "-Infinity", "1.5", '"x"', "null", "true", '{"nested": [1, {"a": null}]}', "[]")


def registered_types() -> dict[str, type[Message]]:
    """Every registered message type (all message modules are imported by this module)."""
    return dict(MESSAGE_TYPES)


def _raw(message: Message, fields_json: str | None = None, tensors: dict[str, np.ndarray] | None = None,
         metadata: dict[str, str] | None = None) -> bytes:
    """A message encoded with its parts replaced (no validation on this side)."""
    own_tensors, scalars = message.parts()
    meta = {"type": message.TYPE, "version": str(PROTOCOL_VERSION),
            "fields": json.dumps(scalars) if fields_json is None else fields_json, **(metadata or {})}
    return encode(own_tensors if tensors is None else tensors, meta)


def _hostile_fields(rng: Rng, message: Message) -> bytes:
    scalars = {name: json.dumps(value) for name, value in message.parts()[1].items()} or {"extra": "0"}
    name = list(scalars)[int(rng.integers(len(scalars)))]
    choice = int(rng.integers(len(HOSTILE_JSON) + 2))
    if choice == len(HOSTILE_JSON):
        return _raw(message, fields_json="[" * 100_000 + "]" * 100_000)  # RecursionError in json
    if choice == len(HOSTILE_JSON) + 1:
        scalars.pop(name)
    else:
        scalars[name] = HOSTILE_JSON[choice]
    return _raw(message, fields_json="{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in scalars.items()) + "}")


def _hostile_tensor(rng: Rng, message: Message) -> bytes:
    tensors = dict(message.parts()[0]) or {"extra": np.zeros(1, np.float32)}
    name = list(tensors)[int(rng.integers(len(tensors)))]
    dtype = ["uint8", "int64", "float16", "float32", "float64", "bool"][int(rng.integers(6))]
    shape = tuple(int(s) for s in rng.integers(0, 4, int(rng.integers(0, 5))))
    replacement = np.zeros(shape, dtype)
    if replacement.size and replacement.dtype.kind == "f" and rng.random() < 0.5:
        replacement.flat[0] = np.nan
    tensors[name] = replacement
    return _raw(message, tensors=tensors)


def _hostile_header(rng: Rng, message: Message) -> bytes:
    kind = int(rng.integers(4))
    meta = {"type": message.TYPE, "version": str(PROTOCOL_VERSION), "fields": "{}"}
    if kind == 0:
        header = "[" * 100_000 + "]" * 100_000
    elif kind == 1:
        header = json.dumps({"x": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 64]},
                             "__metadata__": meta})
    elif kind == 2:  # an integer past Python's int-string limit
        header = ('{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, ' + "7" * 5000 + ']}, "__metadata__": '
                  + json.dumps(meta) + "}")
    else:
        meta["type"] = ["", "unknown", message.TYPE.upper()][int(rng.integers(3))]
        meta["version"] = str(int(rng.integers(0, 3)))
        header = json.dumps({"__metadata__": meta})
    data = header.encode()
    return struct.pack("<Q", len(data)) + data + bytes(int(rng.integers(0, 64)))


def _flipped(rng: Rng, data: bytes) -> bytes:
    damaged = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        damaged[int(rng.integers(len(damaged)))] ^= int(rng.integers(1, 256))
    return bytes(damaged)


def hostile_frames(rng: Rng, count: int, max_frame_bytes: int) -> Iterator[tuple[str, bytes]]:
    """`count` damaged frames (type name, frame bytes), cycling through every registered type."""
    names = sorted(EXAMPLES)
    for index in range(count):
        name = names[index % len(names)]
        message = EXAMPLES[name](rng)
        valid = encode_message(message)
        kind = int(rng.integers(6))
        if kind == 0:
            payload = _flipped(rng, valid)
        elif kind == 1:
            payload = valid[:int(rng.integers(len(valid)))]
        elif kind == 2:
            payload = _hostile_fields(rng, message)
        elif kind == 3:
            payload = _hostile_tensor(rng, message)
        elif kind == 4:
            payload = _hostile_header(rng, message)
        else:
            length = [len(valid), int(rng.integers(0, 2**32)), max_frame_bytes + 1][int(rng.integers(3))]
            magic = MAGIC if rng.random() < 0.7 else bytes(_bytes(rng, 3))
            version = FRAME_VERSION if rng.random() < 0.7 else int(rng.integers(0, 256))
            header = HEADER.pack(magic, version, int(rng.integers(0, 2)), length)
            yield name, header + valid
            continue
        yield name, encode_frame(0, payload, max_frame_bytes=2**32 - 1)


def server_verdict(frame: bytes, limits: ServerLimits) -> str:
    """"accepted" or "rejected" by the server's decoding path; any other exception propagates (a bug)."""
    try:
        payload = decode_frame(frame, 0, limits.max_frame_bytes)
        decode_request(payload, limits)
    except ProtocolError:
        return "rejected"
    return "accepted"

