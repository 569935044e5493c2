"""The audit on generation views (tiny-llama, a few Alpaca rows): r gives every answer token away
through the public head, Gaussian DP on r stops it with a consistent ε, and the report renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_assist.audit.config import AuditConfig
from secure_assist.audit.report import write_reports
from secure_assist.audit.runner import run_audit
from tests.generation_data import alpaca_file

ATTACKS = ("answer_from_residual", "answer_inversion", "generation_model_extraction", "delta_argmax")


def test_generation_audit_measures_the_r_leak_and_its_dp_protection(tmp_path: Path) -> None:
    config = AuditConfig(model="tiny-llama", task="generation", train_file=str(alpaca_file(tmp_path, 60)),
                         train_samples=24, eval_samples=6, epochs=2, max_answer_tokens=6, rouge_samples=2,
                         variants=("none", "gaussian_r", "gaussian"), attacks=ATTACKS, dp_releases=300,
                         with_lora=True, output=str(tmp_path / "audit"))
    report = run_audit(config, progress=False)
    plain, dp, delta_only = report["variants"]
    rows = {r["attack"]: r for r in plain["attacks"]}
    # Exact algebra: r_t + W_Uᵀ softmax(W_U h_t) is the answer token's embedding row.
    assert rows["answer_from_residual"]["value"] == 1.0
    assert rows["answer_from_residual"]["chance_baseline"] < 0.5
    assert rows["delta_argmax"]["status"] == "not_applicable"  # a classification attack: no pivot view here
    assert plain["activations_only_baseline"]["attack"] == "answer_inversion"
    assert "ANSWER TOKENS LEAK through r" in plain["verdict"]
    assert "what the server buys over device_local" in plain["verdict"]
    assert "eval_answer_nll" in plain["utility"] and plain["utility"]["metric"] == "eval_answer_nll"
    assert plain["best_answer_token_leak"]["attack"] == "answer_from_residual"
    # The reference rows of a generation audit: the backbone alone, the generation_local run and LoRA SFT.
    references = {r["variant"]: r for r in report["references"]}
    assert list(references) == ["zero_shot", "device_local", "local_lora"]
    lora = references["local_lora"]
    assert lora["utility"]["metric"] == "eval_answer_nll" and lora["cost"]["steps"] > 0
    assert lora["utility"]["eval_answer_nll"] != pytest.approx(references["zero_shot"]["utility"]["eval_answer_nll"])
    assert lora["utility"]["vs_zero_shot"]["difference"] == pytest.approx(
        lora["utility"]["eval_answer_nll"] - references["zero_shot"]["utility"]["eval_answer_nll"])
    local = references["device_local"]["utility"]
    assert plain["utility"]["vs_device_local"]["difference"] == \
        pytest.approx(plain["utility"]["eval_answer_nll"] - local["eval_answer_nll"])
    assert plain["utility"]["zero_shot_answer_nll"] == pytest.approx(references["zero_shot"]["utility"]["eval_answer_nll"])
    dp_rows = {r["attack"]: r for r in dp["attacks"]}
    assert dp_rows["answer_from_residual"]["value_ci95"][1] < 0.5
    assert dp["dp_check"]["target"] == "residual" and dp["dp_check"]["consistent"]
    assert delta_only["status"] == "skipped" and "generation" in delta_only["reason"]
    assert report["consistent"]
    paths = write_reports(report, config.output)
    markdown = paths[1].read_text()
    assert "answer_from_residual" in markdown and "answer NLL per token (95% CI)" in markdown
    assert "## Conclusions" in markdown
