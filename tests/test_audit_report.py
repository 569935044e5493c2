"""`secure-assist audit` on a tiny model: reports, schema, embedded plots, agreement with
the separate attack command, and the exit code of an inconsistent DP claim."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from secure_assist.audit.config import AuditConfig, fingerprint
from secure_assist.audit.report import REPORT_FILES
from secure_assist.audit.schema import SCHEMA, SCHEMA_VERSION
from secure_assist.audit.auditor import run_attack
from secure_assist.cli import main
from secure_assist.commands.audit import EXIT_INCONSISTENT
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS
from secure_assist.mechanisms import MECHANISMS
from secure_assist.mechanisms.delta import GaussianDelta


def test_reports_are_written_with_the_schema_fields(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    config, report, paths = audited
    assert [p.name for p in paths] == list(REPORT_FILES) and all(p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert saved["schema"] == SCHEMA and saved["schema_version"] == SCHEMA_VERSION
    assert saved["config_fingerprint"] == fingerprint(config) and len(saved["config_fingerprint"]) == 64
    assert saved["seed"] == 0 and saved["package_versions"]["torch"] and saved["consistent"] is True
    assert saved["config"]["variants"] == ["none", "gaussian@1", "he_ckks"]  # as run: ε resolved
    by_name = {v["variant"]: v for v in saved["variants"]}
    he = by_name["he_ckks"]
    assert he["status"] == "ok" and he["dp_check"] is None
    he_rows = {r["attack"]: r for r in he["attacks"]}
    # Δ never reaches the server in the clear: every Δ-based attack is not applicable, the
    # activations-only attacks run, and the server's model copy is the backbone alone.
    assert he_rows["delta_argmax"]["status"] == he_rows["clustering_delta"]["status"] == "not_applicable"
    assert he_rows["public_head_zero_shot"]["status"] == "ok"
    extraction = he_rows["model_extraction"]
    assert extraction["status"] == "ok" and extraction["agreement"] == extraction["backbone_only_agreement"]
    assert "no Δ-based attack applies" in he["verdict"] and "model: server copy agrees" in he["verdict"]
    assert he["cost"]["he_public_context_bytes"] > 0 and he["cost"]["he_ciphertext_bytes_per_sample"] > 0
    assert he["cost"]["he_server_fit_seconds"] > 0 and he["utility"]["safeguard"]["validation_samples"] > 0
    for name in ("none", "gaussian@1"):
        variant = by_name[name]
        assert {"accuracy", "accuracy_ci95", "zero_shot_accuracy", "vs_zero_shot", "vs_device_local"} <= set(
            variant["utility"])
        assert variant["cost"]["bytes_up"] > 0 and variant["cost"]["device_peak_rss_mib"] > 0
        assert variant["activations_only_baseline"]["attack"] in ("public_head_zero_shot", "model_completion_k8")
        rows = {r["attack"]: r for r in variant["attacks"]}
        assert rows["gradient_norm"]["status"] == "not_applicable"
        argmax = rows["delta_argmax"]
        low, high = argmax["value_ci95"]
        assert argmax["metric"] == "balanced_accuracy" and low <= argmax["value"] <= high and variant["verdict"]
        assert {"accuracy", "prior_baseline", "auc", "auc_ci95"} <= set(argmax)  # Δ gives class scores: AUC
        assert "auc" not in rows["clustering_delta"]  # clusters give no scores
        # Every label attack, scored or hard-label, has each class's TPR at low FPR.
        label_rows = [r for r in rows.values() if r["status"] == "ok" and r["kind"] == "labels"]
        assert label_rows and all(set(r["low_fpr"]) == {"0", "1"} for r in label_rows)
        assert "what the server buys over device_local" in variant["verdict"]
    assert by_name["none"]["dp_check"] is None and by_name["gaussian@1"]["dp_check"]["consistent"]
    # Plain PAE: argmax Δ is the label.
    none_rows = {r["attack"]: r for r in by_name["none"]["attacks"]}
    assert none_rows["delta_argmax"]["value"] == 1.0 and none_rows["delta_argmax"]["auc"] == 1.0
    assert by_name["none"]["best_label_leak"]["balanced_accuracy"] == 1.0
    # Reconstruction reads a seed-fixed subsample of the uploads.
    inversion = none_rows["pivot_nearest_embedding"]
    assert inversion["subsampled"] and inversion["n"] == config.attack_samples < inversion["of_uploads"]
    markdown = paths[1].read_text()
    assert "## Leakage: none" in markdown and "## Reference rows" in markdown and "## Conclusions" in markdown
    assert "## CKKS costs" in markdown and "## Skipped variants" not in markdown
    assert "TPR at 1% / 0.1% FPR by class" in markdown and "Gaussian-DP μ (95% low)" in markdown


def test_reference_rows_and_what_the_server_buys(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    config, report, _ = audited
    references = {r["variant"]: r for r in report["references"]}
    assert list(references) == ["zero_shot", "device_local", "local_lora"]
    for row in references.values():
        assert row["reference"] and row["cost"]["bytes_up"] == 0 and row["attacks"] == []
        low, high = row["utility"]["accuracy_ci95"]
        assert low <= row["utility"]["accuracy"] <= high and row["utility"]["n_eval"] == config.eval_samples
    local = references["device_local"]
    assert local["cost"]["device_seconds"] > 0 and local["cost"]["device_train_seconds"] > 0
    lora = references["local_lora"]
    assert lora["cost"]["device_seconds"] > 0 and lora["cost"]["trainable_parameters"] > 0
    assert lora["utility"]["vs_device_local"]["difference"] == pytest.approx(
        lora["utility"]["accuracy"] - local["utility"]["accuracy"])
    zero_shot = references["zero_shot"]["utility"]["accuracy"]
    for variant in report["variants"]:
        assert variant["utility"]["zero_shot_accuracy"] == zero_shot  # the same evaluation samples for every row
        versus = variant["utility"]["vs_device_local"]
        assert versus["difference"] == pytest.approx(variant["utility"]["accuracy"] - local["utility"]["accuracy"])
        assert variant["cost"]["device_seconds_saved"] == pytest.approx(
            local["cost"]["device_seconds"] - variant["cost"]["device_seconds"])
    plain = {v["variant"]: v for v in report["variants"]}["none"]
    # The same side network, trained on the device or by the server from the same samples and seed.
    assert plain["utility"]["accuracy"] == local["utility"]["accuracy"]
    assert report["data"]["train"]["rows_used"] == config.train_samples and len(report["data"]["train"]["sha256"]) == 64
    assert "device_local" in report["conclusions"][0] and "local_lora" in report["conclusions"][1]


def test_html_is_self_contained_with_decodable_plots(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    page = audited[2][2].read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(images[0])), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and np.ptp(pixels) > 0.5  # not a blank image
    assert "http://" not in page and "https://" not in page


def test_report_numbers_equal_the_attack_command(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    _, report, _ = audited
    for variant in (v for v in report["variants"] if v["status"] == "ok"):
        rows = {r["attack"]: r for r in variant["attacks"]}
        for name in ("delta_argmax", "clustering_delta", "public_head_zero_shot"):
            if rows[name]["status"] == "not_applicable":  # Δ-based attacks on the CKKS view
                continue
            alone = run_attack(name, variant["workdir"], seed=0, progress=False)
            assert alone["accuracy"] == rows[name]["accuracy"]
            assert list(alone["ci95"]) == rows[name]["ci95"]
            assert list(alone["balanced_accuracy_ci95"]) == rows[name]["balanced_accuracy_ci95"]


class UnderNoisedGaussian(GaussianDelta):
    """A broken mechanism: it claims the Gaussian's ε but adds 1/50 of the noise."""

    name = "gaussian_undernoised"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.noise_multiplier /= 50


