"""Generation canaries: seed-fixed planting that never reaches evaluation or the attacker's public rows,
the exposure maths on known cases, clear errors, and a tiny-llama audit where a repeated canary stands
out of the never-planted secrets under the model trained on it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from protocol.errors import UserInputError
from secure_assist.audit.config import AuditConfig
from secure_assist.audit.report import render_markdown
from secure_assist.audit.runner import audit_inputs, run_audit
from secure_assist.canaries import (
    CANARY_INSTRUCTION, SPACE_SIZE, Canaries, SkewNormalTail, exposure_report, plant, sampled_exposure,
)
from secure_assist.cli import main
from secure_assist.config import FinetuneConfig
from tests.generation_data import alpaca_file


def test_drawing_and_planting_are_seed_fixed_and_distinct() -> None:
    first, again, other = Canaries.draw(3, 2, seed=5), Canaries.draw(3, 2, seed=5), Canaries.draw(3, 2, seed=6)
    assert first == again and first.planted != other.planted
    every = first.planted + first.null + first.candidates
    assert len(set(every)) == len(every) and all(len(s) == 6 and s.isdigit() for s in every)
    assert len(first.training_examples()) == 6
    assert Canaries.draw(0, 1, 0).training_examples() == []


def test_canaries_reach_the_training_split_only(tmp_path: Path) -> None:
    data = str(alpaca_file(tmp_path, 60))
    plain = AuditConfig(model="tiny-llama", task="generation", train_file=data, train_samples=20, eval_samples=6)
    planted = AuditConfig(model="tiny-llama", task="generation", train_file=data, train_samples=20, eval_samples=6,
                          canaries=3, canary_repetitions=2)
    base, _, _ = audit_inputs(plain)
    data_with, public, _ = audit_inputs(planted)
    canaries = Canaries.draw(3, 2, planted.seed)
    outputs = {e.output for e in canaries.training_examples()}
    in_train = [e for e in data_with.train if e.instruction == CANARY_INSTRUCTION]
    assert sorted(e.output for e in in_train) == sorted(e.output for e in canaries.training_examples())
    # The same real samples in the same order, the canaries added; evaluation and public rows unchanged, secret-free.
    assert [e for e in data_with.train if e.instruction != CANARY_INSTRUCTION] == base.train
    assert data_with.evaluate == base.evaluate
    secrets = canaries.planted + canaries.null
    for example in data_with.evaluate + list(public.examples):
        assert example.output not in outputs and not any(s in example.output for s in secrets)
    assert audit_inputs(planted)[0].train == data_with.train  # deterministic
    assert plant(base.train, canaries, seed=1) != data_with.train  # the places come from the seed


def test_sampled_exposure_on_known_ranks() -> None:
    candidates = np.arange(7.0)  # m = 7: the estimate's resolution is log2(8) = 3 bits
    assert sampled_exposure(10.0, candidates) == pytest.approx(3.0)  # more likely than every candidate
    assert sampled_exposure(3.5, candidates) == pytest.approx(1.0)  # 3 of 7 at least as likely: (3+1)/8
    assert sampled_exposure(-1.0, candidates) == pytest.approx(0.0)  # the least likely of all


def test_extrapolated_exposure_follows_the_fitted_tail() -> None:
    candidates = np.random.default_rng(0).normal(-40.0, 2.0, size=4000)
    tail = SkewNormalTail.fit(candidates)
    assert tail.exposure(-40.0) == pytest.approx(1.0, abs=0.15)  # the median: half the format is more likely
    assert tail.exposure(-40.0 + 2.0 * 2.326) == pytest.approx(-math.log2(0.01), abs=0.4)  # the top 1%
    assert tail.exposure(0.0) == pytest.approx(math.log2(SPACE_SIZE))  # capped at the whole format


def test_exposure_report_sets_planted_against_null() -> None:
    rng = np.random.default_rng(1)
    candidates = rng.normal(-40.0, 2.0, size=200)
    null = rng.normal(-40.0, 2.0, size=20)
    report = exposure_report(["1", "2"], np.array([-20.0, -25.0]), [str(i) for i in range(20)], null, candidates,
                             [3, 3])
    assert [p["copies_trained"] for p in report["planted"]] == [3, 3]
    assert report["planted_mean_exposure"] == pytest.approx(math.log2(201))
    assert report["planted_mean_exposure"] > report["null_p95_exposure"]
    assert report["planted_above_null_p_exposure"] < 0.05


@pytest.mark.parametrize("argv,message", [
    (["--canaries", "-1"], "canaries must be at least 0"),
    (["--canary-repetitions", "0"], "canary_repetitions at least 1"),
    (["--canaries", "2", "--task", "sst2"], "use them with --task generation"),
])
def test_canary_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    assert main(["audit", "--model", "tiny-llama", "--output", str(tmp_path), "--quiet"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with pytest.raises(UserInputError):
        FinetuneConfig(canaries=1)  # the default task is classification


def test_audit_reports_exposure_and_a_repeated_canary_stands_out(tmp_path: Path) -> None:
    config = AuditConfig(model="tiny-llama", task="generation", train_file=str(alpaca_file(tmp_path, 40)),
                         train_samples=4, eval_samples=2, epochs=20, max_answer_tokens=12, rouge_samples=1,
                         variants=("none",), attacks=("answer_from_residual",), canaries=1, canary_repetitions=46,
                         output=str(tmp_path / "audit"))
    report = run_audit(config, progress=False)
    references = {r["variant"]: r for r in report["references"]}
    rows = {"zero_shot": references["zero_shot"], "device_local": references["device_local"],
            "none": report["variants"][0]}
    for row in rows.values():
        canaries = row["canaries"]
        assert canaries["planted_count"] == 1 and canaries["null_count"] >= 20 and canaries["repetitions"] == 46
        assert len(canaries["planted"]) == 1 and {"exposure", "exposure_extrapolated", "log_likelihood",
                                                  "copies_trained"} <= set(canaries["planted"][0])
    # The side network trains on the uploads (the device keeps 10 of the 50 samples, its floor, for its safeguard):
    # at least 36 of the 46 copies.
    trained = rows["device_local"]["canaries"]["planted"][0]
    assert 36 <= trained["copies_trained"] <= 46
    # Trained on them, the deployed model ranks the secret above the never-planted ones; the backbone does not.
    for name in ("device_local", "none"):
        canaries = rows[name]["canaries"]
        assert canaries["planted"][0]["exposure"] > canaries["null_p95_exposure"]
        assert canaries["planted"][0]["log_likelihood"] > rows["zero_shot"]["canaries"]["planted"][0]["log_likelihood"]
    assert rows["zero_shot"]["canaries"]["planted"][0]["copies_trained"] == 0
    assert "Canaries" in render_markdown(report)
