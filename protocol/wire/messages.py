"""Typed protocol messages and their validated wire form.

A message is a frozen dataclass with a `TYPE` name; `encode_message` turns it into a
safetensors blob whose metadata carries the type, the protocol version and a small
JSON object of scalar fields. `decode_message` rejects unknown versions and types,
missing or extra fields, wrong dtypes or shapes, and NaN/inf where not allowed,
before any state is touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from protocol.wire.codec import DEFAULT_MAX_BYTES, MAX_MESSAGE_HEADER_BYTES, decode, encode
from protocol.errors import ProtocolError
from protocol.modes.generation.messages import MAX_POSITIONS, GenerationUpload, HeadGram
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.modes.pooled.messages import PoolPending
from protocol.wire.split_messages import CutGradients, SplitActivations, SplitBackward, SplitForward
from protocol.wire.message_base import (  # noqa: F401  (re-exported: the message API lives here)
    PROTOCOL_VERSION, SAMPLE_ID_BYTES, Message, _check_ids, _exact_keys, _int_field, _tensor,
)

MAX_MODE_NAME = 64
POOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The most boosting rounds a device may name: each round is a server state of its own in the device's namespace.
MAX_ROUNDS = 8


@dataclass(frozen=True)
class Upload(Message):
    """PAE upload: per-sample pivot activations of the listed layers and the signal Δ."""

    TYPE: ClassVar[str] = "upload"
    sample_ids: np.ndarray  # uint8 (n, 16): opaque random ids
    activations: np.ndarray  # float16/float32 (n, len(layers), d)
    delta: np.ndarray  # float32 (n, C)
    layers: tuple[int, ...]

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"sample_ids": self.sample_ids, "activations": self.activations, "delta": self.delta},
                {"layers": list(self.layers)})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "Upload":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "activations", "delta", "layers"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        acts = _tensor(tensors, "activations", ("float16", "float32"), 3, finite=True)
        delta = _tensor(tensors, "delta", ("float32",), 2, finite=True)
        layers = meta["layers"]
        if not isinstance(layers, list) or not all(isinstance(i, int) and i >= 1 for i in layers):
            raise ProtocolError("field 'layers' must be a list of layer numbers >= 1")
        if acts.shape[0] != ids.shape[0] or delta.shape[0] != ids.shape[0] or acts.shape[1] != len(layers):
            raise ProtocolError(
                f"inconsistent shapes: ids {ids.shape}, activations {acts.shape}, delta {delta.shape}, "
                f"{len(layers)} layers"
            )
        if 0 in acts.shape[1:] or delta.shape[1] == 0:  # no side network has zero inputs or outputs
            raise ProtocolError("an upload carries at least one layer, one activation value and one Δ value")
        return cls(sample_ids=ids, activations=acts, delta=delta, layers=tuple(layers))


@dataclass(frozen=True)
class RefreshedTargets(Message):
    """A boosting round's upload without its states: for samples the device uploaded in round 1 (their ids),
    the targets refreshed at the model deployed so far (classification Δ, one row per sample; generation r_t,
    `counts` rows per sample). The round's server pairs them with the states it holds from round 1, so the
    device sends each sample's states once (`protocol.server.side_tuning`)."""

    TYPE: ClassVar[str] = "refreshed_targets"
    sample_ids: np.ndarray  # uint8 (n, 16): round 1's ids, each at most once
    counts: np.ndarray  # int64 (n,): rows of each sample, in order
    targets: np.ndarray  # float32 (sum(counts), C or d)

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"sample_ids": self.sample_ids, "counts": self.counts, "targets": self.targets}, {}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "RefreshedTargets":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "counts", "targets"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        counts = _tensor(tensors, "counts", ("int64",), 1)
        targets = _tensor(tensors, "targets", ("float32",), 2, finite=True)
        if len(np.unique(ids, axis=0)) != len(ids):
            raise ProtocolError("a sample's targets are refreshed once per message: sample_ids repeat")
        if counts.shape != (len(ids),) or (counts < 1).any() or (counts > MAX_POSITIONS).any():
            raise ProtocolError(f"counts must give 1..{MAX_POSITIONS} rows for each of {len(ids)} samples")
        if targets.shape[0] != int(counts.sum()) or targets.shape[1] == 0:
            raise ProtocolError(f"inconsistent shapes: {int(counts.sum())} rows, targets {targets.shape}")
        return cls(sample_ids=ids, counts=counts, targets=targets)


