"""CKKS key material with TenSEAL: the device's secret context and the server's public one.

The device creates the context and never lets the secret key go; the server loads a
serialized *public* context and refuses anything private. The fit needs only
ciphertext-plaintext products and additions, so the public context carries no key at
all: no Galois keys (no rotation is ever computed), no relinearization keys (no
ciphertext-ciphertext product) and no public key (the server never encrypts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tenseal as ts

from protocol.errors import ProtocolError, UserInputError

# Largest total coefficient modulus (bits) per ring degree N that keeps 128-bit
# classical security (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MAX_CIPHERTEXT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CkksParameters:
    """Ring degree, modulus chain and scale. Two levels: one for the ridge dot products and
    headroom; the defaults are the N = 8192 setting of the benchmark."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise UserInputError(f"CKKS poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, "
                                 f"got {self.poly_modulus_degree}")
        total = sum(self.coeff_mod_bit_sizes)
        if total > limit:
            raise UserInputError(f"CKKS parameters below 128-bit security: {total} modulus bits at "
                                 f"N={self.poly_modulus_degree} (at most {limit})")
        if len(self.coeff_mod_bit_sizes) < 3:
            raise UserInputError("CKKS needs at least 3 moduli (one multiplication level)")
        if not 20 <= self.scale_bits <= min(self.coeff_mod_bit_sizes):
            raise UserInputError(f"CKKS scale of 2^{self.scale_bits} must be in 2^20 .. the smallest modulus")

    @property
    def slot_count(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2


class CkksKeyHolder:
    """The device's CKKS context with the secret key; only its public form leaves."""

    def __init__(self, parameters: CkksParameters = CkksParameters()) -> None:
        self.parameters = parameters
        self._context = ts.context(ts.SCHEME_TYPE.CKKS, parameters.poly_modulus_degree,
                                   coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes))
        self._context.global_scale = 2.0**parameters.scale_bits

    def public_context(self) -> bytes:
        """The serialized public context for the server: parameters only, no key of any kind."""
        public = self._context.copy()
        public.make_context_public()
        return public.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                                save_relin_keys=False)

    def encrypt(self, values: np.ndarray) -> bytes:
        """One ciphertext packing a vector; longer than the slot count is a user error."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if len(values) > self.parameters.slot_count:
            raise UserInputError(f"vector of {len(values)} values exceeds the CKKS slot count "
                                 f"{self.parameters.slot_count}")
        return ts.ckks_vector(self._context, values.tolist()).serialize()

    def decrypt(self, ciphertext: bytes) -> np.ndarray:
        """Decrypt on the device (the result never goes back to the server)."""
        return np.array(ts.ckks_vector_from(self._context, ciphertext).decrypt())


def load_public_context(data: bytes) -> ts.Context:
    """The server's context: refuses a private one (secret key inside)."""
    try:
        context = ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise ProtocolError(f"malformed CKKS context: {exc}") from exc
    if context.is_private() or context.has_secret_key():
        raise ProtocolError("refusing a private CKKS context: the server must never hold the secret key")
    return context


def split_buffer(buffer: np.ndarray, sizes: np.ndarray) -> list[bytes]:
    """Cut a uint8 buffer into ciphertexts of the given sizes (validated against the total)."""
    if sizes.ndim != 1 or (sizes < 1).any() or (sizes > MAX_CIPHERTEXT_BYTES).any():
        raise ProtocolError(f"ciphertext sizes must be in 1..{MAX_CIPHERTEXT_BYTES}")
    if int(sizes.sum()) != len(buffer):
        raise ProtocolError(f"ciphertext sizes sum to {int(sizes.sum())}, buffer holds {len(buffer)} bytes")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return [buffer[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(sizes))]


def join_buffer(ciphertexts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 buffer, int64 sizes) for the wire."""
    sizes = np.array([len(c) for c in ciphertexts], dtype=np.int64)
    return np.frombuffer(b"".join(ciphertexts), dtype=np.uint8).copy(), sizes
