"""`he_ckks`: Δ leaves the device only CKKS-encrypted; the head comes back encrypted.

Device flow: every batch's Δ is kept back and packed, per class, into the polynomial
coefficients of ciphertexts of `he_block_samples` samples, sent with the pivot activations
(`EncryptedUpload`). Then the device sends its *public* context (`HeFitRequest`:
encryption parameters, no key); the server fits the ridge head enc(W) = M·enc(Δ) over
its own label-free features, packed ⌊N/b⌋ weights per ciphertext (`ckks_packing`), and
returns it; the device decrypts W and keeps it. No decryption of a server-computed
ciphertext is ever sent back (that is the Li-Micciancio key-recovery setting).

What this protects: Δ and the head (hence the labels as far as Δ goes). What it does
not: the activations are in the clear (inputs and the backbone's zero-shot labels
leak as in the plain protocol); no side-network body is trained (the server's
features are a label-free PCA, which it knows).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from protocol.errors import ProtocolError
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.wire.messages import Message, Upload
from protocol.modes.ckks_ridge.head import FeatureMap, RidgeHead
from secure_assist.mechanisms.base import CKKS_RIDGE_MODE, Mechanism
from protocol.modes.ckks_ridge.context import join_buffer, split_buffer
from secure_assist.mechanisms.ckks import CkksKeyHolder
from protocol.modes.ckks_ridge.packing import PackingLayout
from secure_assist.mechanism_parameters import HeCkksParameters


class HeCkksDelta(Mechanism):
    """Encrypt Δ with CKKS (device-held secret key) and fit the head under encryption."""

    name = "he_ckks"
    Parameters = HeCkksParameters
    modes = (CKKS_RIDGE_MODE,)
    stage = "encrypt"
    protects = "Δ and the fitted head (labels via Δ); not the activations"
    guarantee = "CKKS (RLWE) semantic security at >= 128 bits; server holds a public context only"

    def __init__(self, parameters: HeCkksParameters, rng: np.random.Generator) -> None:
        super().__init__(parameters, rng)
        self.ckks = parameters.ckks()
        self.keys = CkksKeyHolder(self.ckks)  # no key until the first encryption
        self._pending: list[Upload] = []
        # The packing spacing (largest block sent) and the class count: the device reads the
        # reply with the same layout the server computes from the uploads.
        self._largest_block = 0
        self._n_classes = 0
        self.encrypt_seconds = 0.0
        self.ciphertext_bytes = 0
        self.uploaded_samples = 0

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        self._pending.append(upload)
        messages = []
        while sum(len(u.sample_ids) for u in self._pending) >= self.parameters.he_block_samples:
            messages.append(self._encrypt_block(self.parameters.he_block_samples))
        return messages

    def flush(self) -> list[Message]:
        return [self._encrypt_block(None)] if self._pending else []

    def _encrypt_block(self, size: int | None) -> EncryptedUpload:
        """Pack up to `size` pending samples (all if None) into one upload."""
        ids = np.concatenate([u.sample_ids for u in self._pending])
        acts = np.concatenate([u.activations for u in self._pending])
        delta = np.concatenate([u.delta for u in self._pending])
        layers = self._pending[0].layers
        size = len(ids) if size is None else size
        rest = Upload(sample_ids=ids[size:], activations=acts[size:], delta=delta[size:], layers=layers)
        self._pending = [rest] if len(rest.sample_ids) else []
        start = time.perf_counter()
        buffer, sizes = join_buffer([self.keys.encrypt(delta[:size, c]) for c in range(delta.shape[1])])
        self.encrypt_seconds += time.perf_counter() - start
        self._largest_block = max(self._largest_block, size)
        self._n_classes = delta.shape[1]
        self.ciphertext_bytes += len(buffer)
        self.uploaded_samples += size
        return EncryptedUpload(sample_ids=ids[:size], activations=acts[:size], ciphertexts=buffer,
                               ciphertext_sizes=sizes, public_context=self._public_context(), layers=layers)

    def _public_context(self) -> np.ndarray:
        """The public context (encryption parameters only) as a wire array."""
        return np.frombuffer(self.keys.public_context(), dtype=np.uint8).copy()

    def fit_request(self) -> HeFitRequest:
        """The request carrying the public context (never the secret key)."""
        return HeFitRequest(public_context=self._public_context(), n_features=self.parameters.he_features,
                            ridge=self.parameters.he_ridge)

    def decrypt_head(self, reply: HeFitReply) -> RidgeHead:
        """W from the reply's ciphertexts (class-major, one per group of features): each
        decrypts to a polynomial holding its group's weights at the layout's coefficients."""
        layout = PackingLayout(self.ckks.coefficient_count, self._largest_block, reply.components.shape[0] + 1)
        ciphertexts = split_buffer(reply.ciphertexts, reply.ciphertext_sizes)
        if len(ciphertexts) != self._n_classes * layout.groups:
            raise ProtocolError(f"the fit reply holds {len(ciphertexts)} ciphertexts, expected "
                                f"{self._n_classes} classes x {layout.groups} feature groups")
        weights = np.concatenate([layout.read(self.keys.decrypt(c), i % layout.groups)
                                  for i, c in enumerate(ciphertexts)]).reshape(self._n_classes, -1).T  # (k+1, C)
        return RidgeHead(FeatureMap(reply.input_mean, reply.input_scale, reply.components), weights)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "poly_modulus_degree": self.ckks.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.ckks.coeff_mod_bit_sizes),
                "scale_bits": self.ckks.scale_bits, "he_features": self.parameters.he_features,
                "he_ridge": self.parameters.he_ridge, "he_block_samples": self.parameters.he_block_samples,
                "body": "not trained: server features are a label-free PCA of the activations it sees"}
