"""The server role of the CKKS mode: caches activations and encrypted Δ, fits the head.

It holds a *public* CKKS context only (encryption parameters; `load_public_context`
refuses anything more), so it can compute on ciphertexts but never read Δ or the head
it returns. What it does see: the pivot activations in the clear (inputs leak as in the
plain protocol) and its own label-free feature map. No side-network body is trained in
this mode.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.server.endpoint import RecordingEndpoint
from protocol.errors import ProtocolError
from protocol.server.limits import ServerLimits
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.wire.messages import Message, UploadAck
from protocol.modes.ckks_ridge.context import CkksPublicContext, join_buffer, load_public_context, split_buffer
from protocol.modes.ckks_ridge.packing import PackingLayout
from protocol.modes.ckks_ridge.ridge import fit_feature_map, ridge_operator

MAX_SAMPLES = 1_000_000


class HeHeadServer(RecordingEndpoint):
    """Fits enc(W) = M·enc(Δ) with ciphertext-plaintext polynomial products, ⌊N/s⌋ weights per
    reply ciphertext (`ckks_packing`); no rotation, so no key of any kind."""

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES,
                 progress: bool = False, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(workdir, max_message_bytes, limits, stop)
        self.context: CkksPublicContext | None = None
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
        bounds = np.cumsum([0] + [len(acts) for acts, _ in self.blocks])
        spacing = int(max(np.diff(bounds)))
        if spacing > self.context.poly_modulus_degree:
            raise ProtocolError(f"an encrypted block of {spacing} samples exceeds the CKKS ring degree")
        layout = PackingLayout(self.context.poly_modulus_degree, spacing, operator.shape[0])
        encrypted = [[self.context.load_ciphertext(c) for c in cts] for _, cts in self.blocks]  # [block][class]
        n_classes = len(encrypted[0])
        replies: list[list[bytes]] = [[] for _ in range(n_classes)]
        for group in tqdm(range(layout.groups), desc="server: encrypted ridge fit", disable=not self.progress,
                          leave=False):
            self.check_stop()
            # One plaintext per block puts this group's operator rows where the polynomial product
            # sums them against the block's Δ coefficients; it serves every class.
            plaintexts = [self.context.encode(layout.plaintext(operator[:, bounds[b]:bounds[b + 1]], group))
                          for b in range(len(self.blocks))]
            for c in range(n_classes):
                replies[c].append(self.context.dot([block[c] for block in encrypted], plaintexts))
        self.fit_seconds += time.perf_counter() - start
        buffer, sizes = join_buffer([reply for per_class in replies for reply in per_class])  # class-major
        return HeFitReply(input_mean=feature_map.mean, input_scale=feature_map.scale,
                          components=feature_map.components, ciphertexts=buffer, ciphertext_sizes=sizes)

