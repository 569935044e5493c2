"""The many-device audit (`audit --devices N`, N > 1) on tiny-llama: its rows, its per-device statistics
recomputed directly from each device's model file and share, its page, resumption, and bad flags."""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from protocol.model.model_io import load_finetuned
from protocol.server.transcript import SIDE_NETWORK_FILE
from secure_assist.audit.config import AuditConfig
from secure_assist.audit.device_report import conclusions
from secure_assist.audit.many_devices import ROW_MEANING, row_store
from secure_assist.audit.point import PointData, attack_rows
from secure_assist.audit.public_knowledge import public_data
from secure_assist.audit.report import write_reports
from secure_assist.audit.runner import run_audit
from secure_assist.cli import build_parser, main
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data
from secure_assist.devices.partition import Partition
from secure_assist.metrics import bootstrap_interval
from secure_assist.predict import predict_texts
from secure_assist.training.workdir import MODEL_FILE, RECEIVED_MODEL_FILE

DEVICES = 3
LABEL_ATTACKS = ("delta_argmax", "public_head_zero_shot")
ATTACKS = LABEL_ATTACKS + ("lira_offline",)


@pytest.fixture(scope="module")
def device_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(config, report, written paths) of one 3-device Dirichlet(0.5) tiny-llama audit: the reference rows and
    plain pooled PAE."""
    config = AuditConfig(model="tiny-llama", train_samples=48, eval_samples=16, epochs=2, devices=DEVICES,
                         partition="dirichlet:0.5", attacks=ATTACKS, variants=("none",), fedavg=(),
                         poisoning=True,
                         output=str(tmp_path_factory.mktemp("devices")))
    report = run_audit(config, progress=False)
    return config, report, write_reports(report, config.output)


def _rows(report: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in report["rows"]}


def test_rows_are_the_references_and_the_pooled_variants(device_audit: tuple) -> None:
    _, report, _ = device_audit
    rows = _rows(report)
    # FedAvg rows start a Flower simulation (Ray: about a minute each on two cores): benchmarks/many_devices.py
    # runs them; here --fedavg '' leaves them out.
    assert list(rows) == ["zero_shot", "device_local", "pooled:none"]
    assert report["schema"] == "secure-assist/device-audit-report" and report["devices"] == DEVICES
    assert rows["zero_shot"]["status"] == rows["device_local"]["status"] == "ok"
    for name, row in rows.items():
        assert row["status"] in ("ok", "skipped"), name
        if row["status"] == "skipped":  # an engine not on this branch: said so, in one line
            assert "engine" in row["reason"] and "\n" not in row["reason"]
        else:
            assert len(row["per_device"]) == DEVICES
    assert rows["device_local"]["membership"]["status"] == "not_applicable"
    assert [p["variant"] for p in report["poisoning"]] == ["poisoning:pooled"]


def _direct(config: AuditConfig, row: str) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Each device's accuracy on the common split and on its own distribution, from its model file and
    its share of the partition (not from the audit's code), and the shares."""
    whole = resolve_data(FinetuneConfig(model="tiny-llama", train_samples=48, eval_samples=16))
    train, evaluate = whole[1], whole[2]
    eval_labels = np.array([e.label for e in evaluate])
    shares = Partition.parse("dirichlet:0.5").indices(len(train), DEVICES, config.seed,
                                                      np.array([e.label for e in train]))
    accuracy, own = [], []
    for index, share in enumerate(shares):
        model = Path(config.output) / "rows" / row.replace(":", "_") / f"device_{index:03d}" / MODEL_FILE
        predicted = [int(np.argmax(r["scores"])) for r in predict_texts(str(model), [e.text for e in evaluate],
                                                                         progress=False)]
        correct = (np.array(predicted) == eval_labels).astype(float)
        # The device's own distribution: each evaluation sample weighted by its class's share on the device
        # over its share in the evaluation split.
        device_shares = np.bincount([train[i].label for i in share], minlength=2) / len(share)
        eval_shares = np.bincount(eval_labels, minlength=2) / len(eval_labels)
        weights = (device_shares / eval_shares)[eval_labels]
        accuracy.append(correct.mean())
        own.append(float((weights * correct).sum() / weights.sum()))
    return accuracy, own, shares


@pytest.mark.parametrize("name", ["device_local", "pooled:none"])
def test_per_device_utility_equals_a_direct_computation(device_audit: tuple, name: str) -> None:
    config, report, _ = device_audit
    row = _rows(report)[name]
    accuracy, own, shares = _direct(config, name)
    assert [d["accuracy"] for d in row["per_device"]] == pytest.approx(accuracy, abs=1e-9)
    assert [d["own_accuracy"] for d in row["per_device"]] == pytest.approx(own, abs=1e-9)
    for split, values in (("common", accuracy), ("own", own)):
        stats = row["utility"][split]
        assert stats["mean"] == pytest.approx(np.mean(values)) and stats["min"] == pytest.approx(min(values))
        assert stats["p10"] == pytest.approx(np.percentile(values, 10)) and stats["n"] == DEVICES
    samples = [d["n_train"] for d in row["per_device"]]
    assert all(0 < n <= len(s) for n, s in zip(samples, shares)) and sum(len(s) for s in shares) == 48
    assert row["cost"]["device_seconds"]["max"] >= row["cost"]["device_seconds"]["mean"] > 0


