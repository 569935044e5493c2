"""Bytes <-> (tensors, metadata) with safetensors, bounded and validated.

Every message on the wire, in the transcript and in saved models is a safetensors
blob: explicit dtype and shape per tensor, a JSON string map as metadata, and no
code execution on load (never pickle). The header is parsed here first so a peer
cannot make us allocate more than `max_bytes` or hand us a malformed header.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from protocol.errors import ProtocolError

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# The JSON header of a wire message names a few tensors and scalars (a few KiB); a peer must not
# make the server parse megabytes of JSON. Files (models, checkpoints) are not bounded by this.
MAX_MESSAGE_HEADER_BYTES = 1024 * 1024
_HEADER_LEN = struct.Struct("<Q")


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialize tensors (contiguous copies) and string metadata."""
    contiguous = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    return save(contiguous, metadata=metadata)


def read_metadata(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_header_bytes: int | None = None) -> dict[str, str]:
    """The metadata map of a safetensors blob, after bounds checks on the blob and its header."""
    if len(data) > max_bytes:
        raise ProtocolError(f"blob of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < _HEADER_LEN.size:
        raise ProtocolError("blob shorter than its header length field")
    (header_len,) = _HEADER_LEN.unpack_from(data)
    if header_len > len(data) - _HEADER_LEN.size:
        raise ProtocolError("header length points past the end of the blob")
    if max_header_bytes is not None and header_len > max_header_bytes:
        raise ProtocolError(f"header of {header_len} bytes exceeds the limit of {max_header_bytes}")
    try:
        header = json.loads(data[_HEADER_LEN.size:_HEADER_LEN.size + header_len])
    except (ValueError, RecursionError) as exc:  # also huge integers and deep nesting, not only bad syntax
        raise ProtocolError(f"header is not usable JSON: {str(exc)[:200]}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ProtocolError("metadata must map strings to strings")
    return metadata


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
           max_header_bytes: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors blob; any malformation is a ProtocolError."""
    metadata = read_metadata(data, max_bytes, max_header_bytes)
    try:
        tensors = load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed tensor payload: {exc}") from exc
    return tensors, metadata
