"""Mechanisms chosen by name from the CLI/config, applied in a real (tiny-model) run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.registry import get_attack
from attacks.labels import load_side_network
from protocol.device.forward_device import DeviceRole
from protocol.model.model_io import load_finetuned
from protocol.server.transcript import ServerView
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.finetune import run_finetune
from secure_assist.mechanisms import PrivacyWarning
from secure_assist.training.run import hold_out


def test_the_deployed_side_output_is_the_servers_scaled_by_the_safeguards_choice(tiny_llama, tmp_path) -> None:
    config = FinetuneConfig(model="tiny-llama", train_samples=60, eval_samples=8, epochs=3, rank=4,
                            mechanism=("label_rr", "int8_activations"), epsilon=4.0, mechanism_seed=0,
                            safeguard_fraction=0.5, workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert [m["name"] for m in summary.mechanisms] == ["label_rr", "int8_activations"]
    safeguard = summary.safeguard
    assert summary.n_train == 30 and safeguard["validation_samples"] == 30
    # Recompute the decision from scratch on the device's validation split with the server's φ.
    task, train, _ = resolve_data(config)
    _, validation = hold_out(train, config)
    pivots = DeviceRole(tiny_llama, task, progress=False).forward([e.text for e in validation])
    phi = load_side_network(get_attack("side_model"), ServerView(summary.server_view))
    labels = np.array([e.label for e in validation])
    backbone = torch.softmax(pivots.label_logits, dim=-1)
    with torch.inference_mode():
        server_side = phi(pivots.activations)
        deployed_side = load_finetuned(summary.model_file).side_network.eval()(pivots.activations)
    factor = safeguard["factor"]
    # What is deployed is exactly φ times the chosen factor (nothing else, not applied twice) ...
    torch.testing.assert_close(deployed_side, factor * server_side, atol=1e-5, rtol=1e-4)
    # ... and the reported validation accuracies are those of that choice and of the backbone.
    chosen = ((backbone + factor * server_side).argmax(1).numpy() == labels).mean()
    assert safeguard["validation_accuracy_chosen"] == pytest.approx(chosen)
    assert safeguard["validation_accuracy_backbone"] == pytest.approx((backbone.argmax(1).numpy() == labels).mean())
    assert safeguard["action"] == {0.0: "dropped", 1.0: "kept"}.get(factor, "shrunk")


def test_none_warns(tmp_path) -> None:
    with pytest.warns(PrivacyWarning):
        run_finetune(FinetuneConfig(model="tiny-llama", train_samples=8, eval_samples=4, epochs=1,
                                    workdir=str(tmp_path / "run")), progress=False)


@pytest.mark.parametrize("flags", [["--mechanism", "gaussian", "--epsilon", "-1"],
                                   ["--mechanism", "gaussian", "--epsilon", "1", "--clip", "0"],
                                   ["--mechanism", "bogus"],
                                   ["--mechanism", "he_ckks,none"]])
def test_bad_mechanism_flags_fail_before_anything_is_sent(tmp_path, capsys, flags) -> None:
    workdir = tmp_path / "run"
    code = main(["finetune", "--model", "tiny-llama", "--workdir", str(workdir), "--quiet", *flags])
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not workdir.exists()
