"""`he_ckks` as a first-class run (tiny-llama): finetune end to end composed with activation
noise, the ridge-head model file and `predict`, a server view without secrets, and the
attacks on that view (Δ attacks not applicable, extraction at backbone level)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.base import MissingViewField
from protocol.wire.codec import decode, encode
from protocol.modes.ckks_ridge.messages import EncryptedUpload, HeFitRequest
from protocol.model.model_io import load_finetuned
from protocol.model.input_maps import ClippedInput
from protocol.modes.ckks_ridge.head import RidgeHead
from protocol.server.transcript import ServerView
from secure_assist.audit.auditor import run_attack
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.training.workdir import SERVER_DIR
from protocol.modes.ckks_ridge.context import load_public_context

ACTIVATION_CLIP = 2.0


@pytest.fixture(scope="module")
def he_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One he_ckks + activation_noise run (its workdir is the summary's server_view parent)."""
    config = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=16,
                            mechanism=("he_ckks", "activation_noise"), activation_clip=ACTIVATION_CLIP,
                            activation_noise_multiplier=1e-3, mechanism_seed=0, reuse_forwards=True,
                            workdir=str(tmp_path_factory.mktemp("he") / "run"))
    return run_finetune(config, progress=False).to_json()


def test_summary_has_the_plain_keys_and_the_he_costs(he_run: dict, tmp_path: Path) -> None:
    plain = run_finetune(FinetuneConfig(model="tiny-llama", train_samples=10, eval_samples=4, epochs=1,
                                        mechanism=("int8_activations",), workdir=str(tmp_path / "plain")),
                         progress=False).to_json()
    assert set(plain) <= set(he_run)
    # activation_noise composed: the deployed side output is the ridge head behind the device's clip.
    assert he_run["head"] == ClippedInput.KIND and [m["name"] for m in he_run["mechanisms"]] == ["activation_noise",
                                                                                            "he_ckks"]
    assert he_run["n_train"] == 30 and he_run["n_eval"] == 16 and 0 <= he_run["accuracy"] <= 1
    safeguard = he_run["safeguard"]
    assert safeguard["validation_samples"] == 10  # 20% of 40 is 8, below the floor of 10
    assert safeguard["validation_accuracy_chosen"] >= safeguard["validation_accuracy_backbone"]
    for key in ("he_device_encrypt_ms_per_sample", "he_ciphertext_bytes_per_sample", "he_public_context_bytes",
                "he_server_fit_seconds", "he_device_decrypt_seconds", "he_fit_reply_ciphertexts"):
        assert he_run[key] > 0, key


def test_server_view_holds_a_public_context_and_no_plaintext_delta(he_run: dict) -> None:
    view = ServerView(he_run["server_view"])
    (request,) = view.received(HeFitRequest)
    load_public_context(request.public_context.tobytes())  # refuses anything beyond encryption parameters
    assert len(request.public_context) < 128  # parameters only: no key of any kind
    uploads = view.received(EncryptedUpload)
    assert sum(len(u.sample_ids) for u in uploads) == he_run["n_train"]
    # activation_noise ran before encryption: every uploaded layer vector was clipped, then barely noised.
    norms = np.linalg.norm(np.concatenate([u.activations for u in uploads]).astype(np.float32), axis=-1)
    assert norms.max() < ACTIVATION_CLIP * 1.05
    assert not any(hasattr(r.message, "delta") for r in view.messages())
    assert not (Path(he_run["server_view"]) / "side_network.safetensors").exists()


def test_model_file_holds_the_ridge_head_and_predict_works(he_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    model = load_finetuned(he_run["model_file"])
    assert model.head_kind == ClippedInput.KIND and isinstance(model.side_network.inner, RidgeHead)
    if he_run["safeguard"]["action"] == "dropped":
        assert not model.side_network.inner.weights.any()
    assert main(["predict", he_run["model_file"], "--text", "a great movie", "--text", "dull", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] and all(r["label"] in model.task.labels for r in rows)
    assert all(len(r["scores"]) == len(r["backbone_probabilities"]) == model.task.n_classes for r in rows)


def test_model_file_integrity_and_files_written_before_the_ridge_head(he_run: dict, tmp_path: Path) -> None:
    state, metadata = decode(Path(he_run["model_file"]).read_bytes())
    weights = next(name for name in state if name.endswith("ridge.weights"))  # prefixed by the clip wrapper
    tampered = {**state, weights: state[weights] + 1.0}
    (tmp_path / "bad.safetensors").write_bytes(encode(tampered, metadata))
    with pytest.raises(Exception, match="integrity"):
        load_finetuned(tmp_path / "bad.safetensors")
    # A side-network file without the head_kind key (the earlier format) still loads as φ.
    from protocol.model.model_io import FineTunedModel, save_finetuned
    from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape

    network = AdditiveSideNetwork(SideNetworkShape(n_layers=2, hidden_size=8, rank=2, n_classes=2))
    model = load_finetuned(he_run["model_file"])
    save_finetuned(tmp_path / "phi.safetensors", FineTunedModel(model.backbone, model.task, model.layers,
                                                                  model.payload_dtype, network))
    state, metadata = decode((tmp_path / "phi.safetensors").read_bytes())
    del metadata["head_kind"]
    (tmp_path / "old.safetensors").write_bytes(encode(state, metadata))
    old = load_finetuned(tmp_path / "old.safetensors")
    x = torch.randn(3, 2, 8)
    torch.testing.assert_close(old.side_network(x), network(x))


def test_attacks_on_the_he_view(he_run: dict) -> None:
    workdir = Path(he_run["server_view"]).parent
    for name in ("delta_argmax", "clustering_delta", "public_head", "side_model"):
        with pytest.raises(MissingViewField):
            run_attack(name, workdir, progress=False)
    zero_shot = run_attack("public_head_zero_shot", workdir, progress=False)
    assert 0 <= zero_shot["ci95"][0] <= zero_shot["accuracy"] <= zero_shot["ci95"][1] <= 1
    extraction = run_attack("model_extraction", workdir, progress=False)
    assert extraction["agreement"] == extraction["backbone_only_agreement"]
    assert "backbone alone" in extraction["copy"]


def test_he_ckks_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "cli"
    code = main(["finetune", "--model", "tiny-llama", "--train-samples", "24", "--eval-samples", "8",
                 "--mechanism", "he_ckks,int8_activations", "--workdir", str(workdir), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["head"] == "ridge_head" and (workdir / SERVER_DIR / "transcript.log").is_file()
