"""Wire messages of the CKKS head fit (the `he_ckks` mechanism), listed in `protocol.wire.messages.MESSAGE_TYPES`.

Ciphertexts travel as one raw uint8 buffer plus an int64 vector of their byte sizes;
sizes are checked against the buffer and bounded before TenSEAL parses anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from protocol.errors import ProtocolError
from protocol.wire.message_base import Message, _check_ids, _exact_keys, _int_field, _tensor

MAX_FEATURES = 4096


@dataclass(frozen=True)
class EncryptedUpload(Message):
    """Pivot activations in the clear plus Δ encrypted: one ciphertext per class holding the
    block's samples, in order, as its polynomial's low coefficients. `public_context` declares
    the encryption parameters (no key) the ciphertexts are under, so the server can check them
    at upload; every upload and the fit request of a device carry the same one."""

    TYPE: ClassVar[str] = "encrypted_upload"
    sample_ids: np.ndarray  # uint8 (n, 16)
    activations: np.ndarray  # float16/float32 (n, L, d)
    ciphertexts: np.ndarray  # uint8 (total bytes,)
    ciphertext_sizes: np.ndarray  # int64 (C,)
    public_context: np.ndarray  # uint8 (bytes,)
    layers: tuple[int, ...]

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"sample_ids": self.sample_ids, "activations": self.activations, "ciphertexts": self.ciphertexts,
                 "ciphertext_sizes": self.ciphertext_sizes, "public_context": self.public_context},
                {"layers": list(self.layers)})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "EncryptedUpload":
        _exact_keys(cls.TYPE, set(tensors) | set(meta),
                    {"sample_ids", "activations", "ciphertexts", "ciphertext_sizes", "public_context", "layers"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        acts = _tensor(tensors, "activations", ("float16", "float32"), 3, finite=True)
        buffer = _tensor(tensors, "ciphertexts", ("uint8",), 1)
        sizes = _tensor(tensors, "ciphertext_sizes", ("int64",), 1)
        context = _tensor(tensors, "public_context", ("uint8",), 1)
        layers = meta["layers"]
        if not isinstance(layers, list) or not all(isinstance(i, int) and i >= 1 for i in layers):
            raise ProtocolError("field 'layers' must be a list of layer numbers >= 1")
        if acts.shape[0] != ids.shape[0] or acts.shape[1] != len(layers) or not 2 <= len(sizes) <= 64:
            raise ProtocolError(f"inconsistent encrypted upload: ids {ids.shape}, activations {acts.shape}, "
                                f"{len(sizes)} class ciphertexts")
        if int(sizes.sum()) != len(buffer):
            raise ProtocolError("ciphertext sizes do not add up to the buffer length")
        return cls(sample_ids=ids, activations=acts, ciphertexts=buffer, ciphertext_sizes=sizes,
                   public_context=context, layers=tuple(layers))


@dataclass(frozen=True)
class HeFitRequest(Message):
    """Fit the ridge head on the encrypted Δ received so far, under this public context
    (CKKS encryption parameters only: no key of any kind)."""

    TYPE: ClassVar[str] = "he_fit_request"
    public_context: np.ndarray  # uint8 (bytes,)
    n_features: int
    ridge: float

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"public_context": self.public_context}, {"n_features": self.n_features, "ridge": self.ridge}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "HeFitRequest":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"public_context", "n_features", "ridge"})
        context = _tensor(tensors, "public_context", ("uint8",), 1)
        n_features = _int_field(meta, "n_features", low=1)
        ridge = meta["ridge"]
        if n_features > MAX_FEATURES:
            raise ProtocolError(f"n_features above {MAX_FEATURES}")
        if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not np.isfinite(ridge) or ridge <= 0:
            raise ProtocolError("field 'ridge' must be a positive finite number")
        return cls(public_context=context, n_features=n_features, ridge=float(ridge))


@dataclass(frozen=True)
class HeFitReply(Message):
    """The label-free feature map (plaintext) and enc(W): per class, one ciphertext per group of
    ⌊N/s⌋ head rows (s: the largest upload block), class-major; row k is the bias."""

    TYPE: ClassVar[str] = "he_fit_reply"
    input_mean: np.ndarray  # float32 (L·d,)
    input_scale: np.ndarray  # float32 (L·d,)
    components: np.ndarray  # float32 (k, L·d)
    ciphertexts: np.ndarray  # uint8 (total bytes,)
    ciphertext_sizes: np.ndarray  # int64 (C·groups,)

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"input_mean": self.input_mean, "input_scale": self.input_scale, "components": self.components,
                 "ciphertexts": self.ciphertexts, "ciphertext_sizes": self.ciphertext_sizes}, {})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "HeFitReply":
        _exact_keys(cls.TYPE, set(tensors) | set(meta),
                    {"input_mean", "input_scale", "components", "ciphertexts", "ciphertext_sizes"})
        mean = _tensor(tensors, "input_mean", ("float32",), 1, finite=True)
        scale = _tensor(tensors, "input_scale", ("float32",), 1, finite=True)
        components = _tensor(tensors, "components", ("float32",), 2, finite=True)
        buffer = _tensor(tensors, "ciphertexts", ("uint8",), 1)
        sizes = _tensor(tensors, "ciphertext_sizes", ("int64",), 1)
        k = components.shape[0]
        # 2..64 classes (as uploaded), each with at most one ciphertext per head row
        if mean.shape != scale.shape or components.shape[1] != mean.shape[0] or not 2 <= len(sizes) <= 64 * (k + 1):
            raise ProtocolError("inconsistent HE fit reply shapes")
        if int(sizes.sum()) != len(buffer):
            raise ProtocolError("ciphertext sizes do not add up to the buffer length")
        return cls(input_mean=mean, input_scale=scale, components=components, ciphertexts=buffer,
                   ciphertext_sizes=sizes)
