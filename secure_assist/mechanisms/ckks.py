"""The device's CKKS key material: the secret key lives here and never leaves the device.

Only the public form (encryption parameters, `public_context`) is sent; the server side of
CKKS (`protocol.modes.ckks_ridge.context`) computes with those alone.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import tenseal.sealapi as seal

from protocol.errors import UserInputError
from protocol.modes.ckks_ridge.context import (encryption_level, encryption_parameters, load_ciphertext, seal_context,
                                               to_bytes)
from protocol.modes.ckks_ridge.packing import CkksParameters, embed, unembed


class CkksKeyHolder:
    """The device's CKKS context with the secret key; only its public form leaves.

    Construction only records the parameters: the SEAL context and the secret key are made
    when first needed, so building (and validating) the mechanism generates no key."""

    def __init__(self, parameters: CkksParameters = CkksParameters()) -> None:
        self.parameters = parameters

    @cached_property
    def _parameters(self) -> seal.EncryptionParameters:
        return encryption_parameters(self.parameters)

    @cached_property
    def _keys(self) -> tuple[seal.SEALContext, seal.CKKSEncoder, seal.Encryptor, seal.Decryptor]:
        """Context, encoder, and the secret key's encryptor and decryptor (made on first use)."""
        context = seal_context(self._parameters)
        if not context.parameters_set():
            raise UserInputError(f"invalid CKKS parameters: {context.parameters_error_message()}")
        secret = seal.KeyGenerator(context).secret_key()
        return context, seal.CKKSEncoder(context), seal.Encryptor(context, secret), seal.Decryptor(context, secret)

    def public_context(self) -> bytes:
        """The serialized public context for the server: encryption parameters, no key of any kind."""
        return to_bytes(self._parameters)

    def encrypt(self, values: np.ndarray) -> bytes:
        """One ciphertext whose polynomial has `values` as its low coefficients (the rest zero),
        at the level the fit needs; longer than the ring degree is a user error. SEAL serializes a
        secret-key encryption with c1 replaced by its seed, which halves the upload."""
        values = np.asarray(values, dtype=np.float64).ravel()
        n = self.parameters.coefficient_count
        if len(values) > n:
            raise UserInputError(f"vector of {len(values)} values exceeds the CKKS ring degree {n}")
        context, encoder, encryptor, _ = self._keys
        coefficients = np.zeros(n)
        coefficients[:len(values)] = values
        plain = seal.Plaintext()
        encoder.encode(embed(coefficients).tolist(), encryption_level(context), 2.0**self.parameters.scale_bits, plain)
        return to_bytes(encryptor.encrypt_symmetric(plain))

    def decrypt(self, ciphertext: bytes) -> np.ndarray:
        """The N coefficients, decrypted on the device (the result never goes back to the server)."""
        context, encoder, _, decryptor = self._keys
        plain = seal.Plaintext()
        decryptor.decrypt(load_ciphertext(ciphertext, context), plain)
        return unembed(np.array(encoder.decode_complex(plain)))