def refreshed_targets(upload: Message) -> RefreshedTargets:
    """What a boosting round sends of a full upload (`Upload` or `GenerationUpload`): its ids and targets."""
    if isinstance(upload, Upload):
        return RefreshedTargets(sample_ids=upload.sample_ids, counts=np.ones(len(upload.sample_ids), np.int64),
                                targets=upload.delta)
    if isinstance(upload, GenerationUpload):
        return RefreshedTargets(sample_ids=upload.sample_ids, counts=upload.counts, targets=upload.residual)
    raise ProtocolError(f"a {upload.TYPE!r} message has no refreshable targets")


@dataclass(frozen=True)
class ResentUpload(Message):
    """Transcript record, never a request (every endpoint refuses it): an upload whose samples the
    server's cache already held with exactly these values, kept as its sample ids, the SHA-256 of
    its wire form and its size instead of a second full copy."""

    TYPE: ClassVar[str] = "resent_upload"
    sample_ids: np.ndarray  # uint8 (n, 16)
    sha256: str
    wire_bytes: int

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {"sample_ids": self.sample_ids}, {"sha256": self.sha256, "wire_bytes": self.wire_bytes}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "ResentUpload":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"sample_ids", "sha256", "wire_bytes"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        return cls(sample_ids=ids, sha256=_sha256_field(meta), wire_bytes=_int_field(meta, "wire_bytes", low=1))


def _sha256_field(meta: dict[str, object]) -> str:
    digest = meta["sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise ProtocolError("field 'sha256' must be 64 lowercase hex digits")
    return digest


@dataclass(frozen=True)
class RecordedDigest(Message):
    """Transcript record, never a request (every endpoint refuses it): a message the server refused
    inside its role, could not decode, or had already sent, kept as its kind, the SHA-256 of its
    wire form and its size instead of a full copy (see `protocol.server.transcript`)."""

    TYPE: ClassVar[str] = "recorded_digest"
    OUTCOMES: ClassVar[tuple[str, ...]] = ("refused", "repeated")
    kind: str  # the message's type name ("undecodable" when it did not decode)
    outcome: str
    sha256: str
    wire_bytes: int

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"kind": self.kind, "outcome": self.outcome, "sha256": self.sha256, "wire_bytes": self.wire_bytes}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "RecordedDigest":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"kind", "outcome", "sha256", "wire_bytes"})
        kind, outcome = meta["kind"], meta["outcome"]
        if not isinstance(kind, str) or not 1 <= len(kind) <= 64 or outcome not in cls.OUTCOMES:
            raise ProtocolError(f"field 'kind' must be a type name and 'outcome' one of {cls.OUTCOMES}")
        return cls(kind=kind, outcome=outcome, sha256=_sha256_field(meta),
                   wire_bytes=_int_field(meta, "wire_bytes", low=1))


@dataclass(frozen=True)
class FullUpload(Message):
    """MobiLLM-style upload: activations of every token at every layer, plus labels."""

    TYPE: ClassVar[str] = "full_upload"
    sample_ids: np.ndarray  # uint8 (n, 16)
    activations: np.ndarray  # float16/float32 (n, L, T, d)
    attention_mask: np.ndarray  # uint8 (n, T)
    labels: np.ndarray  # int64 (n,)

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return ({"sample_ids": self.sample_ids, "activations": self.activations,
                 "attention_mask": self.attention_mask, "labels": self.labels}, {})

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "FullUpload":
        _exact_keys(cls.TYPE, set(tensors) | set(meta),
                    {"sample_ids", "activations", "attention_mask", "labels"})
        ids = _tensor(tensors, "sample_ids", ("uint8",), 2)
        _check_ids(ids)
        acts = _tensor(tensors, "activations", ("float16", "float32"), 4, finite=True)
        mask = _tensor(tensors, "attention_mask", ("uint8",), 2)
        labels = _tensor(tensors, "labels", ("int64",), 1)
        n = ids.shape[0]
        if acts.shape[0] != n or mask.shape != (n, acts.shape[2]) or labels.shape != (n,):
            raise ProtocolError(f"inconsistent shapes: activations {acts.shape}, mask {mask.shape}")
        return cls(sample_ids=ids, activations=acts, attention_mask=mask, labels=labels)


