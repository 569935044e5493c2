"""The generation mode's server: PAE's side network trained from states and r_t per loss position.

The objective is PAE's MSE through the public head, Σ_t (s_tᵀ G s_t − 2 s_tᵀ r_t) with
G = W_UᵀW_U (see `protocol.modes.generation.device`). With s = G^{-1/2} u it becomes
Σ_t ‖u_t − G^{-1/2} r_t‖² + const: an ordinary MSE on whitened targets, so the same
side network and side trainer (optimizer, cache-only epochs, checkpoints, restart) as the
classification server apply unchanged. Targets are also divided by their RMS on the
first upload (σ) so that the learning rate means the same as for Δ; the side output the
server serves and stores is the deployable one, s = σ·G^{-1/2}·u, folded into its head.
Batches are drawn by sample; each sample contributes all of its loss positions.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import torch

from protocol.server.cache import SequenceCache
from protocol.wire.codec import DEFAULT_MAX_BYTES, decode, encode
from protocol.errors import ProtocolError
from protocol.files import write_atomic
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.server.limits import ServerLimits
from protocol.wire.messages import Message, RefreshedTargets, UploadAck
from protocol.server.training_settings import ServerTraining
from protocol.server.side_tuning import SideTuningServer
from protocol.model.side_network import AdditiveSideNetwork, HiddenCorrection

GENERATION_CACHE_FILE = "generation_cache.sqlite"
GRAM_FILE = "head_gram.safetensors"
# Eigenvalues of G below this share of the largest are treated as this (G^{-1/2} stays bounded).
EIGEN_FLOOR = 1e-8
# Held per entry of the d×d Gram matrix: itself (float32), G^{-1/2} (float64), the whitening (float32).
GRAM_MEMORY_BYTES_PER_ENTRY = 16


def inverse_square_root(gram: np.ndarray) -> np.ndarray:
    """G^{-1/2} of a symmetric positive semi-definite matrix, eigenvalues floored."""
    values, vectors = np.linalg.eigh(gram.astype(np.float64))
    floor = max(float(values.max()), 1e-12) * EIGEN_FLOOR
    return (vectors * np.clip(values, floor, None) ** -0.5) @ vectors.T


class GenerationServer(SideTuningServer):
    """Generation PAE server for one device; its work directory is its whole view."""

    NETWORK = HiddenCorrection
    UPLOAD = GenerationUpload

    def __init__(self, workdir: Path | str, training: ServerTraining = ServerTraining(),
                 max_message_bytes: int = DEFAULT_MAX_BYTES, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        # The whitening must be known before the base class replays cached rows on restart.
        self._gram: np.ndarray | None = None
        self._scale: float | None = None
        self._whiten: torch.Tensor | None = None
        self._inverse_root: np.ndarray | None = None
        self._load_gram(Path(workdir) / GRAM_FILE)
        super().__init__(workdir, training, max_message_bytes, limits, stop)

    def _open_cache(self) -> SequenceCache:
        return SequenceCache(self.workdir / GENERATION_CACHE_FILE)

    def handle(self, message: Message) -> Message:
        """The head's Gram matrix first, then uploads and the common requests."""
        if isinstance(message, HeadGram):
            return self._on_gram(message.gram)
        return super().handle(message)

    def admit(self, message: Message) -> None:
        """The common checks, then: a Gram matrix within the width limit and the same as any held
        before; an upload only after the Gram matrix, of its width."""
        super().admit(message)
        if isinstance(message, HeadGram):
            gram = message.gram
            # The Gram matrix is d×d and is eigen-decomposed: its width is bounded like an upload's.
            if self.limits is not None and gram.shape[0] > self.limits.max_width:
                raise self.limits.exceeded("max_width", f"head Gram matrix of width {gram.shape[0]}")
            if self._gram is not None and (self._gram.shape != gram.shape
                                           or not np.allclose(self._gram, gram, rtol=1e-5, atol=1e-6)):
                raise ProtocolError("this device's server state holds another head Gram matrix")
        if isinstance(message, GenerationUpload):
            if self._gram is None:
                raise ProtocolError("send the head's Gram matrix (head_gram) before the first generation upload")
            if self._gram.shape[0] != message.activations.shape[2]:
                raise ProtocolError(f"upload hidden size {message.activations.shape[2]} differs from the head's "
                                    f"{self._gram.shape[0]}")

    def memory_held_after(self, message: Message) -> int:
        """The common holding, and the Gram matrix with its inverse square root and whitening."""
        width = message.gram.shape[0] if isinstance(message, HeadGram) else (
            self._gram.shape[0] if self._gram is not None else 0)
        return super().memory_held_after(message) + GRAM_MEMORY_BYTES_PER_ENTRY * width * width

    def _on_gram(self, gram: np.ndarray) -> UploadAck:
        if self._gram is not None:
            # A device resuming after a reconnect sends it again (`admit` checked it is the same): a no-op.
            return UploadAck(stored=0, duplicates=1)
        self._gram = gram.astype(np.float32)
        self._save_gram()
        return UploadAck(stored=1, duplicates=0)

    @property
    def inverse_root(self) -> np.ndarray:
        """G^{-1/2}, computed once: an eigendecomposition of a d×d matrix is seconds of CPU at large d."""
        if self._inverse_root is None:
            self._inverse_root = inverse_square_root(self._gram)
        return self._inverse_root

    def _holds(self, upload: GenerationUpload) -> bool:
        return self.cache.holds_sequences(upload.sample_ids, upload.sample_rows(), upload.activations,
                                          upload.residual)

    def _conflicts(self, upload: GenerationUpload) -> bool:
        return self.cache.conflicts_sequences(upload.sample_ids, upload.sample_rows(), upload.activations,
                                              upload.residual)

    def _refreshed_upload(self, refresh: RefreshedTargets, states: list[np.ndarray],
                          layers: tuple[int, ...]) -> GenerationUpload:
        """Round 1's positions' `states` with `refresh`'s r_t, each sample's rows as many as round 1 sent."""
        if [len(sample) for sample in states] != refresh.counts.tolist():
            raise ProtocolError("refreshed targets must give each sample the loss positions it had in round 1")
        return GenerationUpload(sample_ids=refresh.sample_ids, counts=refresh.counts,
                                activations=np.concatenate(states), residual=refresh.targets, layers=layers)

    def _upload_bytes(self, upload: GenerationUpload) -> int:
        return upload.activations.nbytes + upload.residual.nbytes

    def _output_size(self, upload: GenerationUpload) -> int:
        return upload.activations.shape[2]

    def _ensure_network(self, upload: GenerationUpload) -> None:
        if self._scale is None:
            whitened = upload.residual.astype(np.float64) @ self.inverse_root
            self._scale = float(np.sqrt((whitened ** 2).mean())) or 1.0
            self._save_gram()
        super()._ensure_network(upload)

    def _targets(self, residual: np.ndarray) -> torch.Tensor:
        """Whitened, scaled targets: r G^{-1/2} / σ."""
        if self._whiten is None:
            self._whiten = torch.from_numpy(self.inverse_root / self._scale).float()
        return torch.from_numpy(np.ascontiguousarray(residual, dtype=np.float32)) @ self._whiten

    def _store(self, upload: GenerationUpload) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        spans = upload.sample_rows()
        new = self.cache.put_sequences(upload.sample_ids, spans, upload.activations, upload.residual)
        fresh = [np.arange(span.start, span.stop) for span, is_new in zip(spans, new) if is_new]
        rows = np.concatenate(fresh) if fresh else np.zeros(0, dtype=np.int64)
        return new, torch.from_numpy(upload.activations[rows]), self._targets(upload.residual[rows])

    def _training_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        _, counts, acts, residual = self.cache.load_sequences()
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
        return torch.from_numpy(acts), self._targets(residual), offsets

    def _served_network(self, network: AdditiveSideNetwork) -> AdditiveSideNetwork:
        served = copy.deepcopy(network)
        served.map_outputs_(self._scale * self.inverse_root)
        return served

    def _save_gram(self) -> None:
        metadata = {} if self._scale is None else {"target_scale": repr(self._scale)}
        write_atomic(self.workdir / GRAM_FILE, encode({"gram": self._gram}, metadata))

    def _load_gram(self, path: Path) -> None:
        if not path.is_file():
            return
        tensors, metadata = decode(path.read_bytes())
        try:
            self._gram = HeadGram.from_parts(tensors, {}).gram
            self._scale = float(metadata["target_scale"]) if "target_scale" in metadata else None
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"corrupt head Gram file {path}: {exc}") from exc
