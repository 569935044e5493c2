"""CKKS mode: round-trip precision, public context only on the server, refusal of a
private context, the encrypted ridge fit equals the plaintext one, bounded inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from protocol.channel import InProcessChannel
from protocol.errors import ProtocolError, UserInputError
from protocol.messages import MESSAGE_TYPES, decode_message, encode_message
from secure_assist.mechanisms import MechanismChain
from secure_assist.mechanisms.ckks import CkksKeyHolder, CkksParameters, load_public_context
from protocol.he_messages import EncryptedUpload, HeFitReply, HeFitRequest
from secure_assist.mechanisms.he_server import HeHeadServer
from secure_assist.mechanisms.ridge import ridge_operator
from test_mechanisms_dp import make_batch

SMALL = CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 25, 40), scale_bits=25)
FIT = {"he_features": 4, "he_ridge": 10.0, "ckks_poly_modulus_degree": 8192}


def test_message_types_registered() -> None:
    for kind in (EncryptedUpload, HeFitRequest, HeFitReply):
        assert MESSAGE_TYPES[kind.TYPE] is kind


def test_ckks_round_trip_precision() -> None:
    keys = CkksKeyHolder(SMALL)
    values = np.random.default_rng(0).uniform(-1, 1, SMALL.slot_count)
    np.testing.assert_allclose(keys.decrypt(keys.encrypt(values))[:len(values)], values, atol=1e-3)


def test_vector_longer_than_slot_count_is_refused() -> None:
    with pytest.raises(UserInputError, match="slot count"):
        CkksKeyHolder(SMALL).encrypt(np.zeros(SMALL.slot_count + 1))


@pytest.mark.parametrize("degree, bits", [(4096, (60, 40, 40)), (8192, (60, 60, 60, 60)), (3000, (40, 20, 40))])
def test_parameters_below_128_bit_security_are_refused(degree: int, bits: tuple[int, ...]) -> None:
    with pytest.raises(UserInputError):
        CkksParameters(poly_modulus_degree=degree, coeff_mod_bit_sizes=bits, scale_bits=20)


def test_server_refuses_a_private_context() -> None:
    keys = CkksKeyHolder(SMALL)
    private = keys._context.serialize(save_secret_key=True)  # what a careless device could send
    with pytest.raises(ProtocolError, match="private"):
        load_public_context(private)
    public = load_public_context(keys.public_context())
    assert public.is_public() and not public.has_secret_key()
    # The fit uses no rotation and no ciphertext product: no key of any kind is sent.
    assert not public.has_galois_keys() and not public.has_relin_keys() and not public.has_public_key()
    assert len(keys.public_context()) < 1024


def test_encrypted_fit_matches_plaintext_and_server_holds_no_secret(tmp_path) -> None:
    chain = MechanismChain(["he_ckks"], FIT, seed=0)
    he = chain.stage("encrypt")
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    upload, labels, logits = make_batch(0, 48)
    sent = chain.transform(upload, labels, logits) + chain.flush()
    assert [m.TYPE for m in sent] == ["encrypted_upload"]
    assert not hasattr(sent[0], "delta")
    for message in sent:
        channel.request(message)
    head = he.fit_head(channel)
    assert isinstance(server.context, ts.Context)
    assert not server.context.is_private() and not server.context.has_secret_key()
    with pytest.raises(ValueError):
        server.context.secret_key()
    expected = ridge_operator(head.feature_map.apply(upload.activations), FIT["he_ridge"]) @ upload.delta
    np.testing.assert_allclose(head.weights, expected, atol=1e-4)
    server.close()


def test_fit_over_several_ciphertext_blocks_matches_plaintext(tmp_path) -> None:
    chain = MechanismChain(["he_ckks"], FIT, seed=0)
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    uploads = [make_batch(seed, 2500) for seed in (1, 2)]  # 5,000 samples: blocks of 4,096 + 904 slots
    sent = [m for upload, labels, logits in uploads for m in chain.transform(upload, labels, logits)] + chain.flush()
    assert [len(m.sample_ids) for m in sent] == [4096, 904]
    for message in sent:
        channel.request(message)
    head = chain.stage("encrypt").fit_head(channel)
    activations = np.concatenate([u.activations for u, _, _ in uploads])
    delta = np.concatenate([u.delta for u, _, _ in uploads])
    expected = ridge_operator(head.feature_map.apply(activations), FIT["he_ridge"]) @ delta
    np.testing.assert_allclose(head.weights, expected, atol=1e-4)
    server.close()


def test_private_context_in_fit_request_is_an_error_reply(tmp_path) -> None:
    chain = MechanismChain(["he_ckks"], FIT, seed=0)
    he = chain.stage("encrypt")
    server = HeHeadServer(tmp_path)
    channel = InProcessChannel(server)
    upload, labels, logits = make_batch(1, 16)
    for message in chain.transform(upload, labels, logits) + chain.flush():
        channel.request(message)
    private = np.frombuffer(he.keys._context.serialize(save_secret_key=True), dtype=np.uint8).copy()
    with pytest.raises(ProtocolError, match="private"):
        channel.request(HeFitRequest(public_context=private, n_features=2, ridge=1.0))
    assert server.context is None
    server.close()


def test_encrypted_upload_sizes_are_validated() -> None:
    upload, _, _ = make_batch(2, 4)
    good = EncryptedUpload(sample_ids=upload.sample_ids, activations=upload.activations,
                           ciphertexts=np.zeros(10, np.uint8), ciphertext_sizes=np.array([5, 5]), layers=(1, 2, 3))
    assert isinstance(decode_message(encode_message(good)), EncryptedUpload)
    bad = EncryptedUpload(sample_ids=upload.sample_ids, activations=upload.activations,
                          ciphertexts=np.zeros(10, np.uint8), ciphertext_sizes=np.array([5, 50]), layers=(1, 2, 3))
    with pytest.raises(ProtocolError):
        decode_message(encode_message(bad))