@dataclass(frozen=True)
class UploadAck(Message):
    """Server reply to an upload: how many samples were new and how many were repeats."""

    TYPE: ClassVar[str] = "upload_ack"
    stored: int
    duplicates: int

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"stored": self.stored, "duplicates": self.duplicates}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "UploadAck":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"stored", "duplicates"})
        return cls(stored=_int_field(meta, "stored"), duplicates=_int_field(meta, "duplicates"))


@dataclass(frozen=True)
class TrainUntil(Message):
    """Ask the server to train until `epochs_total` epochs are done (idempotent: safe to resend)."""

    TYPE: ClassVar[str] = "train_until"
    epochs_total: int

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"epochs_total": self.epochs_total}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "TrainUntil":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"epochs_total"})
        return cls(epochs_total=_int_field(meta, "epochs_total", low=1))


@dataclass(frozen=True)
class TrainReport(Message):
    """Server reply after training: epochs run so far, samples seen, last epoch's loss."""

    TYPE: ClassVar[str] = "train_report"
    epochs_done: int
    samples: int
    loss: float

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"epochs_done": self.epochs_done, "samples": self.samples, "loss": self.loss}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "TrainReport":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"epochs_done", "samples", "loss"})
        loss = meta["loss"]
        if not isinstance(loss, (int, float)) or not np.isfinite(loss):
            raise ProtocolError("field 'loss' must be a finite number")
        return cls(epochs_done=_int_field(meta, "epochs_done"), samples=_int_field(meta, "samples"),
                   loss=float(loss))


@dataclass(frozen=True)
class FetchWeights(Message):
    """Ask for the trained side network φ."""

    TYPE: ClassVar[str] = "fetch_weights"


@dataclass(frozen=True)
class SideWeights(Message):
    """The side network φ: its state dict and the hyper-parameters to rebuild it."""

    TYPE: ClassVar[str] = "side_weights"
    state: dict[str, np.ndarray] = field(default_factory=dict)
    architecture: dict[str, object] = field(default_factory=dict)

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return dict(self.state), {"architecture": self.architecture}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "SideWeights":
        if set(meta) != {"architecture"} or not isinstance(meta["architecture"], dict):
            raise ProtocolError("side_weights: expected exactly the field 'architecture'")
        for name in tensors:
            _tensor(tensors, name, ("float32",), tensors[name].ndim, finite=True)
        return cls(state=dict(tensors), architecture=dict(meta["architecture"]))


@dataclass(frozen=True)
class ErrorReply(Message):
    """Sent back when a request violates the protocol; the sender should give up."""

    TYPE: ClassVar[str] = "error"
    reason: str

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"reason": self.reason}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "ErrorReply":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"reason"})
        if not isinstance(meta["reason"], str):
            raise ProtocolError("field 'reason' must be a string")
        return cls(reason=meta["reason"])


