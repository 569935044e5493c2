"""Wire messages: round trips and strict rejection of anything malformed."""

import json

import numpy as np
import pytest

from protocol.wire.codec import encode
from protocol.device.forward_device import new_sample_ids
from protocol.errors import ProtocolError
from protocol.modes.generation.messages import GenerationUpload
from protocol.wire.messages import (
    PROTOCOL_VERSION, ErrorReply, FetchWeights, FullUpload, SideWeights, TrainReport, TrainUntil, Upload,
    UploadAck, decode_message, encode_message,
)


def _upload(n: int = 3) -> Upload:
    rng = np.random.default_rng(0)
    return Upload(sample_ids=new_sample_ids(n), activations=rng.normal(size=(n, 2, 8)).astype(np.float16),
                  delta=rng.normal(size=(n, 2)).astype(np.float32), layers=(1, 2))


SAMPLES = [
    _upload(),
    FullUpload(sample_ids=new_sample_ids(2), activations=np.zeros((2, 2, 5, 8), np.float16),
               attention_mask=np.ones((2, 5), np.uint8), labels=np.array([0, 1])),
    UploadAck(stored=3, duplicates=1), TrainUntil(epochs_total=2), TrainReport(epochs_done=3, samples=10, loss=0.5),
    FetchWeights(), SideWeights(state={"w": np.ones((2, 3), np.float32)}, architecture={"rank": 4}),
    ErrorReply(reason="nope"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(message) -> None:
    decoded = decode_message(encode_message(message))
    assert type(decoded) is type(message)
    tensors, fields = decoded.parts()
    expected_tensors, expected_fields = message.parts()
    assert json.loads(json.dumps(fields)) == json.loads(json.dumps(expected_fields))
    assert tensors.keys() == expected_tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, expected_tensors[name])
        assert value.dtype == expected_tensors[name].dtype


def _raw(kind: str, tensors: dict, fields: dict, version: str = str(PROTOCOL_VERSION)) -> bytes:
    return encode(tensors, {"type": kind, "version": version, "fields": json.dumps(fields)})


def test_rejects_unknown_version_and_type() -> None:
    with pytest.raises(ProtocolError, match="version"):
        decode_message(_raw("fetch_weights", {}, {}, version="99"))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_message(_raw("rm_rf", {}, {}))


def test_rejects_extra_fields_wrong_dtype_shapes_and_nan() -> None:
    upload = _upload()
    tensors, fields = upload.parts()
    with pytest.raises(ProtocolError, match="differ from expected"):
        decode_message(_raw("upload", tensors, {**fields, "label": 1}))
    with pytest.raises(ProtocolError, match="dtype"):
        decode_message(_raw("upload", {**tensors, "delta": tensors["delta"].astype(np.float64)}, fields))
    with pytest.raises(ProtocolError, match="inconsistent shapes"):
        decode_message(_raw("upload", {**tensors, "delta": tensors["delta"][:2]}, fields))
    bad = tensors["activations"].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        decode_message(_raw("upload", {**tensors, "activations": bad}, fields))


def test_rejects_oversize_and_garbage() -> None:
    data = encode_message(_upload(50))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode_message(data, max_bytes=len(data) - 1)
    for garbage in (b"", b"\x01", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00[]"):
        with pytest.raises(ProtocolError):
            decode_message(garbage)


@pytest.mark.parametrize("activations, delta, layers", [
    ((3, 2, 8), (3, 0), (1, 2)),  # no class
    ((3, 2, 0), (3, 2), (1, 2)),  # no activation value
    ((3, 0, 8), (3, 2), ()),  # no layer
])
def test_rejects_uploads_that_describe_an_empty_network(activations, delta, layers) -> None:
    """Before, such an upload decoded and failed inside the server role while it sized the side network: not a
    protocol error, so the transport logged an internal error with its traceback (outside the peer log's
    rate limit) instead of answering with an error."""
    empty = Upload(sample_ids=new_sample_ids(3), activations=np.zeros(activations, np.float16),
                   delta=np.zeros(delta, np.float32), layers=layers)
    with pytest.raises(ProtocolError, match="at least one layer, one activation value and one Δ value"):
        decode_message(encode_message(empty))


@pytest.mark.parametrize("activations, layers", [((3, 2, 0), (1, 2)), ((3, 0, 8), ())])
def test_rejects_generation_uploads_that_describe_an_empty_network(activations, layers) -> None:
    empty = GenerationUpload(sample_ids=new_sample_ids(2), counts=np.array([2, 1], np.int64),
                             activations=np.zeros(activations, np.float16),
                             residual=np.zeros((3, activations[2]), np.float32), layers=layers)
    with pytest.raises(ProtocolError, match="at least one layer and one activation value"):
        decode_message(encode_message(empty))
