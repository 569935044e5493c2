"""The server role of the CKKS mode: caches activations and encrypted Δ, fits the head.

It holds a *public* CKKS context only (`load_public_context` refuses a private one),
so it can compute on ciphertexts but never read Δ or the head it returns. What it
does see: the pivot activations in the clear (inputs leak as in the plain protocol)
and its own label-free feature map. No side-network body is trained in this mode.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import tenseal as ts
from tqdm.auto import tqdm

from protocol.codec import DEFAULT_MAX_BYTES
from protocol.endpoint import RecordingEndpoint
from protocol.errors import ProtocolError
from protocol.limits import ServerLimits
from protocol.he_messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.messages import Message, UploadAck
from secure_assist.mechanisms.ckks import join_buffer, load_public_context, split_buffer
from secure_assist.mechanisms.ridge import fit_feature_map, ridge_operator

MAX_SAMPLES = 1_000_000


class HeHeadServer(RecordingEndpoint):
    """Fits enc(W) = M·enc(Δ) with slot-wise ciphertext-plaintext products (summed by the device)."""

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES,
                 progress: bool = False, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(workdir, max_message_bytes, limits, stop)
        self.context: ts.Context | None = None
        self.blocks: list[tuple[np.ndarray, list[bytes]]] = []
        self.layers: tuple[int, ...] | None = None
        self._seen: set[bytes] = set()
        self.progress = progress
        self.fit_seconds = 0.0

    def handle(self, message: Message) -> Message:
        """Dispatch one decoded request."""
        if isinstance(message, EncryptedUpload):
            return self._on_upload(message)
        if isinstance(message, HeFitRequest):
            return self._on_fit(message)
        return super().handle(message)

    def samples_after(self, message: Message) -> int:
        """Samples held once `message` is stored (this role refuses repeated ids)."""
        ids = getattr(message, "sample_ids", ())
        return len(self._seen) + len({bytes(i) for i in ids})

    def _on_upload(self, upload: EncryptedUpload) -> UploadAck:
        if self.layers is not None and (upload.layers != self.layers or
                                        upload.activations.shape[1:] != self.blocks[0][0].shape[1:]):
            raise ProtocolError("encrypted upload shape differs from earlier uploads")
        ids = {bytes(i) for i in upload.sample_ids}
        if len(ids) != len(upload.sample_ids) or ids & self._seen:
            raise ProtocolError("repeated sample ids in the CKKS mode (each block is one packed ciphertext)")
        if len(self._seen) + len(ids) > MAX_SAMPLES:
            raise ProtocolError(f"more than {MAX_SAMPLES} samples")
        ciphertexts = split_buffer(upload.ciphertexts, upload.ciphertext_sizes)
        if self.blocks and len(ciphertexts) != len(self.blocks[0][1]):
            raise ProtocolError("the number of classes changed between uploads")
        self._seen |= ids
        self.layers = upload.layers
        self.blocks.append((upload.activations, ciphertexts))
        return UploadAck(stored=len(ids), duplicates=0)

    def _on_fit(self, request: HeFitRequest) -> HeFitReply:
        if len(self._seen) < 2:
            raise ProtocolError("nothing to fit: the PCA features need at least 2 uploaded samples")
        self.context = load_public_context(request.public_context.tobytes())
        start = time.perf_counter()
        activations = np.concatenate([acts for acts, _ in self.blocks])
        feature_map = fit_feature_map(activations, request.n_features)
        operator = ridge_operator(feature_map.apply(activations), request.ridge)  # (k+1, n)
        n_classes = len(self.blocks[0][1])
        bounds = np.cumsum([0] + [len(acts) for acts, _ in self.blocks])
        encrypted = [[self._load(c) for c in cts] for _, cts in self.blocks]  # [block][class]
        slots = {ct.size() for block in encrypted for ct in block}
        if len(slots) != 1 or min(slots) < max(np.diff(bounds)):
            raise ProtocolError(f"encrypted Δ vectors must all hold one value per slot of a block, got sizes {slots}")
        results = []
        jobs = [(c, j) for c in range(n_classes) for j in range(operator.shape[0])]
        for c, j in tqdm(jobs, desc="server: encrypted ridge fit", disable=not self.progress, leave=False):
            self.check_stop()
            # Slot-wise products M[j, i]·Δ_i summed over blocks; the device sums the slots
            # after decryption, so no rotation (and no Galois key) is ever needed.
            total = None
            for b, block in enumerate(encrypted):
                weights = np.zeros(block[c].size())
                weights[:bounds[b + 1] - bounds[b]] = operator[j, bounds[b]:bounds[b + 1]]
                part = block[c] * weights.tolist()
                total = part if total is None else total + part
            results.append(total.serialize())
        self.fit_seconds += time.perf_counter() - start
        buffer, sizes = join_buffer(results)
        return HeFitReply(input_mean=feature_map.mean, input_scale=feature_map.scale,
                          components=feature_map.components, ciphertexts=buffer, ciphertext_sizes=sizes)

    def _load(self, ciphertext: bytes) -> ts.CKKSVector:
        try:
            return ts.ckks_vector_from(self.context, ciphertext)
        except Exception as exc:  # TenSEAL raises bare exceptions on malformed bytes
            raise ProtocolError(f"malformed ciphertext: {exc}") from exc