@dataclass(frozen=True)
class Hello(Message):
    """The first request of every connection: the training mode the device runs.

    The server builds that mode's endpoint for the device, or refuses a mode it does
    not offer (or one other than the mode the device's server state already holds)."""

    TYPE: ClassVar[str] = "hello"
    mode: str
    # The named pool a `pooled` device joins ("": none; the field is then left off the wire).
    pool: str = ""
    # The boosting round the connection serves, 1..MAX_ROUNDS (1: the run itself; the field is then left off).
    round: int = 1

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"mode": self.mode, **({"pool": self.pool} if self.pool else {}),
                    **({"round": self.round} if self.round != 1 else {})}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "Hello":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"mode"} | ({"pool", "round"} & set(meta)))
        mode = meta["mode"]
        if not isinstance(mode, str) or not mode.isidentifier() or len(mode) > MAX_MODE_NAME:
            raise ProtocolError(f"field 'mode' must be an identifier of at most {MAX_MODE_NAME} characters")
        pool = meta.get("pool", "")
        if pool != "" and not (isinstance(pool, str) and POOL_NAME.fullmatch(pool)):
            raise ProtocolError("field 'pool' must be 1-64 of [A-Za-z0-9_.-]")
        number = _int_field(meta, "round", 2) if "round" in meta else 1
        if number > MAX_ROUNDS:
            raise ProtocolError(f"field 'round' must be at most {MAX_ROUNDS}")
        return cls(mode=mode, pool=pool, round=number)


@dataclass(frozen=True)
class ModeAccepted(Message):
    """Server reply to `Hello`: the mode this connection now speaks."""

    TYPE: ClassVar[str] = "mode_accepted"
    mode: str

    def parts(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        return {}, {"mode": self.mode}

    @classmethod
    def from_parts(cls, tensors: dict[str, np.ndarray], meta: dict[str, object]) -> "ModeAccepted":
        _exact_keys(cls.TYPE, set(tensors) | set(meta), {"mode"})
        return cls(mode=Hello.from_parts(tensors, meta).mode)


# The one list of message types, every mode's messages named explicitly (never filled by
# import side effects, so whether a transcript decodes does not depend on other imports).
_MESSAGE_CLASSES: tuple[type[Message], ...] = (
    Hello, ModeAccepted, Upload, RefreshedTargets, ResentUpload, RecordedDigest, FullUpload, UploadAck, TrainUntil,
    TrainReport, FetchWeights, SideWeights, ErrorReply,
    EncryptedUpload, HeFitRequest, HeFitReply,
    SplitForward, SplitActivations, SplitBackward, CutGradients,
    HeadGram, GenerationUpload, PoolPending,
)
MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _MESSAGE_CLASSES}
if len(MESSAGE_TYPES) != len(_MESSAGE_CLASSES):
    raise RuntimeError("two message classes share a TYPE name")


def encode_message(message: Message) -> bytes:
    """The wire form of a message."""
    tensors, scalars = message.parts()
    metadata = {"type": message.TYPE, "version": str(PROTOCOL_VERSION), "fields": json.dumps(scalars)}
    return encode(tensors, metadata)


def decode_message(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Parse and validate a wire message; raise ProtocolError on anything unexpected."""
    tensors, metadata = decode(data, max_bytes, MAX_MESSAGE_HEADER_BYTES)
    if set(metadata) != {"type", "version", "fields"}:
        raise ProtocolError(f"unexpected message metadata keys {sorted(metadata)}")
    if metadata["version"] != str(PROTOCOL_VERSION):
        raise ProtocolError(f"unsupported protocol version {metadata['version']!r}")
    cls = MESSAGE_TYPES.get(metadata["type"])
    if cls is None:
        raise ProtocolError(f"unknown message type {metadata['type']!r}")
    try:
        scalars = json.loads(metadata["fields"])
    except (ValueError, RecursionError) as exc:  # also huge integers and deep nesting, not only bad syntax
        raise ProtocolError(f"fields are not usable JSON: {str(exc)[:200]}") from exc
    if not isinstance(scalars, dict):
        raise ProtocolError("fields must be a JSON object")
    return cls.from_parts(tensors, scalars)


M = TypeVar("M", bound=Message)


def expect(reply: Message, kind: type[M]) -> M:
    """`reply` as the expected type; any other reply is a protocol violation."""
    if not isinstance(reply, kind):
        raise ProtocolError(f"expected a {kind.TYPE!r} reply, got {reply.TYPE!r}")
    return reply