def test_exit_code_when_the_empirical_epsilon_exceeds_the_claim(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A new mechanism is its class and its entry in the light list the variants are checked against.
    monkeypatch.setitem(MECHANISMS, UnderNoisedGaussian.name, UnderNoisedGaussian)
    monkeypatch.setitem(MECHANISM_PARAMETERS, UnderNoisedGaussian.name, UnderNoisedGaussian.Parameters)
    code = main(["audit", "--model", "tiny-llama", "--train-samples", "20", "--eval-samples", "8", "--epochs", "1",
                 "--variants", UnderNoisedGaussian.name, "--attacks", "delta_argmax", "--dp-releases", "400",
                 "--output", str(tmp_path), "--quiet"])
    assert code == EXIT_INCONSISTENT
    report = json.loads((tmp_path / "report.json").read_text())
    check = report["variants"][0]["dp_check"]
    assert report["consistent"] is False and check["empirical_epsilon_lower_bound"] > check["claimed_epsilon"]
    assert "inconsistent" in (tmp_path / "report.md").read_text()


def test_unknown_variant_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--variants", "nope", "--output", str(tmp_path)]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert main(["audit", "--variants", "rotation_mask@2", "--output", str(tmp_path)]) == 2
    assert "takes no ε" in capsys.readouterr().err
