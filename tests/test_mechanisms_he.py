"""CKKS mode: round-trip precision, the coefficient packing (exact in plaintext, within CKKS
error encrypted), a public context that holds no key and the refusal of anything more,
lazy keys, the encrypted ridge fit equals the plaintext one, bounded inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as seal

from protocol.wire.channel import InProcessChannel
from protocol.errors import ProtocolError, UserInputError
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitReply, HeFitRequest
from protocol.wire.messages import MESSAGE_TYPES, decode_message, encode_message
from secure_assist.mechanisms import MechanismChain
from protocol.modes.ckks_ridge.context import CkksPublicContext, load_public_context, to_bytes
from secure_assist.mechanisms.ckks import CkksKeyHolder
from protocol.modes.ckks_ridge.packing import CkksParameters, PackingLayout, embed, unembed
from secure_assist.mechanisms.he_ckks import HeCkksParameters
from protocol.modes.ckks_ridge.server import HeHeadServer
from protocol.modes.ckks_ridge.ridge import ridge_operator
from test_mechanisms_dp import make_batch

SMALL = CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 25, 40), scale_bits=25)
FIT = {"he_features": 4, "he_ridge": 10.0}


def negacyclic_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a·b mod X^N + 1 (coefficient vectors of length N)."""
    full = np.convolve(a, b)
    n = len(a)
    product = full[:n].copy()
    product[:n - 1] -= full[n:]
    return product


def test_message_types_registered() -> None:
    for kind in (EncryptedUpload, HeFitRequest, HeFitReply):
        assert MESSAGE_TYPES[kind.TYPE] is kind


def test_embedding_is_the_inverse_pair_and_a_ring_map() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    np.testing.assert_allclose(unembed(embed(a)), a, atol=1e-12)
    # Slot-wise products are polynomial products: what the server's ciphertext-plaintext product computes.
    np.testing.assert_allclose(unembed(embed(a) * embed(b)), negacyclic_product(a, b), atol=1e-10)


@pytest.mark.parametrize("n_samples, rows, spacing", [(10, 5, 10), (7, 9, 16), (16, 3, 64), (1, 70, 1)])
def test_packing_layout_is_exact_in_plaintext(n_samples: int, rows: int, spacing: int) -> None:
    rng = np.random.default_rng(n_samples)
    operator, delta = rng.normal(size=(rows, n_samples)), rng.normal(size=n_samples)
    layout = PackingLayout(64, spacing, rows)
    coefficients = np.zeros(64)
    coefficients[:n_samples] = delta
    weights = np.concatenate([layout.read(negacyclic_product(coefficients, layout.plaintext(operator, g)), g)
                              for g in range(layout.groups)])
    np.testing.assert_allclose(weights, operator @ delta, atol=1e-12)
    assert layout.groups == -(-rows // (64 // spacing))


def test_ckks_round_trip_precision() -> None:
    keys = CkksKeyHolder(SMALL)
    values = np.random.default_rng(0).uniform(-1, 1, SMALL.coefficient_count)
    np.testing.assert_allclose(keys.decrypt(keys.encrypt(values)), values, atol=1e-5)
    np.testing.assert_allclose(keys.decrypt(keys.encrypt(values[:5]))[:6], [*values[:5], 0.0], atol=1e-5)


def test_vector_longer_than_the_ring_degree_is_refused() -> None:
    with pytest.raises(UserInputError, match="ring degree"):
        CkksKeyHolder(SMALL).encrypt(np.zeros(SMALL.coefficient_count + 1))


@pytest.mark.parametrize("degree, bits, scale", [
    (4096, (60, 40, 40), 40), (8192, (60, 60, 60, 60), 40), (3000, (40, 20, 40), 20),  # security, ring
    (8192, (60, 60), 40), (8192, (60, 40, 61), 40), (8192, (60, 40, 60), 55), (8192, [60, 40, 60], 40)])
def test_bad_parameters_are_refused(degree: int, bits: tuple[int, ...], scale: int) -> None:
    with pytest.raises(UserInputError):
        CkksParameters(poly_modulus_degree=degree, coeff_mod_bit_sizes=bits, scale_bits=scale)


def test_parameters_validate_ckks_without_making_keys() -> None:
    with pytest.raises(UserInputError, match="he_block_samples"):
        HeCkksParameters(he_block_samples=8193)
    with pytest.raises(UserInputError, match="security"):
        HeCkksParameters(ckks_coeff_mod_bit_sizes=(60, 60, 60, 60))
    he = MechanismChain(["he_ckks"], FIT, seed=0).stage("encrypt")
    assert "_keys" not in vars(he.keys)  # constructing the mechanism generated no key
    he.fit_request()  # the public context needs no key either
    assert "_keys" not in vars(he.keys)


def test_public_context_holds_no_key_and_more_is_refused() -> None:
    keys = CkksKeyHolder(SMALL)
    public = keys.public_context()
    assert len(public) < 128  # encryption parameters only
    context = load_public_context(public)
    assert context.poly_modulus_degree == SMALL.poly_modulus_degree
    secret_material = (seal.SecretKey, seal.KeyGenerator, seal.Decryptor, seal.Encryptor, seal.PublicKey,
                       seal.GaloisKeys, seal.RelinKeys)
    assert not any(isinstance(value, secret_material) for value in vars(context).values())
    # What a careless device could send: its secret key, or a TenSEAL context with its keys.
    sealed_context = keys._keys[0]
    careless = [to_bytes(seal.KeyGenerator(sealed_context).secret_key())]
    tenseal_context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 25, 40])
    careless.append(tenseal_context.serialize(save_secret_key=True))
    for blob in careless:
        with pytest.raises(ProtocolError, match="never key material"):
            load_public_context(blob)
    with pytest.raises(ProtocolError, match="malformed"):
        load_public_context(b"\x00" * 64)


