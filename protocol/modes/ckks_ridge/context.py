"""The server's CKKS context: encryption parameters only, no key of any kind.

The device creates the keys (`secure_assist.mechanisms.ckks.CkksKeyHolder`) and never lets
the secret key go; the server gets the *encryption parameters* only. The fit needs only
ciphertext-plaintext products, additions and one rescale (see `packing`), so the public
context carries no key at all: no Galois keys (no rotation is ever computed), no
relinearization keys (no ciphertext-ciphertext product) and no public key (the device
encrypts with its secret key; the server never encrypts). `load_public_context` accepts
nothing else.

TenSEAL's `sealapi` saves and loads SEAL objects through file paths only, so (de)serialization
goes through a private temporary file; only public objects (parameters, ciphertexts) ever do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from protocol.errors import ProtocolError
from protocol.modes.ckks_ridge.packing import CkksParameters, embed

MAX_CIPHERTEXT_BYTES = 16 * 1024 * 1024
# Beyond the polynomials' raw bytes, a serialized ciphertext holds SEAL's header and its parameters
# (tens of bytes), and compression can grow incompressible data slightly: this covers both.
SERIALIZATION_SLACK = 4096
# Encryption parameters serialize to under 100 bytes at N = 8192; any key is tens of KB or more.
MAX_PUBLIC_CONTEXT_BYTES = 1024


def to_bytes(public_object: Any) -> bytes:
    """A SEAL object's serialization (compressed by SEAL); never called with a secret key."""
    with tempfile.TemporaryDirectory(prefix="secure-assist-ckks-") as folder:
        path = Path(folder) / "object"
        public_object.save(str(path))
        return path.read_bytes()


def load_seal(target: Any, data: bytes, *context: Any) -> Any:
    """`target` loaded (and validated by SEAL against `context`) from bytes."""
    with tempfile.TemporaryDirectory(prefix="secure-assist-ckks-") as folder:
        path = Path(folder) / "object"
        path.write_bytes(data)
        target.load(*context, str(path))
    return target


def load_ciphertext(data: bytes, context: seal.SEALContext) -> seal.Ciphertext:
    """A ciphertext from bytes, checked by SEAL against the context; bad bytes are a protocol error."""
    try:
        return load_seal(seal.Ciphertext(), data, context)
    except (RuntimeError, ValueError) as exc:  # SEAL raises bare exceptions on malformed bytes
        raise ProtocolError(f"malformed ciphertext: {exc}") from exc


def encryption_parameters(parameters: CkksParameters) -> seal.EncryptionParameters:
    """SEAL's encryption parameters (no key) for a ring degree and modulus chain."""
    sealed = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    sealed.set_poly_modulus_degree(parameters.poly_modulus_degree)
    sealed.set_coeff_modulus(seal.CoeffModulus.Create(parameters.poly_modulus_degree,
                                                      list(parameters.coeff_mod_bit_sizes)))
    return sealed


def seal_context(parameters: seal.EncryptionParameters) -> seal.SEALContext:
    """SEAL's context for these parameters, which it marks unusable below 128-bit security."""
    return seal.SEALContext(parameters, True, seal.SEC_LEVEL_TYPE.TC128)


def encryption_level(context: seal.SEALContext) -> list[int]:
    """The parms_id of the last-but-one level: base prime plus the one rescale prime the fit uses."""
    return context.last_context_data().prev_context_data().parms_id()


class CkksPublicContext:
    """The server's CKKS context: encryption parameters and what computes with them, no key.

    It checks each uploaded ciphertext (SEAL validates it against the parameters; this
    class requires the level the device encrypts at) and computes Σ_b ct_b ⊙ P_b,
    rescaled to the base prime."""

    def __init__(self, context: seal.SEALContext) -> None:
        self._context = context
        self._level = encryption_level(context)
        self._evaluator = seal.Evaluator(context)
        self._encoder = seal.CKKSEncoder(context)
        # Plaintexts are encoded at scale = the prime the rescale divides by, so the reply
        # keeps the device's scale exactly.
        self._plain_scale = float(context.get_context_data(self._level).parms().coeff_modulus()[-1].value())

    @property
    def poly_modulus_degree(self) -> int:
        """Coefficients per ciphertext (N)."""
        return self._context.first_context_data().parms().poly_modulus_degree()

    @property
    def max_ciphertext_bytes(self) -> int:
        """The most bytes a fresh 2-part ciphertext at the fit's level can serialize to under these
        parameters: two polynomials of N coefficients per prime of that level, 8 bytes each, plus slack."""
        parms = self._context.get_context_data(self._level).parms()
        raw = 2 * parms.poly_modulus_degree() * len(parms.coeff_modulus()) * 8
        return raw + raw // 64 + SERIALIZATION_SLACK

    def load_ciphertext(self, data: bytes) -> seal.Ciphertext:
        """An uploaded ciphertext, validated; malformed or at another level is a protocol error."""
        ciphertext = load_ciphertext(data, self._context)
        if ciphertext.size() != 2 or list(ciphertext.parms_id()) != list(self._level):
            raise ProtocolError("an uploaded ciphertext must be a fresh 2-part ciphertext at the fit's level")
        return ciphertext

    def encode(self, coefficients: np.ndarray) -> seal.Plaintext:
        """A plaintext polynomial with these coefficients, at the uploads' level."""
        plain = seal.Plaintext()
        self._encoder.encode(embed(coefficients).tolist(), self._level, self._plain_scale, plain)
        return plain

    def dot(self, ciphertexts: list[seal.Ciphertext], plaintexts: list[seal.Plaintext]) -> bytes:
        """Σ_b ciphertexts[b] ⊙ plaintexts[b] (polynomial products), rescaled; serialized."""
        try:
            products = []
            for ciphertext, plain in zip(ciphertexts, plaintexts, strict=True):
                product = seal.Ciphertext()
                self._evaluator.multiply_plain(ciphertext, plain, product)
                products.append(product)
            total = seal.Ciphertext()
            self._evaluator.add_many(products, total)
            self._evaluator.rescale_to_next_inplace(total)
        except (RuntimeError, ValueError) as exc:  # e.g. mismatched scales across uploads
            raise ProtocolError(f"encrypted fit failed: {exc}") from exc
        return to_bytes(total)


def load_public_context(data: bytes) -> CkksPublicContext:
    """The server's context from the device's public one: CKKS encryption parameters only.

    Anything larger than parameters can be (a key, a TenSEAL context with its keys) is
    refused before parsing, and the parameters must give 128-bit security with a fit level."""
    if len(data) > MAX_PUBLIC_CONTEXT_BYTES:
        raise ProtocolError(f"refusing a CKKS context of {len(data)} bytes: the server takes encryption "
                            "parameters only, never key material (the secret key stays on the device)")
    try:
        parameters = load_seal(seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS), data)
    except (RuntimeError, ValueError) as exc:
        raise ProtocolError(f"malformed CKKS context: {exc}") from exc
    context = seal_context(parameters)
    if parameters.scheme() != seal.SCHEME_TYPE.CKKS or not context.parameters_set():
        raise ProtocolError("the public context must hold valid 128-bit-secure CKKS parameters")
    if context.first_context_data().chain_index() < 1:
        raise ProtocolError("the CKKS parameters leave no level for the fit's rescale")
    return CkksPublicContext(context)


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
