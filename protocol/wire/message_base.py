"""The base of every wire message and the field validators message types share.

A message is a frozen dataclass with a `TYPE` name that maps itself to tensors and
JSON scalars (`parts`) and back, validating everything (`from_parts`). The one
registry of message types is `protocol.wire.messages.MESSAGE_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
SAMPLE_ID_BYTES = 16


def _tensor(tensors: dict[str, np.ndarray], name: str, dtypes: tuple[str, ...], ndim: int,
            finite: bool = False) -> np.ndarray:
    if name not in tensors:
        raise ProtocolError(f"missing tensor {name!r}")
    value = tensors[name]
    if value.dtype.name not in dtypes:
        raise ProtocolError(f"tensor {name!r} has dtype {value.dtype.name}, expected {dtypes}")
    if value.ndim != ndim:
        raise ProtocolError(f"tensor {name!r} has {value.ndim} dims, expected {ndim}")
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ProtocolError(f"tensor {name!r} contains NaN or inf")
    return value


def _exact_keys(kind: str, found: set[str], expected: set[str]) -> None:
    if found != expected:
        raise ProtocolError(f"{kind}: fields {sorted(found)} differ from expected {sorted(expected)}")


def _int_field(meta: dict[str, object], name: str, low: int = 0) -> int:
    value = meta.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ProtocolError(f"field {name!r} must be an integer >= {low}")
    return value


@dataclass(frozen=True)
class Message:
    """Base class: subclasses name their TYPE and map themselves to tensors + scalars."""

    TYPE: ClassVar[str] = ""

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """Tensor fields and JSON-able scalar fields."""
        return {}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "Message":
        """Rebuild and validate; raise ProtocolError on anything unexpected."""
        _exact_keys(cls.TYPE, set(tensors) | set(meta), set())
        return cls()


def _check_ids(ids: np.ndarray) -> None:
    if ids.ndim != 2 or ids.shape[1] != SAMPLE_ID_BYTES or ids.dtype != np.uint8:
        raise ProtocolError(f"sample_ids must be uint8 of shape (n, {SAMPLE_ID_BYTES})")
