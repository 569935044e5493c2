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
from secure_assist.audit.runner import SCHEMA, SCHEMA_VERSION
from secure_assist.auditor import run_attack
from secure_assist.cli import main
from secure_assist.commands.audit import EXIT_INCONSISTENT
from secure_assist.mechanisms import MECHANISMS
from secure_assist.mechanisms.delta import GaussianDelta


def test_reports_are_written_with_the_schema_fields(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    config, report, paths = audited
    assert [p.name for p in paths] == list(REPORT_FILES) and all(p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert saved["schema"] == SCHEMA and saved["schema_version"] == SCHEMA_VERSION
    assert saved["config_fingerprint"] == fingerprint(config) and len(saved["config_fingerprint"]) == 64
    assert saved["seed"] == 0 and saved["package_versions"]["torch"] and saved["consistent"] is True
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
    for name in ("none", "gaussian"):
        variant = by_name[name]
        assert {"accuracy", "zero_shot_accuracy", "delta_vs_zero_shot"} <= set(variant["utility"])
        assert variant["cost"]["bytes_up"] > 0 and variant["cost"]["device_peak_rss_mib"] > 0
        assert variant["activations_only_baseline"]["attack"] in ("public_head_zero_shot", "model_completion_k8")
        rows = {r["attack"]: r for r in variant["attacks"]}
        assert rows["gradient_norm"]["status"] == "not_applicable"
        low, high = rows["delta_argmax"]["value_ci95"]
        assert low <= rows["delta_argmax"]["value"] <= high and variant["verdict"]
    assert by_name["none"]["dp_check"] is None and by_name["gaussian"]["dp_check"]["consistent"]
    # Plain PAE: argmax Δ is the label.
    assert {r["attack"]: r for r in by_name["none"]["attacks"]}["delta_argmax"]["value"] == 1.0
    markdown = paths[1].read_text()
    assert "## Leakage: none" in markdown and "activations-only baseline" in markdown
    assert "## CKKS costs" in markdown and "## Skipped variants" not in markdown


def test_html_is_self_contained_with_decodable_plots(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    page = audited[2][2].read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(images[1])), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and np.ptp(pixels) > 0.5  # not a blank image
    assert "http://" not in page and "https://" not in page


def test_report_numbers_equal_the_attack_command(audited: tuple[AuditConfig, dict, list[Path]]) -> None:
    _, report, _ = audited
    for variant in (v for v in report["variants"] if v["status"] == "ok"):
        rows = {r["attack"]: r for r in variant["attacks"]}
        for name in ("delta_argmax", "clustering_delta", "model_completion_k8"):
            if rows[name]["status"] == "not_applicable":  # Δ-based attacks on the CKKS view
                continue
            alone = run_attack(name, variant["workdir"], seed=0, progress=False)
            assert alone["accuracy"] == rows[name]["accuracy"]
            assert list(alone["ci95"]) == rows[name]["ci95"]


class UnderNoisedGaussian(GaussianDelta):
    """A broken mechanism: it claims the Gaussian's ε but adds 1/50 of the noise."""

    name = "gaussian_undernoised"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.noise_multiplier /= 50


def test_exit_code_when_the_empirical_epsilon_exceeds_the_claim(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MECHANISMS, UnderNoisedGaussian.name, UnderNoisedGaussian)
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
