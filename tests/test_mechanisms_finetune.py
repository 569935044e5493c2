"""Mechanisms chosen by name from the CLI/config, applied in a real (tiny-model) run."""

from __future__ import annotations


import pytest

from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from secure_assist.finetune import run_finetune
from secure_assist.mechanisms import PrivacyWarning


def test_protected_run_reports_mechanisms_and_safeguard(tmp_path) -> None:
    config = FinetuneConfig(model="tiny-llama", train_samples=40, eval_samples=8, epochs=2,
                            mechanism=("label_rr", "int8_activations"), epsilon=2.0, mechanism_seed=0,
                            workdir=str(tmp_path / "run"))
    summary = run_finetune(config, progress=False)
    assert [m["name"] for m in summary["mechanisms"]] == ["label_rr", "int8_activations"]
    assert summary["n_train"] == 32 and summary["safeguard"]["validation_samples"] == 8
    assert summary["safeguard"]["validation_accuracy_chosen"] >= summary["safeguard"]["validation_accuracy_backbone"]


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
