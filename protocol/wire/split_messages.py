"""Message types of the split-learning baseline, listed in `protocol.wire.messages.MESSAGE_TYPES`.

Device -> server: `SplitForward` (cut-layer activations of every token) and
`SplitBackward` (d loss / d server output); server -> device: `SplitActivations`
(the server's top-layer output) and `CutGradients` (d loss / d cut activations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol.errors import ProtocolError
from protocol.wire.message_base import Message, _check_ids, _exact_keys, _int_field, _tensor

_FLOATS = ("float16", "float32")


@dataclass(frozen=True)
class SplitForward(Message):
    """Cut-layer hidden states of every token (n, T, d), their mask, and the cut layer."""

    TYPE: ClassVar[str] = "split_forward"
    sample_ids: np.ndarray
    activations: np.ndarray
    attention_mask: np.ndarray
    cut_layer: int

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"sample_ids": self.sample_ids, "activations": self.activations,
                 "attention_mask": self.attention_mask}, {"cut_layer": self.cut_layer})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "SplitForward":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "activations", "attention_mask", "cut_layer"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        acts = _tensor(tensors, "activations", _FLOATS, 3, finite=True)
        mask = _tensor(tensors, "attention_mask", ("uint8",), 2)
        if acts.shape[0] != ids.shape[0] or mask.shape != acts.shape[:2]:
            raise ProtocolError(f"inconsistent shapes: activations {acts.shape}, mask {mask.shape}")
        return cls(sample_ids=ids, activations=acts, attention_mask=mask,
                   cut_layer=_int_field(meta, "cut_layer", low=1))


@dataclass(frozen=True)
class SplitActivations(Message):
    """The server's output hidden states for the last forward (n, T, d)."""

    TYPE: ClassVar[str] = "split_activations"
    activations: np.ndarray

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"activations": self.activations}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "SplitActivations":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"activations"})
        return cls(activations=_tensor(tensors, "activations", ("float32",), 3, finite=True))


@dataclass(frozen=True)
class SplitBackward(Message):
    """d loss / d (server output) for the samples of the last forward."""

    TYPE: ClassVar[str] = "split_backward"
    sample_ids: np.ndarray
    output_gradients: np.ndarray

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"sample_ids": self.sample_ids, "output_gradients": self.output_gradients}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "SplitBackward":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "output_gradients"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        grads = _tensor(tensors, "output_gradients", ("float32",), 3, finite=True)
        if grads.shape[0] != ids.shape[0]:
            raise ProtocolError(f"inconsistent shapes: ids {ids.shape}, gradients {grads.shape}")
        return cls(sample_ids=ids, output_gradients=grads)


@dataclass(frozen=True)
class CutGradients(Message):
    """d loss / d (cut-layer activations), returned to the device."""

    TYPE: ClassVar[str] = "cut_gradients"
    gradients: np.ndarray

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"gradients": self.gradients}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "CutGradients":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"gradients"})
        return cls(gradients=_tensor(tensors, "gradients", ("float32",), 3, finite=True))
