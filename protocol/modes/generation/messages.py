"""Wire messages of the generation mode, listed in `protocol.wire.messages.MESSAGE_TYPES`.

Per sample the device sends only the positions involved in the loss (those whose
next token is an answer token): the selected layers' states there and the difference
signal r_t = W_Uᵀ(onehot(y_t) − softmax(z_t)) ∈ R^d. Positions of all samples are
stacked row-wise; `counts` says how many rows each sample owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol.errors import ProtocolError
from protocol.wire.message_base import Message, _check_ids, _exact_keys, _tensor

MAX_POSITIONS = 512  # loss positions of one sample (answers are at most 512 tokens)
MAX_HIDDEN = 8192


def _layers(meta: dict[str, object]) -> tuple[int, ...]:
    layers = meta["layers"]
    if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1
                                               for i in layers):
        raise ProtocolError("field 'layers' must be a list of layer numbers >= 1")
    return tuple(layers)


@dataclass(frozen=True)
class GenerationUpload(Message):
    """States of the uploaded layers and r_t at every loss position of each sample."""

    TYPE: ClassVar[str] = "generation_upload"
    sample_ids: np.ndarray  # uint8 (n, 16): opaque random ids
    counts: np.ndarray  # int64 (n,): loss positions of each sample, rows in order
    activations: np.ndarray  # float16/float32 (sum(counts), len(layers), d)
    residual: np.ndarray  # float32 (sum(counts), d): r_t
    layers: tuple[int, ...]

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"sample_ids": self.sample_ids, "counts": self.counts, "activations": self.activations,
                 "residual": self.residual}, {"layers": list(self.layers)})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "GenerationUpload":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "counts", "activations", "residual", "layers"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        counts = _tensor(tensors, "counts", ("int64",), 1)
        acts = _tensor(tensors, "activations", ("float16", "float32"), 3, finite=True)
        residual = _tensor(tensors, "residual", ("float32",), 2, finite=True)
        layers = _layers(meta)
        if counts.shape != (ids.shape[0],) or (counts < 1).any() or (counts > MAX_POSITIONS).any():
            raise ProtocolError(f"counts must give 1..{MAX_POSITIONS} positions for each of {ids.shape[0]} samples")
        rows = int(counts.sum())
        if (acts.shape[0] != rows or residual.shape != (rows, acts.shape[2]) or acts.shape[1] != len(layers)
                or acts.shape[2] > MAX_HIDDEN):
            raise ProtocolError(f"inconsistent shapes: {rows} positions, activations {acts.shape}, residual "
                                f"{residual.shape}, {len(layers)} layers")
        if 0 in acts.shape[1:]:  # no side network has zero inputs or outputs
            raise ProtocolError("a generation upload carries at least one layer and one activation value")
        return cls(sample_ids=ids, counts=counts, activations=acts, residual=residual, layers=layers)

    def sample_rows(self) -> list[slice]:
        """Each sample's rows of `activations` and `residual`."""
        ends = np.cumsum(self.counts)
        return [slice(int(end - count), int(end)) for end, count in zip(ends, self.counts)]


@dataclass(frozen=True)
class HeadGram(Message):
    """G = W_Uᵀ W_U of the public LM head (d × d): what turns r_t into PAE's MSE through the head.

    Public (the server could compute it from the open weights); the device sends it once so
    the server needs no copy of the backbone."""

    TYPE: ClassVar[str] = "head_gram"
    gram: np.ndarray  # float32 (d, d)

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"gram": self.gram}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "HeadGram":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"gram"})
        gram = _tensor(tensors, "gram", ("float32",), 2, finite=True)
        if gram.shape[0] != gram.shape[1] or not 1 <= gram.shape[0] <= MAX_HIDDEN:
            raise ProtocolError(f"gram must be square with at most {MAX_HIDDEN} rows, got {gram.shape}")
        scale = float(np.abs(gram).max()) or 1.0
        if not np.allclose(gram, gram.T, atol=1e-5 * scale) or (np.diag(gram) < 0).any():
            raise ProtocolError("gram must be symmetric with a non-negative diagonal")
        return cls(gram=gram)