def test_gain_over_device_local_is_paired_per_device(device_audit: tuple) -> None:
    config, report, _ = device_audit
    rows = _rows(report)
    local = [d["own_accuracy"] for d in rows["device_local"]["per_device"]]
    for name in ("zero_shot", "pooled:none"):
        gain = rows[name]["gain_vs_device_local"]["own"]
        differences = np.array([d["own_accuracy"] for d in rows[name]["per_device"]]) - np.array(local)
        assert gain["per_device"] == pytest.approx(differences.tolist(), abs=1e-9)
        assert gain["mean"] == pytest.approx(differences.mean(), abs=1e-9)
        assert gain["ci95"] == pytest.approx(bootstrap_interval(lambda idx: float(differences[idx].mean()), DEVICES,
                                                                config.seed), abs=1e-9)
        assert "per device" in gain["pairing"]
    # Zero-shot is the backbone alone: every device scores the same on the common split.
    assert len({d["accuracy"] for d in rows["zero_shot"]["per_device"]}) == 1


def test_costs_and_leaks_per_device(device_audit: tuple) -> None:
    config, report, _ = device_audit
    rows = _rows(report)
    local, pooled = rows["device_local"], rows["pooled:none"]
    assert local["cost"]["bytes_up"]["max"] == 0 and local["server_seconds"] is None and local.get("leak") is None
    assert pooled["cost"]["bytes_up"]["min"] > 0 and pooled["server_seconds"] > 0
    leak = pooled["leak"]
    assert [d["device"] for d in leak["per_device"]] == list(range(DEVICES))
    # Each device's leak is today's attack on that device's own view, run directly here.
    task, train, evaluate = resolve_data(FinetuneConfig(model="tiny-llama", train_samples=48, eval_samples=16))
    data = PointData(task, train, evaluate, public_data(task, None, None, train + evaluate, config.seed))
    best = []
    for device in leak["per_device"]:
        workdir = Path(config.output) / "rows" / "pooled_none" / f"device_{device['device']:03d}"
        direct, _ = attack_rows(list(LABEL_ATTACKS), workdir, data, FinetuneConfig(model="tiny-llama", seed=config.seed),
                                False, held_out=evaluate, server_dir=Path(device["server_view"]))
        best.append(max(r["balanced_accuracy"] for r in direct if r["status"] == "ok"))
        assert device["best"] == pytest.approx(best[-1]) and device["best"] >= device["activations_only"]
    assert leak["best"]["mean"] == pytest.approx(np.mean(best)) and leak["best"]["max"] == pytest.approx(max(best))
    assert set(leak["attacks"]) == set(LABEL_ATTACKS)


def test_cross_device_membership_and_poisoning(device_audit: tuple) -> None:
    config, report, _ = device_audit
    membership = _rows(report)["pooled:none"]["membership"]
    assert membership["status"] == "ok" and membership["attacker"] == 0
    shares = Partition.parse("dirichlet:0.5").indices(48, DEVICES, config.seed, np.array(
        [e.label for e in resolve_data(FinetuneConfig(model="tiny-llama", train_samples=48, eval_samples=16))[1]]))
    assert membership["attacker_samples_left_out"] == len(shares[0])  # the attacker's own share is not a candidate
    for model in ("shared_model", "zero_shot"):
        best = membership[model]["best"]
        assert best["attack"] == "lira_offline" and 0 <= best["tpr_at_0.01_fpr"] <= 1
    poisoning = report["poisoning"][0]
    assert poisoning["status"] == "ok" and poisoning["poisoner"] == 0 and poisoning["honest_devices"] == DEVICES - 1
    clean, poisoned = (np.array(poisoning["per_device_accuracy"][run])[1:] for run in ("clean", "poisoned"))
    assert poisoning["honest_accuracy_change"]["mean"] == pytest.approx(float((poisoned - clean).mean()), abs=1e-9)


def test_the_attacker_attacks_the_shared_model_as_received(device_audit: tuple) -> None:
    """Device 0 keeps the pool's φ as it received it (before its safeguard, which still decides what it deploys),
    and its cross-device membership attacks that copy; no other device keeps one."""
    config, report, _ = device_audit
    row_dir = Path(config.output) / "rows" / "pooled_none"
    assert "before its safeguard" in _rows(report)["pooled:none"]["membership"]["model"]
    received = load_finetuned(row_dir / "device_000" / RECEIVED_MODEL_FILE).side_network
    pooled = load_file(str(row_dir / "pool_server" / "pools" / "pool" / "trained" / SIDE_NETWORK_FILE))
    arrays, _ = received.to_arrays()
    assert arrays.keys() == pooled.keys()
    for name, value in arrays.items():
        np.testing.assert_array_equal(value, pooled[name])
    assert not any((row_dir / f"device_{i:03d}" / RECEIVED_MODEL_FILE).exists() for i in range(1, DEVICES))


