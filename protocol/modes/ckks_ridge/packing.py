"""CKKS parameters and the coefficient packing of the encrypted ridge fit (pure numpy, no keys).

Why coefficients, not slots: a ciphertext-plaintext product multiplies *polynomials*
mod X^N + 1, so with Δ of one block of samples in the low coefficients of one
ciphertext, Δ(X) = Σ_i Δ_i X^i, and the server's plaintext
P(X) = Σ_q Σ_i M[j_q, i] X^(q·s + s-1-i), coefficient q·s + s-1 of Δ·P is exactly the dot
product Σ_i M[j_q, i]·Δ_i (spacing s ≥ the block's samples, so no other term lands there,
and the highest exponent reached, N + s - 2, wraps only into coefficients below s - 1).
One product thus yields ⌊N/s⌋ head weights, with no rotation and so no Galois key: the
server needs no key of any kind, and the reply is C·⌈(k+1)/⌊N/s⌋⌉ ciphertexts.

SEAL's CKKS encoder maps slot values to coefficients through the canonical embedding;
`embed` / `unembed` are that map's inverse pair in SEAL's slot order (slot i is the
evaluation at ζ^(3^i mod 2N), ζ = e^(iπ/N)), so encoding `embed(c)` yields the
plaintext polynomial with coefficients c (times the scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protocol.errors import UserInputError

# Largest total coefficient modulus (bits) per ring degree N that keeps 128-bit
# classical security (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# Bits of the base prime above the scale: decrypted values must stay below 2^(headroom - 1).
HEADROOM_BITS = 10


@dataclass(frozen=True)
class CkksParameters:
    """Ring degree, modulus chain and scale of the device's CKKS context.

    The fit uses one multiplicative level: the device encrypts with the base prime and
    one rescale prime (the chain's first two), the server multiplies by plaintexts and
    rescales to the base prime alone; the last modulus is SEAL's special prime. Further
    primes would go unused."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        bits = self.coeff_mod_bit_sizes
        if not isinstance(bits, tuple) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
            raise UserInputError(f"CKKS coeff_mod_bit_sizes must be a tuple of integers, got {bits!r}")
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise UserInputError(f"CKKS poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, "
                                 f"got {self.poly_modulus_degree}")
        if len(bits) < 3:
            raise UserInputError("CKKS needs at least 3 moduli: base prime, one rescale prime, special prime")
        if not all(20 <= b <= 60 for b in bits):
            raise UserInputError(f"CKKS modulus sizes must be 20..60 bits, got {list(bits)}")
        if sum(bits) > limit:
            raise UserInputError(f"CKKS parameters below 128-bit security: {sum(bits)} modulus bits at "
                                 f"N={self.poly_modulus_degree} (at most {limit})")
        if not 20 <= self.scale_bits <= bits[0] - HEADROOM_BITS:
            raise UserInputError(f"CKKS scale of 2^{self.scale_bits} must be in 2^20 .. 2^{bits[0] - HEADROOM_BITS} "
                                 f"(the base prime's {bits[0]} bits less {HEADROOM_BITS} bits of headroom)")

    @property
    def coefficient_count(self) -> int:
        """Values one ciphertext packs (its polynomial's coefficients)."""
        return self.poly_modulus_degree


@lru_cache(maxsize=8)
def _slot_exponents(n: int) -> np.ndarray:
    """3^i mod 2N for slot i: the root of unity (power of ζ) SEAL evaluates slot i at."""
    exponents = np.empty(n // 2, dtype=np.int64)
    power = 1
    for i in range(n // 2):
        exponents[i] = power
        power = power * 3 % (2 * n)
    return exponents


def embed(coefficients: np.ndarray) -> np.ndarray:
    """The N/2 complex slot values whose CKKS encoding is the polynomial with these N coefficients."""
    n = len(coefficients)
    twisted = np.asarray(coefficients, dtype=np.float64) * np.exp(1j * np.pi * np.arange(n) / n)
    evaluations = n * np.fft.ifft(twisted)  # evaluations[k] = c(ζ^(2k+1))
    return evaluations[(_slot_exponents(n) - 1) // 2]


def unembed(slots: np.ndarray) -> np.ndarray:
    """The N real coefficients of the polynomial whose CKKS slot values are `slots`."""
    n = 2 * len(slots)
    exponents = _slot_exponents(n)
    evaluations = np.zeros(n, dtype=np.complex128)
    evaluations[(exponents - 1) // 2] = slots
    evaluations[(2 * n - exponents - 1) // 2] = np.conj(slots)  # real polynomial: conjugate roots
    return (np.fft.fft(evaluations) / n * np.exp(-1j * np.pi * np.arange(n) / n)).real


@dataclass(frozen=True)
class PackingLayout:
    """Where each head weight sits in the reply: row j of the ridge operator is feature j of
    the head; rows go in groups of ⌊N/spacing⌋, one reply ciphertext per (class, group)."""

    coefficient_count: int  # N
    spacing: int  # s: at least the samples of the largest encrypted block
    rows: int  # k + 1 (features and bias)

    def __post_init__(self) -> None:
        if not 1 <= self.spacing <= self.coefficient_count or self.rows < 1:
            raise UserInputError(f"invalid CKKS packing: spacing {self.spacing}, {self.rows} rows, "
                                 f"N = {self.coefficient_count}")

    @property
    def per_group(self) -> int:
        """Head weights per reply ciphertext."""
        return self.coefficient_count // self.spacing

    @property
    def groups(self) -> int:
        """Reply ciphertexts per class."""
        return -(-self.rows // self.per_group)

    def plaintext(self, operator_block: np.ndarray, group: int) -> np.ndarray:
        """Coefficients of the server's plaintext P for one block of samples: `operator_block` is
        M[:, block columns], of shape (rows, samples in the block)."""
        rows = operator_block[group * self.per_group:(group + 1) * self.per_group]
        n_samples = operator_block.shape[1]
        coefficients = np.zeros((self.per_group, self.spacing))
        # M[j_q, i] at exponent q·s + s-1-i: sample order reversed inside each group's stretch.
        coefficients[:len(rows), self.spacing - n_samples:] = rows[:, ::-1]
        padded = np.zeros(self.coefficient_count)
        padded[:coefficients.size] = coefficients.ravel()
        return padded

    def read(self, coefficients: np.ndarray, group: int) -> np.ndarray:
        """The group's head weights from a decrypted reply polynomial (coefficients q·s + s-1)."""
        count = min(self.per_group, self.rows - group * self.per_group)
        return coefficients[self.spacing - 1:count * self.spacing:self.spacing]
