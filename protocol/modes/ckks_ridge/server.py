"""The server role of the CKKS mode: stores activations and encrypted Δ, fits the head.

It holds a *public* CKKS context only (encryption parameters; `load_public_context`
refuses anything more), so it can compute on ciphertexts but never read Δ or the head
it returns. What it does see: the pivot activations in the clear (inputs leak as in the
plain protocol) and its own label-free feature map. No side-network body is trained in
this mode.

What a device can make it store and compute is bounded from the context the device
declares with its uploads: each ciphertext is checked by SEAL at upload and may not be
larger than a fresh ciphertext under those parameters; the ciphertext bytes a device
stores are bounded per sample (`ckks_ciphertext_bytes_per_sample`), the products a
fit computes (blocks x feature groups x classes) by `max_ckks_fit_products` and its PCA
by `max_ckks_pca_gmacs`, checked before any work. A repeated fit request is answered from the last fit, and fits of the
same features under another ridge λ reuse its PCA and Gram matrix.
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
from protocol.modes.ckks_ridge.head import FeatureMap
from protocol.modes.ckks_ridge.packing import PackingLayout
from protocol.modes.ckks_ridge.ridge import feature_count, fit_feature_map, ridge_operator
from protocol.modes.ckks_ridge.store import BlockStore

MAX_SAMPLES = 1_000_000


class HeHeadServer(RecordingEndpoint):
    """Fits enc(W) = M·enc(Δ) with ciphertext-plaintext polynomial products, ⌊N/s⌋ weights per
    reply ciphertext (`ckks_packing`); no rotation, so no key of any kind."""

    def __init__(self, workdir: Path | str, max_message_bytes: int = DEFAULT_MAX_BYTES,
                 progress: bool = False, limits: ServerLimits | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(workdir, max_message_bytes, limits, stop)
        self.store = BlockStore(self.workdir)
        self._context: tuple[bytes, CkksPublicContext] | None = None
        self._features: tuple[tuple[int, int], FeatureMap, np.ndarray, np.ndarray] | None = None  # key, map, F, FᵀF
        self._fitted: tuple[tuple[int, float, int], HeFitReply] | None = None
        self.progress = progress
        self.fit_seconds = 0.0
        self.fits_computed = 0

    def handle(self, message: Message) -> Message:
        """Dispatch one decoded request."""
        if isinstance(message, EncryptedUpload):
            self.store.add(message)
            return UploadAck(stored=len(message.sample_ids), duplicates=0)
        if isinstance(message, HeFitRequest):
            return self._on_fit(message)
        return super().handle(message)

    def samples_after(self, message: Message) -> int:
        """Samples held once `message` is stored (this role refuses repeated ids)."""
        ids = getattr(message, "sample_ids", ())
        return len(self.store.sample_ids) + len({bytes(i) for i in ids})

    def admit(self, message: Message) -> None:
        """The shared limits, then this mode's: uploads checked against the declared context, a fit's
        work bounded before it starts."""
        super().admit(message)
        if isinstance(message, EncryptedUpload):
            self._admit_upload(message)
        elif isinstance(message, HeFitRequest):
            self._admit_fit(message)

    @property
    def context(self) -> CkksPublicContext | None:
        """The public context this device's uploads declared (None before its first upload)."""
        return None if self.store.context is None else self._declared(np.frombuffer(self.store.context, np.uint8))

    def _declared(self, context: np.ndarray) -> CkksPublicContext:
        """The device's public context: the one its first upload declared, which every later request repeats."""
        data = context.tobytes()
        if self.store.context is not None and data != self.store.context:
            load_public_context(data)  # key material is refused as such, by name
            raise ProtocolError("the public context differs from the one this device's first upload declared")
        if self._context is None or self._context[0] != data:
            self._context = (data, load_public_context(data))
        return self._context[1]

    def _admit_upload(self, upload: EncryptedUpload) -> None:
        context = self._declared(upload.public_context)
        store, samples = self.store, len(upload.sample_ids)
        if samples > context.poly_modulus_degree:
            raise ProtocolError(f"an encrypted block of {samples} samples exceeds the CKKS ring degree "
                                f"{context.poly_modulus_degree}")
        if store.layers is not None and (upload.layers != store.layers or
                                         upload.activations.shape[1:] != store.activations[0].shape[1:]):
            raise ProtocolError("encrypted upload shape differs from earlier uploads")
        ids = {bytes(i) for i in upload.sample_ids}
        if len(ids) != samples or ids & store.sample_ids:
            raise ProtocolError("repeated sample ids in the CKKS mode (each block is one packed ciphertext)")
        if len(store.sample_ids) + samples > MAX_SAMPLES:
            raise ProtocolError(f"more than {MAX_SAMPLES} samples")
        classes = len(upload.ciphertext_sizes)
        if store.classes and classes != store.classes:
            raise ProtocolError("the number of classes changed between uploads")
        largest = context.max_ciphertext_bytes
        if int(upload.ciphertext_sizes.max()) > largest:
            raise ProtocolError(f"a ciphertext of {int(upload.ciphertext_sizes.max())} bytes: a fresh ciphertext "
                                f"under the declared parameters takes at most {largest}")
        if self.limits is not None:
            held = store.ciphertext_bytes + len(upload.ciphertexts)
            # Per sample and class, plus one whole ciphertext per class for a last, partial block.
            allowed = classes * (self.samples_after(upload) * self.limits.ckks_ciphertext_bytes_per_sample + largest)
            if held > allowed:
                raise self.limits.exceeded("ckks_ciphertext_bytes_per_sample",
                                           f"{held} ciphertext bytes for {self.samples_after(upload)} samples "
                                           f"of {classes} classes")
        for ciphertext in split_buffer(upload.ciphertexts, upload.ciphertext_sizes):
            context.load_ciphertext(ciphertext)  # SEAL's own checks, and the fit's level

    def _layout(self, context: CkksPublicContext, n_features: int) -> PackingLayout:
        """Where the fit puts each head weight (as the device will read it)."""
        store = self.store
        width = int(np.prod(store.activations[0].shape[1:]))
        spacing = max(store.block_samples)
        rows = feature_count(n_features, len(store.sample_ids), width) + 1
        return PackingLayout(context.poly_modulus_degree, spacing, rows)

    def _admit_fit(self, request: HeFitRequest) -> None:
        if len(self.store.sample_ids) < 2:
            raise ProtocolError("nothing to fit: the PCA features need at least 2 uploaded samples")
        layout = self._layout(self._declared(request.public_context), request.n_features)
        if self.limits is None:
            return
        products = len(self.store) * layout.groups * self.store.classes
        if products > self.limits.max_ckks_fit_products:
            raise self.limits.exceeded("max_ckks_fit_products",
                                       f"a fit of {len(self.store)} blocks x {layout.groups} feature groups x "
                                       f"{self.store.classes} classes ({products} products)")
        width = int(np.prod(self.store.activations[0].shape[1:]))
        gmacs = len(self.store.sample_ids) * width * (layout.rows - 1) / 1e9
        if gmacs > self.limits.max_ckks_pca_gmacs and (request.n_features, len(self.store)) != self._feature_key:
            raise self.limits.exceeded("max_ckks_pca_gmacs",
                                       f"a PCA of {len(self.store.sample_ids)} samples x {width} values x "
                                       f"{layout.rows - 1} features ({gmacs:.1f} billion multiply-adds)")

    @property
    def _feature_key(self) -> tuple[int, int] | None:
        """(features, blocks) of the PCA held from the last fit."""
        return None if self._features is None else self._features[0]

    def _feature_space(self, n_features: int) -> tuple[FeatureMap, np.ndarray, np.ndarray]:
        """The PCA map, the features F and FᵀF for `n_features`, computed once per set of uploads."""
        key = (n_features, len(self.store))
        if self._feature_key != key:
            activations = np.concatenate(self.store.activations)
            feature_map = fit_feature_map(activations, n_features)
            features = feature_map.apply(activations)
            self._features = (key, feature_map, features, features.T @ features)
        return self._features[1:]

    def _on_fit(self, request: HeFitRequest) -> HeFitReply:
        key = (request.n_features, request.ridge, len(self.store))
        if self._fitted is not None and self._fitted[0] == key:
            return self._fitted[1]  # nothing changed since: the same reply, no work
        context = self._declared(request.public_context)
        start = time.perf_counter()
        feature_map, features, gram = self._feature_space(request.n_features)
        operator = ridge_operator(features, request.ridge, gram)  # (k+1, n)
        bounds = np.cumsum([0] + self.store.block_samples)
        layout = self._layout(context, request.n_features)
        encrypted = [[context.load_ciphertext(c) for c in self.store.ciphertexts(b)]
                     for b in range(len(self.store))]  # [block][class]
        replies: list[list[bytes]] = [[] for _ in range(self.store.classes)]
        for group in tqdm(range(layout.groups), desc="server: encrypted ridge fit", disable=not self.progress,
                          leave=False):
            self.check_stop()
            # One plaintext per block puts this group's operator rows where the polynomial product
            # sums them against the block's Δ coefficients; it serves every class.
            plaintexts = [context.encode(layout.plaintext(operator[:, bounds[b]:bounds[b + 1]], group))
                          for b in range(len(self.store))]
            for c in range(self.store.classes):
                replies[c].append(context.dot([block[c] for block in encrypted], plaintexts))
        self.fit_seconds += time.perf_counter() - start
        self.fits_computed += 1
        buffer, sizes = join_buffer([reply for per_class in replies for reply in per_class])  # class-major
        reply = HeFitReply(input_mean=feature_map.mean, input_scale=feature_map.scale,
                           components=feature_map.components, ciphertexts=buffer, ciphertext_sizes=sizes)
        self._fitted = (key, reply)
        return reply
