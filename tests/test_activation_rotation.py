"""`activation_rotation`: exact on the device, secret from the server, and what attacks do to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.base import NotApplicable, PublicFeatures, PublicKnowledge
from protocol.device.forward_device import DeviceRole
from protocol.model.model_io import FineTunedModel, load_finetuned, save_finetuned
from protocol.model.input_maps import ClippedInput, RotatedInput, input_rotations, unrotate
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape
from protocol.data.tasks import SST2
from protocol.server.transcript import ServerView
from secure_assist.audit.auditor import audit, load_ground_truth, upload_texts
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.mechanisms import MechanismChain
from secure_assist.audit.public_knowledge import known_samples
from test_mechanisms_dp import C, D, L, make_batch


def test_rotation_is_exact_on_the_device(tmp_path) -> None:
    upload, labels, logits = make_batch(5)
    upload = type(upload)(sample_ids=upload.sample_ids, activations=upload.activations.astype(np.float32),
                          delta=upload.delta, layers=upload.layers)
    chain = MechanismChain(["activation_rotation", "rotation_mask"], seed=3)
    sent = chain.transform(upload, labels, logits)[0]
    rotation = chain.stage("activations").rotations
    assert rotation.shape == (L, D, D)
    np.testing.assert_allclose(np.einsum("lij,lkj->lik", rotation, rotation), np.broadcast_to(np.eye(D), (L, D, D)),
                               atol=1e-6)
    assert not np.allclose(sent.activations, upload.activations, atol=0.1)
    # Round trip: the device's R undoes what it sent, per layer.
    np.testing.assert_allclose(unrotate(sent.activations, rotation), upload.activations, atol=1e-5)
    torch.manual_seed(0)
    network = AdditiveSideNetwork(SideNetworkShape(n_layers=L, hidden_size=D, rank=2, n_classes=C))
    torch.nn.init.normal_(network.head.weight)
    with torch.no_grad():
        trained_view = network(torch.from_numpy(sent.activations)).numpy()  # what the server's φ computes
        deployed = chain.restore(network)
        assert deployed.KIND == RotatedInput.KIND
        plain = torch.from_numpy(upload.activations)
        expected = trained_view @ chain.stage("delta").rotation.T  # rotation_mask undone on the outputs
        np.testing.assert_allclose(deployed(plain).numpy(), expected, atol=1e-5)
        path = tmp_path / "model.safetensors"
        save_finetuned(path, FineTunedModel(backbone="tiny-llama", task=SST2, layers=(1, 2, 3),
                                            payload_dtype="float32", side_network=deployed))
        loaded = load_finetuned(path).side_network
        np.testing.assert_array_equal(loaded(plain).numpy(), deployed(plain).numpy())
    np.testing.assert_array_equal(input_rotations(loaded), rotation)


def test_noise_and_rotation_restore_the_uploads_input_map(tmp_path) -> None:
    """The deployed side output reads the device's states as the uploads were made: clipped
    (activation_noise, without its zero-mean noise), then rotated; the model file keeps both."""
    upload, labels, logits = make_batch(6)
    upload = type(upload)(sample_ids=upload.sample_ids, activations=upload.activations.astype(np.float32) * 10,
                          delta=upload.delta, layers=upload.layers)
    chain = MechanismChain(["activation_noise", "activation_rotation"],
                           {"activation_noise_multiplier": 1e-6, "activation_clip": 5.0}, seed=0)
    sent = chain.transform(upload, labels, logits)[0]
    network = AdditiveSideNetwork(SideNetworkShape(n_layers=L, hidden_size=D, rank=2, n_classes=C))
    torch.nn.init.normal_(network.head.weight)
    with torch.no_grad():
        trained_view = network(torch.from_numpy(sent.activations)).numpy()
        deployed = chain.restore(network)
        assert deployed.KIND == ClippedInput.KIND and deployed.inner.KIND == RotatedInput.KIND
        np.testing.assert_allclose(deployed(torch.from_numpy(upload.activations)).numpy(), trained_view, atol=1e-3)
        path = tmp_path / "model.safetensors"
        save_finetuned(path, FineTunedModel(backbone="tiny-llama", task=SST2, layers=(1, 2, 3),
                                            payload_dtype="float32", side_network=deployed))
        loaded = load_finetuned(path).side_network
        np.testing.assert_array_equal(loaded(torch.from_numpy(upload.activations)).numpy(),
                                      deployed(torch.from_numpy(upload.activations)).numpy())
    assert chain.names == ["activation_noise", "activation_rotation"]
    np.testing.assert_array_equal(input_rotations(loaded), chain.mechanisms[-1].rotations)


def _secret_bytes(rotation: np.ndarray) -> list[bytes]:
    """Every row and column of every R_i, as float16, float32 and float64 bytes."""
    vectors = [v for r in rotation for v in (*r, *r.T)]
    return [np.ascontiguousarray(v, dtype=dtype).tobytes() for v in vectors
            for dtype in (np.float16, np.float32, np.float64)]


@pytest.mark.parametrize("mechanisms", [("activation_rotation",), ("activation_rotation", "he_ckks")])
def test_rotation_never_reaches_the_server(tmp_path, tiny_llama, mechanisms) -> None:
    config = FinetuneConfig(model="tiny-llama", train_samples=24, eval_samples=4, epochs=2, mechanism=mechanisms,
                            mechanism_seed=0, workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    rotation = input_rotations(load_finetuned(summary.model_file).side_network)
    assert rotation is not None and summary.head == RotatedInput.KIND
    server = Path(summary.server_view)
    files = [p for p in server.rglob("*") if p.is_file()]
    assert files
    secrets = _secret_bytes(rotation)
    for path in files:
        data = path.read_bytes()
        assert not any(secret in data for secret in secrets), f"a row of R is in {path.name}"
    # What the server holds are rotated states: R (device-side only) maps them back to the device's own.
    device = DeviceRole(tiny_llama, SST2, progress=False)
    truth = load_ground_truth(tmp_path / "run")
    uploads = [m for m in (r.message for r in ServerView(server).messages()) if hasattr(m, "activations")]
    received = np.concatenate([m.activations for m in uploads]).astype(np.float32)
    ids = [bytes(i).hex() for m in uploads for i in m.sample_ids]
    plain = device.forward([truth[i].text for i in ids]).activations.numpy()
    assert not np.allclose(received, plain, atol=0.05)
    np.testing.assert_allclose(unrotate(received, rotation), plain, atol=0.05)


def test_known_pairs_recover_the_rotation_with_d_pairs(tmp_path, tiny_llama) -> None:
    """tiny-llama is 64 wide: 64 known texts (float32 payload, so nothing is rounded) give R
    exactly; 8 do not (Procrustes is exact on the span of the pairs only)."""
    workdir = tmp_path / "run"
    run_finetune(FinetuneConfig(model="tiny-llama", train_samples=80, eval_samples=4, epochs=1, payload_dtype="float32",
                                mechanism=("activation_rotation",), workdir=str(workdir)), progress=False)
    known = known_samples(upload_texts(load_ground_truth(workdir)))
    device = DeviceRole(tiny_llama, SST2, payload_dtype="float32", progress=False)

    def features(texts: list[str], layers: tuple[int, ...]) -> PublicFeatures:
        batch = device.forward(texts)
        return PublicFeatures(activations=batch.activations.numpy(), label_logits=batch.label_logits.numpy())

    public = PublicKnowledge(backbone_name="tiny-llama", task=SST2, features=features, known_samples=known,
                             mechanisms=("activation_rotation",))
    assert len(known) == 64 == tiny_llama.model.config.hidden_size
    exact = audit("known_pairs_k64", workdir, public=public, progress=False)[1]
    assert exact["layers_recovered"] == exact["layers"] == 2
    assert max(exact["rotation_relative_error"]) < 1e-3 and exact["centred_state_cosine"] > 0.999
    partial = audit("known_pairs_k8", workdir, public=public, progress=False)[1]
    assert partial["layers_recovered"] == 0 and min(partial["rotation_relative_error"]) > 0.5
    # The server that knows the device does not rotate does not try.
    with pytest.raises(NotApplicable):
        audit("known_pairs_k64", workdir, progress=False,
              public=PublicKnowledge(backbone_name="tiny-llama", task=SST2, mechanisms=("none",)))

