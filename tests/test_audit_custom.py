"""`secure-assist audit` on the user's own data: a 4-class, imbalanced JSON-lines task derived from Alpaca (which
kind of request produced this answer; benchmarks/alpaca_request_types.py), end to end on a tiny model, with the
finetune data flags, --config, the attacker's public data, provenance in the report, and one-line input errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from secure_assist.cli import main

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("alpaca_request_types", ROOT / "benchmarks" / "alpaca_request_types.py")
request_types = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(request_types)

LABELS = "create,explain,edit,classify"
ATTACKS = "delta_argmax,public_head_zero_shot,clustering_delta,model_completion_k8"


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not request_types.SOURCE.is_file():
        pytest.skip(f"{request_types.SOURCE} (the shared Alpaca data) is not present")
    rows = request_types.derive_rows(request_types.SOURCE, max_words=24)[:300]
    assert len({r["request_type"] for r in rows}) == 4
    path = tmp_path_factory.mktemp("custom") / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_flags(path: Path) -> list[str]:
    return ["--model", "tiny-llama", "--task", "custom", "--train-file", str(path), "--template",
            request_types.TEMPLATE, "--label-words", request_types.LABEL_WORDS, "--labels", LABELS,
            "--text-column", "answer", "--label-column", "request_type"]


def test_custom_task_audit_end_to_end(requests_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "audit.json"  # sizes in --config, the task on the command line: flags and file combine
    config.write_text(json.dumps({"train_samples": 60, "eval_samples": 24, "epochs": 2, "dp_releases": 200,
                                  "variants": ["none", "label_rr@2"], "attack_samples": 10}))
    output = tmp_path / "audit"
    assert main(["audit", "--config", str(config), *_task_flags(requests_file), "--attacks", ATTACKS,
                 "--output", str(output), "--quiet"]) == 0
    report = json.loads((output / "report.json").read_text())
    data = report["data"]
    assert data["task"] == "custom" and data["classes"] == 4 and data["labels"] == LABELS.split(",")
    assert data["train"]["sha256"] == hashlib.sha256(requests_file.read_bytes()).hexdigest()
    assert data["train"]["rows_used"] == 60 and data["eval"]["rows_used"] == 24
    assert "held out" in data["eval"]["split"] and "not drawn for training or evaluation" in data["public"]["source"]
    assert 128 <= data["public"]["rows"] <= 300 - 60 - 24  # the file's rows not used (fewer where texts repeat)
    assert [r["variant"] for r in report["references"]] == ["zero_shot", "device_local"]
    variants = {v["variant"]: v for v in report["variants"]}
    assert set(variants) == {"none", "label_rr@2"} and all(v["status"] == "ok" for v in variants.values())
    rows = {r["attack"]: r for r in variants["none"]["attacks"]}
    # The public split of the user's file gives the attacker labeled examples of the task.
    assert rows["model_completion_k8"]["status"] == "ok" and rows["model_completion_k8"]["k"] == 8
    assert rows["delta_argmax"]["balanced_accuracy"] == 1.0 and rows["delta_argmax"]["balanced_chance"] == 0.25
    assert variants["label_rr@2"]["dp_check"]["claimed_epsilon"] == pytest.approx(2.0)
    page = (output / "report.html").read_text()
    assert page.index("Summary") < page.index("Privacy–utility") < page.index("Conclusions")

    # The attacker's knowledge from a file, for a single attack on the same run.
    public = tmp_path / "public.jsonl"
    public.write_text("".join(requests_file.read_text().splitlines(keepends=True)[-40:]))
    assert main(["attack", "model_completion_k8", "--workdir", str(output / "rows" / "none"), "--public-file",
                 str(public), "--json", "--quiet"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["n"] == 48 and 0 <= alone["balanced_accuracy"] <= 1  # plain PAE's safeguard holds out 12 of 60
    assert main(["attack", "model_completion_k8", "--workdir", str(output / "rows" / "none"), "--quiet"]) == 2
    assert "pass --public-file" in capsys.readouterr().err


def test_bad_rows_are_one_line_errors_with_file_and_line(requests_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = requests_file.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:6] + ['{"answer": "fine", "request_type": "summarize"}'] + lines[6:20]))
    argv = ["audit", *_task_flags(broken), "--train-samples", "10", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: {broken}:7:") and "unknown label 'summarize'" in error
    public = tmp_path / "public.jsonl"
    public.write_text('{"answer": "x", "request_type": "create"}\nnot json\n')
    assert main(["audit", *_task_flags(requests_file), "--public-file", str(public), "--output",
                 str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {public}:2: invalid JSON")
