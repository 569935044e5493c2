"""What one device may make the server allocate, store, compute or wait for (DESIGN.md section 9).

`ServerLimits` is the one definition of the server's limits: `secure-assist serve` generates its
flags from the fields (name, type, default, help), the transport server reads the connection,
frame and timeout limits, and every server endpoint the per-device ones
(`protocol.server.endpoint.RecordingEndpoint.admit`). A request beyond a limit gets an `ErrorReply`
that names the limit (`LimitExceeded`), a log line, and changes nothing.

Sizing the defaults: the side network a device can make the server build is about
2·layers·width·rank floats, held four times (weights, gradients, two AdamW moments); at the
maxima (64 layers x 4096, rank 64) its weights alone (134 MB) would not fit a 64 MiB frame, so
such a network is refused before it is built, and SmolLM2-135M (30 x 576) needs 9 MB of weights.
What is held and stored in bytes is bounded by the quotas (`protocol.server.quotas`). An
operator serving one backbone should set its exact shape.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any

from protocol.errors import ProtocolError, UserInputError
from protocol.server.memory_pool import MemoryPool
from protocol.transport.framing import MAX_LENGTH_FIELD

MIB = 1024 * 1024
_TYPES = {"int": int, "float": float}


def _limit(default: int | float, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


class LimitExceeded(ProtocolError):
    """A request asked for more than a configured server limit; the message names the limit."""


@dataclass(frozen=True)
class UploadShape:
    """What a message that uploads samples declares (None where its type does not say)."""

    samples: int
    layers: int | None
    width: int | None
    classes: int | None
    positions: int | None = None  # the most loss positions of one sample (generation uploads)
    sample_bytes: int = 0  # the largest sample's states and values, in bytes


def upload_shape(message: object) -> UploadShape | None:
    """The declared shape of an upload-type message; None for messages that upload no samples.

    Read from the fields every upload type shares, so each server endpoint gets the same checks:
    the rows of `sample_ids`, the `layers` list, the last dimension of `activations` (the width),
    the classes as Δ's columns or the number of per-class ciphertexts, and, for uploads whose
    samples own several rows (`counts`), the most rows of one sample.
    """
    ids = getattr(message, "sample_ids", None)
    if ids is None:
        return None
    layers = getattr(message, "layers", None)
    activations = getattr(message, "activations", None)
    delta, sizes = getattr(message, "delta", None), getattr(message, "ciphertext_sizes", None)
    classes = delta.shape[1] if delta is not None and delta.ndim == 2 else (len(sizes) if sizes is not None else None)
    counts = getattr(message, "counts", None)
    positions = int(counts.max()) if counts is not None and len(counts) else None
    return UploadShape(samples=len(ids), layers=len(layers) if layers is not None else None,
                       width=activations.shape[-1] if activations is not None and activations.ndim else None,
                       classes=classes, positions=positions, sample_bytes=_largest_sample_bytes(message, positions))


def _largest_sample_bytes(message: object, positions: int | None) -> int:
    """Bytes of the largest sample's states and values (Δ or r): rows are equal-sized, and a
    sample owns one row, or `positions` rows at most."""
    arrays = [getattr(message, name, None) for name in ("activations", "delta", "residual")]
    arrays = [array for array in arrays if array is not None and array.ndim and len(array)]
    if not arrays:
        return 0
    return sum(array.nbytes // len(array) for array in arrays) * (positions or 1)


def admit_upload(message: object, limits: "ServerLimits | None") -> UploadShape | None:
    """The checks every endpoint applies to an upload whatever it stores (no state needed), so the
    transport can apply them before a device's namespace is even opened. Zero-sample uploads are
    always refused: a role would size its state from a declared shape alone."""
    shape = upload_shape(message)
    if shape is not None and shape.samples == 0:
        raise ProtocolError("upload with zero samples refused: no state is sized from a declared shape alone")
    if shape is not None and limits is not None:
        limits.check_upload(shape)
    return shape


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what any one device can make `secure-assist serve` do (safe defaults)."""

    max_layers: int = _limit(64, "most backbone layers per uploaded sample")
    max_width: int = _limit(4096, "largest activation width (hidden size) of an upload")
    max_classes: int = _limit(64, "most classes (Δ values) per sample")
    max_samples_per_device: int = _limit(20_000, "most samples one device may have stored")
    max_epochs: int = _limit(1_000, "most training epochs one device may ask for in total")
    max_frame_mib: float = _limit(64.0, "largest frame a device may send, in MiB")
    max_partial_frames_mib: float = _limit(
        256.0, "bytes held for frames still arriving, all devices together, in MiB; when a frame does not fit, "
               "larger partial frames are dropped first")
    max_connections_per_device: int = _limit(
        4, "open connections per device identity; one more closes the device's oldest idle connection")
    handshake_seconds: float = _limit(10.0, "time allowed for the TLS handshake")
    read_seconds: float = _limit(120.0, "time allowed for a frame's payload once its header has arrived")
    idle_seconds: float = _limit(300.0, "time a connection may wait between requests")
    decode_workers: int = _limit(2, "threads that decode and validate requests off the event loop")
    # Storage and memory quotas, in bytes rather than samples (protocol.server.quotas).
    max_sample_kib: float = _limit(4096.0, "bytes of one uploaded sample (its states and Δ or r at all its "
                                           "positions), in KiB")
    max_positions_per_sample: int = _limit(128, "loss positions of one uploaded sample (generation)")
    max_device_disk_mib: float = _limit(
        4096.0, "disk one device's state may use, in MiB: its cache, transcript and checkpoints together")
    max_device_memory_mib: float = _limit(
        2048.0, "memory held for one device, in MiB: its cached samples (a cached epoch loads them all), side "
                "network, optimizer state and weights reply; drawn from --max-server-memory-mib")
    max_server_memory_mib: float = _limit(8192.0, "memory held for all devices together, in MiB")
    checkpoint_seconds: float = _limit(
        300.0, "least time between two training checkpoints of a device (each rewrites its network and optimizer "
               "state); a clean stop writes the last, and a crash resumes exactly from the one before")
    train_reply_seconds: float = _limit(
        60.0, "time one training request may train before the server replies with the epochs done so far (the "
              "epoch in progress is finished first); the device asks again for the rest, on the same schedule")
    # Pools (protocol.modes.pooled): what a pool's members together make the server hold and wait for.
    max_pool_members: int = _limit(64, "pooled: devices that may join one pool")
    max_pool_samples: int = _limit(100_000, "pooled: samples one pool's members may have stored together (the "
                                            "pool's training loads them all)")
    pool_wait_seconds: float = _limit(
        600.0, "pooled: time a member that finished its upload is answered 'pending' while the pool's quorum "
               "is not in; then it is refused")
    # Connections, handshakes, ckks_ridge.
    max_handshakes: int = _limit(
        64, "TLS handshakes in progress, all peers together; one more sheds the oldest in progress")
    max_unsent_replies_mib: float = _limit(
        256.0, "reply bytes queued for sending and not yet read, all devices together, in MiB; when a reply does "
               "not fit, larger unread replies are dropped first, else it is refused")
    write_seconds: float = _limit(30.0, "time a device has to read a reply; a slower reader is disconnected")
    slot_idle_seconds: float = _limit(
        60.0, "time a device's server role (its thread, files and memory) stays open after its last connection")
    log_interval_seconds: float = _limit(
        10.0, "peer-triggered log lines: one per source per interval, then one summary of those held back")
    ckks_ciphertext_bytes_per_sample: int = _limit(
        2048, "ckks_ridge: ciphertext bytes a device may store per sample and class (beyond one ciphertext per "
              "class for a last, partial block)")
    max_ckks_fit_products: int = _limit(
        1024, "ckks_ridge: ciphertext-plaintext products one fit may compute (blocks x feature groups x classes)")
    max_ckks_pca_gmacs: float = _limit(
        20.0, "ckks_ridge: billions of multiply-adds in one pass of a fit's feature PCA (samples x activation "
              "values x features; the randomized PCA makes about ten passes)")

    def __post_init__(self) -> None:
        for spec in fields(self):
            value, flag = getattr(self, spec.name), _flag(spec.name)
            if _TYPES[spec.type] is int and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserInputError(f"{flag} must be a whole number >= 1, got {value!r}")
            if _TYPES[spec.type] is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                               or not math.isfinite(value) or value <= 0):
                raise UserInputError(f"{flag} must be a positive number, got {value!r}")
        if not 1024 <= self.max_frame_bytes <= MAX_LENGTH_FIELD:
            raise UserInputError(f"--max-frame-mib must give between 1 KiB and {MAX_LENGTH_FIELD} bytes")
        if self.max_partial_frame_bytes < self.max_frame_bytes:
            raise UserInputError("--max-partial-frames-mib must be at least --max-frame-mib, or no frame of the "
                                 "largest allowed size could ever be received")
        if self.max_server_memory_mib < self.max_device_memory_mib:
            raise UserInputError("--max-server-memory-mib must be at least --max-device-memory-mib, or no device "
                                 "could ever use its quota")
        # The one server-wide memory budget every endpoint given these limits draws from
        # (state, not a setting: not a field, so limits still compare by their values).
        object.__setattr__(self, "memory_pool", MemoryPool(int(self.max_server_memory_mib * MIB)))
        if self.max_unsent_reply_bytes < self.max_frame_bytes:
            raise UserInputError("--max-unsent-replies-mib must be at least --max-frame-mib, or no reply of the "
                                 "largest allowed size could ever be sent")

    @property
    def max_frame_bytes(self) -> int:
        """The frame limit in bytes."""
        return int(self.max_frame_mib * MIB)

    @property
    def max_unsent_reply_bytes(self) -> int:
        """The global budget for reply bytes not yet read, in bytes."""
        return int(self.max_unsent_replies_mib * MIB)

    @property
    def max_partial_frame_bytes(self) -> int:
        """The global budget for partially received frames, in bytes."""
        return int(self.max_partial_frames_mib * MIB)

    def exceeded(self, name: str, what: str) -> LimitExceeded:
        """The error for `what` going beyond the limit `name` (a field of this class)."""
        return LimitExceeded(f"{what}: beyond the server limit {name}={getattr(self, name)} ({_flag(name)})")

    def check_upload(self, shape: UploadShape) -> None:
        """One upload's own size, within the shape maxima."""
        if shape.samples > self.max_samples_per_device:
            raise self.exceeded("max_samples_per_device", f"an upload of {shape.samples} samples")
        for name, value in (("max_layers", shape.layers), ("max_width", shape.width),
                            ("max_classes", shape.classes), ("max_positions_per_sample", shape.positions)):
            if value is not None and value > getattr(self, name):
                raise self.exceeded(name, f"upload {name[4:]} {value}")
        if shape.sample_bytes > self.max_sample_kib * 1024:
            raise self.exceeded("max_sample_kib", f"an uploaded sample of {shape.sample_bytes} bytes")

    def check_samples_held(self, total: int) -> None:
        """The samples a device would hold after a request."""
        if total > self.max_samples_per_device:
            raise self.exceeded("max_samples_per_device", f"{total} samples stored for this device")

    def check_epochs(self, total: int) -> None:
        """The epochs a device's training would reach."""
        if total > self.max_epochs:
            raise self.exceeded("max_epochs", f"training to {total} epochs")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per limit, named, typed, defaulted and described by the field itself."""
        group = parser.add_argument_group("server limits (per device unless said otherwise; beyond a limit: an "
                                          "error reply naming it, a log line, no state change)")
        for spec in fields(cls):
            unit = spec.name.rsplit("_", 1)[-1].upper() if spec.type == "float" else "N"
            group.add_argument(_flag(spec.name), dest=spec.name, type=_TYPES[spec.type], default=spec.default,
                               metavar=unit, help=f"{spec.metadata['help']} (default: {spec.default:g})")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "ServerLimits":
        """The limits given by `add_arguments` flags (validated)."""
        return cls(**{spec.name: getattr(args, spec.name) for spec in fields(cls)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