def test_page_has_the_per_device_plot_and_tables(device_audit: tuple) -> None:
    _, report, paths = device_audit
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert json.loads(paths[0].read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    markdown, page = paths[1].read_text(), paths[2].read_text()
    assert "| device_local |" in markdown and "## Devices: device_local" in markdown
    assert "## Cross-device membership" in markdown and "## Poisoning: one device flips every label" in markdown
    assert "| poisoning:pooled | ok |" in markdown
    images = re.findall(r'alt=\'([^\']+)\' src="data:image/png;base64,([^"]+)"', page)
    assert [title for title, _ in images] == ["Accuracy per device, each row (box: quartiles over devices; dots: devices)"]
    assert base64.b64decode(images[0][1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_conclusions_say_how_many_devices_dropped_each_rows_model(device_audit: tuple) -> None:
    _, report, _ = device_audit
    sentences = conclusions(report)
    for name, row in _rows(report).items():
        if row["status"] != "ok" or name == "zero_shot":
            continue
        dropped = sum(d["safeguard"] == "dropped" for d in row["per_device"])
        said = [s for s in sentences if s.startswith(f"{name}: ") and "safeguards dropped" in s]
        assert said == ([] if not dropped else [s for s in said if f" {dropped} of {DEVICES} devices'" in s]), name
        assert len(said) == (1 if dropped else 0), name


def test_compare_puts_the_audit_rows_beside_its_points(tmp_path: Path) -> None:
    output = tmp_path / "compare"
    flags = ["--model", "tiny-llama", "--train-samples", "16", "--eval-samples", "8", "--epochs", "1", "--devices", "2",
             "--partition", "iid"]
    code = main(["compare", *flags, "--mechanisms", "none", "--attacks", "delta_argmax", "--fedavg", "",
                 "--output", str(output), "--quiet"])
    assert code == 0
    compare = json.loads((output / "compare.json").read_text())
    assert [p["status"] for p in compare["points"]] == ["ok"]
    rows = compare["devices"]["rows"]
    assert [r["variant"] for r in rows] == ["zero_shot", "device_local", "pooled:none"]
    assert all(r["status"] == "ok" and len(r["per_device"]) == 2 for r in rows)
    assert "2 devices (iid): rows per device" in (output / "compare.md").read_text()
    # The same settings as an audit: the audit finds compare's rows as its own (same producers, same fingerprint)
    # and recomputes none of them (a rerun of an audit reads its finished rows back the same way).
    shutil.rmtree(output / "devices" / "rows")
    config = AuditConfig(model="tiny-llama", train_samples=16, eval_samples=8, epochs=1, devices=2, partition="iid",
                         variants=("none",), attacks=("delta_argmax",), fedavg=(), output=str(output / "devices"))
    assert run_audit(config, progress=False)["rows"] == rows
    assert not (output / "devices" / "rows").exists()
    # Asking for more or fewer rows keeps the finished ones; another run setting does not.
    kept = row_store(replace(config, variants=("gaussian@1",), fedavg=("plain",), poisoning=True)).load("pooled:none")
    assert kept is not None and kept["variant"] == "pooled:none"
    assert row_store(replace(config, epochs=2)).load("pooled:none") is None
    # A row stored by code that gave its figures another meaning is recomputed, not read back.
    store = row_store(config)
    saved = json.loads(store.path("pooled:none").read_text())
    store.path("pooled:none").write_text(json.dumps({**saved, "row_meaning": ROW_MEANING - 1}))
    assert store.load("pooled:none") is None


@pytest.mark.parametrize("flags, message", [
    (["--devices", "0"], "devices at least 1"),
    (["--partition", "foo"], "--partition 'foo'"),
    (["--devices", "50"], "more than the 20 training samples"),
    (["--devices", "2", "--fedavg", "plain,nope"], "unknown --fedavg row(s) ['nope']"),
    (["--devices", "2", "--executor", "ray"], "--executor ray is not supported with --devices 2"),
])
def test_bad_device_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                                              message: str) -> None:
    code = main(["audit", "--model", "tiny-llama", "--train-samples", "20", "--output", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_device_index_and_flip_labels_are_not_audit_flags() -> None:
    flags = build_parser()._subparsers._group_actions[0].choices["audit"]._option_string_actions
    assert "--devices" in flags and "--partition" in flags
    assert "--device-index" not in flags and "--flip-labels" not in flags
    assert not hasattr(AuditConfig(), "device_index") and not hasattr(AuditConfig(), "flip_labels")