def test_encrypted_fit_matches_plaintext_and_server_holds_no_secret(tmp_path) -> None:
    chain = MechanismChain(["he_ckks"], FIT, seed=0)
    he = chain.stage("encrypt")
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    upload, labels, logits = make_batch(0, 48)  # fewer samples than a block: spacing 48
    sent = chain.transform(upload, labels, logits) + chain.flush()
    assert [m.TYPE for m in sent] == ["encrypted_upload"]
    assert not hasattr(sent[0], "delta")
    for message in sent:
        channel.request(message)
    head = he.decrypt_head(channel.request(he.fit_request()))
    assert isinstance(server.context, CkksPublicContext)
    expected = ridge_operator(head.feature_map.apply(upload.activations), FIT["he_ridge"]) @ upload.delta
    np.testing.assert_allclose(head.weights, expected, atol=1e-6)
    server.close()


def test_fit_over_several_blocks_and_feature_groups_matches_plaintext(tmp_path) -> None:
    settings = {"he_features": 24, "he_ridge": 10.0, "he_block_samples": 1024}
    chain = MechanismChain(["he_ckks"], settings, seed=0)
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    uploads = [make_batch(seed, 1250) for seed in (1, 2)]
    sent = [m for upload, labels, logits in uploads for m in chain.transform(upload, labels, logits)] + chain.flush()
    assert [len(m.sample_ids) for m in sent] == [1024, 1024, 452]
    for message in sent:
        channel.request(message)
    request = chain.stage("encrypt").fit_request()
    reply = channel.request(request)
    # 25 head rows (24 features of the 3x8 activations, and the bias), ⌊8192/1024⌋ = 8 per
    # ciphertext: 4 groups per class, the last one holding the bias alone.
    assert len(reply.ciphertext_sizes) == 2 * 4
    head = chain.stage("encrypt").decrypt_head(reply)
    activations = np.concatenate([u.activations for u, _, _ in uploads])
    delta = np.concatenate([u.delta for u, _, _ in uploads])
    expected = ridge_operator(head.feature_map.apply(activations), settings["he_ridge"]) @ delta
    assert head.weights.shape == (25, 2)
    np.testing.assert_allclose(head.weights, expected, atol=1e-6)
    last = int(reply.ciphertext_sizes[-1])
    truncated = HeFitReply(reply.input_mean, reply.input_scale, reply.components, reply.ciphertexts[:-last],
                           reply.ciphertext_sizes[:-1])
    with pytest.raises(ProtocolError, match="expected 2 classes x 4"):
        chain.stage("encrypt").decrypt_head(truncated)
    server.close()


def test_private_context_in_fit_request_is_an_error_reply(tmp_path) -> None:
    chain = MechanismChain(["he_ckks"], FIT, seed=0)
    he = chain.stage("encrypt")
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    upload, labels, logits = make_batch(1, 16)
    for message in chain.transform(upload, labels, logits) + chain.flush():
        channel.request(message)
    secret = np.frombuffer(to_bytes(seal.KeyGenerator(he.keys._keys[0]).secret_key()), dtype=np.uint8).copy()
    with pytest.raises(ProtocolError, match="never key material"):
        channel.request(HeFitRequest(public_context=secret, n_features=2, ridge=1.0))
    assert server.store.context == he.keys.public_context()  # the declared public one, not the secret
    server.close()


def test_server_refuses_a_ciphertext_at_another_level() -> None:
    keys = CkksKeyHolder(CkksParameters(coeff_mod_bit_sizes=(60, 40, 40, 60)))
    _, encoder, encryptor, _ = keys._keys
    plain = seal.Plaintext()
    encoder.encode([0.5], 2.0**40, plain)  # the first level (two rescale primes): not the fit's level
    ciphertext = seal.Ciphertext()
    encryptor.encrypt_symmetric(plain, ciphertext)
    server_context = load_public_context(keys.public_context())
    server_context.load_ciphertext(keys.encrypt(np.ones(3)))
    with pytest.raises(ProtocolError, match="level"):
        server_context.load_ciphertext(to_bytes(ciphertext))
    with pytest.raises(ProtocolError, match="malformed"):
        server_context.load_ciphertext(keys.encrypt(np.ones(3))[:-10])


def test_encrypted_upload_sizes_are_validated() -> None:
    upload, _, _ = make_batch(2, 4)
    good = EncryptedUpload(sample_ids=upload.sample_ids, activations=upload.activations,
                           ciphertexts=np.zeros(10, np.uint8), ciphertext_sizes=np.array([5, 5]),
                           public_context=np.zeros(4, np.uint8), layers=(1, 2, 3))
    assert isinstance(decode_message(encode_message(good)), EncryptedUpload)
    bad = EncryptedUpload(sample_ids=upload.sample_ids, activations=upload.activations,
                          ciphertexts=np.zeros(10, np.uint8), ciphertext_sizes=np.array([5, 50]),
                          public_context=np.zeros(4, np.uint8), layers=(1, 2, 3))
    with pytest.raises(ProtocolError):
        decode_message(encode_message(bad))
