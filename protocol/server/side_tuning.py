"""The side-tuning server role: receive uploads, cache them, hand them to the side trainer, serve φ.

The server holds the side network (through its `SideTrainer`) and the activation cache,
and no device secret. Epoch 1 trains on each upload as it arrives; later epochs run from
the cache alone, with zero device work and zero traffic. Every message in and out is
recorded in the server's view (`protocol.server.transcript`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from protocol.errors import ProtocolError
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape, state_arrays
from protocol.server.cache import ActivationCache
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.limits import ServerLimits
from protocol.server.quotas import CACHED_EPOCH_COPIES, CHECKPOINT_DISK_COPIES, NETWORK_MEMORY_COPIES, weights_bytes
from protocol.server.trainer import SideTrainer, TrainingSet
from protocol.server.training_settings import ServerTraining
from protocol.server.transcript import CACHE_FILE, SIDE_NETWORK_FILE
from protocol.wire.codec import DEFAULT_MAX_BYTES, read_metadata
from protocol.wire.messages import (
    FetchWeights, Message, RefreshedTargets, ResentUpload, SideWeights, TrainReport, TrainUntil, Upload, UploadAck,
    decode_message, encode_message,
)

log = logging.getLogger(__name__)


class SideTuningServer(RecordingEndpoint):
    """PAE server for one device; its work directory is its whole view.

    Training batches are drawn by sample; a subclass whose samples own several rows (the
    generation server: one row per loss position) says so through `_training_set`.
    """

    NETWORK: ClassVar[type[AdditiveSideNetwork]] = AdditiveSideNetwork
    UPLOAD: ClassVar[type[Message]] = Upload

    def __init__(self, workdir: Path | str, training: ServerTraining = ServerTraining(),
                 max_message_bytes: int = DEFAULT_MAX_BYTES, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(workdir, max_message_bytes, limits, stop)
        self.training = training
        self.cache = self._open_cache()
        self._payload_bytes = self.cache.payload_bytes()
        # The last weights reply and the training step it was built at: a repeated fetch costs nothing.
        self._reply: tuple[int, SideWeights] | None = None
        self.trainer = SideTrainer(training, self.workdir, self.NETWORK, served=self._served_network,
                                   check_stop=self.check_stop,
                                   checkpoint_seconds=limits.checkpoint_seconds if limits is not None else 0.0)
        self._first_round: tuple[ActivationCache, tuple[int, ...]] | None = None  # opened at the first refresh
        self.trainer.restore(len(self.cache))
        self.trainer.catch_up(len(self.cache), self._training_set)
        log.info("work directory open: %d cached samples, %d epochs done", len(self.cache), self.trainer.epochs_done)

    @property
    def network(self) -> AdditiveSideNetwork | None:
        """The side network being trained (None before the first upload)."""
        return self.trainer.network

    @property
    def epochs_done(self) -> int:
        """Epochs trained so far (the arrival pass is epoch 1)."""
        return self.trainer.epochs_done

    def close(self) -> None:
        """Write the checkpoint that was not due yet, release the cache and transcript files."""
        if self.network is not None:
            self.trainer.flush()
        self.cache.close()
        if self._first_round is not None:
            self._first_round[0].close()
        super().close()

    def _open_cache(self) -> ActivationCache:
        return ActivationCache(self.workdir / CACHE_FILE)

    def handle(self, message: Message) -> Message:
        """Dispatch one decoded request."""
        if isinstance(message, self.UPLOAD):
            return self._on_upload(message)
        if isinstance(message, TrainUntil):
            # Bounded per reply, so that no request outlasts the device's wait for it: the device asks again.
            reply_seconds = self.limits.train_reply_seconds if self.limits is not None else None
            samples, loss = self.trainer.train_until(message.epochs_total, self._training_set, reply_seconds)
            return TrainReport(epochs_done=self.trainer.epochs_done, samples=samples, loss=loss)
        if isinstance(message, FetchWeights):
            return self._weights_message()
        return super().handle(message)

    def carried_out_as(self, message: Message, data: bytes) -> tuple[Message, bytes]:
        """Refreshed targets are carried out as the upload they stand for: the states this device uploaded in
        round 1 with the targets refreshed, admitted, recorded (the round's view holds what the server knows)
        and cached as such an upload would be; the device sends each sample's states once."""
        if not isinstance(message, RefreshedTargets):
            return message, data
        if self.first_round is None:
            raise ProtocolError("refreshed targets belong to a boosting round >= 2, paired with round 1's states")
        first, layers = self._first_round_state()
        sizes = first.state_sizes(message.sample_ids)
        if len(sizes) != len(message.sample_ids):
            raise ProtocolError(f"{len(message.sample_ids) - len(sizes)} of {len(message.sample_ids)} refreshed "
                                "samples were not uploaded in round 1")
        # Bounded before a state is read: the upload it stands for must fit where a sent upload would.
        size = sum(sizes.values()) + message.targets.nbytes
        limit = self.limits.max_frame_bytes if self.limits is not None else self.max_message_bytes
        if size > limit:
            what = f"the upload {len(sizes)} refreshed samples stand for ({size} bytes)"
            raise self.limits.exceeded("max_frame_mib", what) if self.limits is not None else ProtocolError(
                f"{what} exceeds {limit} bytes: send fewer samples per message")
        data = encode_message(self._refreshed_upload(message, first.states(message.sample_ids), layers))
        return decode_message(data, limit), data  # checked as a sent upload is (shapes, widths, values)

    def _refreshed_upload(self, refresh: RefreshedTargets, states: list[np.ndarray],
                          layers: tuple[int, ...]) -> Message:
        """The upload of round 1's `states` with `refresh`'s targets (classification: one row per sample)."""
        if (refresh.counts != 1).any():
            raise ProtocolError("classification targets are one row per sample")
        return Upload(sample_ids=refresh.sample_ids, activations=np.stack(states), delta=refresh.targets, layers=layers)

    def _first_round_state(self) -> tuple[ActivationCache, tuple[int, ...]]:
        """Round 1's cache (opened once) and the layers its uploads carried."""
        if self._first_round is None:
            cache_path, network = self.first_round / self.cache.path.name, self.first_round / SIDE_NETWORK_FILE
            if not cache_path.is_file() or not network.is_file():
                raise ProtocolError("round 1 holds no trained uploads of this mode to refresh")
            try:
                data = network.read_bytes()  # the server's own file (a frame's weights at most): read whole
                layers = tuple(json.loads(read_metadata(data, len(data))["layers"]))
            except (KeyError, ValueError) as exc:
                raise ProtocolError(f"corrupt side-network file {network}: {exc}") from exc
            self._first_round = (type(self.cache)(cache_path), layers)
        return self._first_round

    def _output_size(self, upload: Upload) -> int:
        """Side values per row: C, the classes of Δ."""
        return upload.delta.shape[1]

    def admit(self, message: Message) -> None:
        """The endpoint-generic limits, the epochs a training request would reach, an upload that
        fits this device's network and cache, and a weights reply that fits in a frame."""
        super().admit(message)
        if self.limits is not None and isinstance(message, TrainUntil):
            self.limits.check_epochs(message.epochs_total)
        if isinstance(message, self.UPLOAD):
            self._admit_upload(message)
        if isinstance(message, FetchWeights) and self.network is not None:
            self._check_reply_fits(self.network.shape)

    def _admit_upload(self, upload: Upload) -> None:
        shape = self._network_shape(upload)
        if self.network is None:
            self._check_reply_fits(shape)
        elif shape != self.network.shape or upload.layers != self.trainer.layers:
            raise ProtocolError(
                f"upload shape {shape} / layers {upload.layers} differ from earlier uploads "
                f"({self.network.shape} / {self.trainer.layers})"
            )
        if self._conflicts(upload):
            # Cached values are never replaced, and another copy of a sample would only fill the view.
            raise ProtocolError("sample ids already cached with other values: a sample is uploaded once")

    def _check_reply_fits(self, shape: SideNetworkShape) -> None:
        """Refuse a network whose weights reply could not be sent within the frame limit (the
        device could never fetch it), before anything is built."""
        if self.limits is not None and weights_bytes(shape) > self.limits.max_frame_bytes:
            raise self.limits.exceeded("max_frame_mib", f"a side network whose weights reply takes "
                                                        f"{weights_bytes(shape)} bytes")

    def disk_added(self, message: Message) -> int:
        """A first upload's network checkpoints; a weights reply not recorded yet."""
        if isinstance(message, self.UPLOAD) and self.network is None:
            return CHECKPOINT_DISK_COPIES * weights_bytes(self._network_shape(message))
        if isinstance(message, FetchWeights) and self.network is not None and not self._reply_is_current():
            return weights_bytes(self.network.shape)
        return 0

    def memory_held_after(self, message: Message) -> int:
        """The network in training (with its optimizer and reply) and the cached samples, as a
        cached epoch holds them."""
        payload = self._payload_bytes
        shape = self.network.shape if self.network is not None else None
        if isinstance(message, self.UPLOAD):
            shape = shape or self._network_shape(message)
            payload += self._upload_bytes(message) * self.cache.count_new(message.sample_ids) // len(message.sample_ids)
        network = NETWORK_MEMORY_COPIES * weights_bytes(shape) if shape is not None else 0
        return network + CACHED_EPOCH_COPIES * payload

    def _upload_bytes(self, upload: Upload) -> int:
        """Bytes of an upload's states and values (what its samples take in the cache)."""
        return upload.activations.nbytes + upload.delta.nbytes

    def samples_after(self, message: Message) -> int:
        """Cached samples once `message` is stored (repeated ids are not stored again)."""
        if isinstance(message, self.UPLOAD):
            return len(self.cache) + self.cache.count_new(message.sample_ids)
        return len(self.cache)

    def recorded_form(self, message: Message, data: bytes) -> bytes:
        """A re-sent upload the cache holds exactly is recorded by ids and digest: it tells the
        server nothing new, and re-sending must not grow the transcript by a full copy each time."""
        if isinstance(message, self.UPLOAD) and message.layers == self.trainer.layers and self._holds(message):
            return encode_message(ResentUpload(sample_ids=message.sample_ids,
                                               sha256=hashlib.sha256(data).hexdigest(), wire_bytes=len(data)))
        return data

    def _holds(self, upload: Upload) -> bool:
        """Whether the cache holds every sample of `upload` with exactly its values."""
        return self.cache.holds(upload.sample_ids, upload.activations, upload.delta)

    def _conflicts(self, upload: Upload) -> bool:
        """Whether the cache holds some sample of `upload` with other values."""
        return self.cache.conflicts(upload.sample_ids, upload.activations, upload.delta)

    def _network_shape(self, upload: Upload) -> SideNetworkShape:
        """The side network an upload of this shape trains."""
        return SideNetworkShape(n_layers=upload.activations.shape[1], hidden_size=upload.activations.shape[2],
                                rank=self.training.rank, n_classes=self._output_size(upload))

    def _ensure_network(self, upload: Upload) -> None:
        """Build the network on the first upload (later ones were checked against it by `admit`)."""
        if self.network is None:
            network = self.NETWORK(self._network_shape(upload), self.training.dropout,
                                   generator=self.trainer.init_generator())
            # The first upload fixes the input standardization (see side_network's docstring).
            network.fit_input_scaling(torch.from_numpy(upload.activations.astype(np.float32)))
            self.trainer.start(network, upload.layers)

    def _store(self, upload: Upload) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Cache the upload: (which samples were new, the new samples' training inputs and targets)."""
        new = self.cache.put_many(upload.sample_ids, upload.activations, upload.delta)
        return new, torch.from_numpy(upload.activations[new]), torch.from_numpy(upload.delta[new])

    def _training_set(self) -> TrainingSet:
        """Every cached row's inputs and targets in arrival order, and the sample boundaries
        (row offsets, n + 1 of them; None: one row per sample)."""
        _, acts, delta = self.cache.load_all()
        return torch.from_numpy(acts), torch.from_numpy(delta), None

    def _on_upload(self, upload: Upload) -> UploadAck:
        self._ensure_network(upload)
        new, inputs, targets = self._store(upload)
        self._payload_bytes = self.cache.payload_bytes()
        if new.any():
            # Epoch 1 consumes uploads as they arrive; a resent sample is not trained on twice.
            self.trainer.train_arrival(inputs, targets, self.trainer.trained_rows + len(targets))
        return UploadAck(stored=int(new.sum()), duplicates=int((~new).sum()))

    def _served_network(self, network: AdditiveSideNetwork) -> AdditiveSideNetwork:
        """The side output as the device deploys it (the trained network itself here)."""
        return network

    def _reply_is_current(self) -> bool:
        return self._reply is not None and self._reply[0] == self.trainer.steps_taken

    def _weights_message(self) -> SideWeights:
        if self.network is None:
            raise ProtocolError("no side network yet: upload first")
        if not self._reply_is_current():
            self._reply = (self.trainer.steps_taken, SideWeights(state=state_arrays(self._served_network(self.network)),
                                                                 architecture=self.trainer.architecture()))
        return self._reply[1]
