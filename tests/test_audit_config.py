"""The audit's configuration is the fine-tuning run's (generated, not retyped), its variants parse, and one backbone
pass serves every row of an audit."""

from __future__ import annotations

import typing
from pathlib import Path
from dataclasses import fields

import pytest

from protocol.errors import UserInputError
from secure_assist.audit.config import (
    PER_ROW_FIELDS, AuditConfig, Variant, audit_variants, device_local_config, parse_variant, variant_finetune_config,
)
from secure_assist.cli import build_parser
from secure_assist.config import FinetuneConfig


def test_every_finetune_field_is_an_audit_field_with_its_type_and_help() -> None:
    audit, run = typing.get_type_hints(AuditConfig), typing.get_type_hints(FinetuneConfig)
    audit_fields = {f.name: f for f in fields(AuditConfig)}
    for item in fields(FinetuneConfig):
        if item.name in PER_ROW_FIELDS:
            assert item.name not in audit_fields
            continue
        assert audit[item.name] == run[item.name] and audit_fields[item.name].metadata["help"]
        if item.name != "epsilon":  # the audit's DP variants default to ε = 1
            assert audit_fields[item.name].default == item.default and audit_fields[item.name].metadata == item.metadata
    flags = build_parser()._subparsers._group_actions[0].choices["audit"]._option_string_actions
    for name in ("--train-file", "--eval-file", "--template", "--label-words", "--labels", "--text-column",
                 "--label-column", "--layers", "--rank", "--adapter-lr-scale", "--no-cosine-decay", "--config",
                 "--public-file", "--with-lora", "--safeguard-fraction", "--he-features"):
        assert name in flags, name


def test_variants_and_their_runs() -> None:
    assert parse_variant("label_rr@4", 1.0) == Variant("label_rr", 4.0)
    assert parse_variant("gaussian", 1.0).label == "gaussian@1" and parse_variant("none", 1.0).label == "none"
    for bad in ("label_rr@0", "label_rr@x", "rotation_mask@2", "nope"):
        with pytest.raises(UserInputError):
            parse_variant(bad, 1.0)
    with pytest.raises(UserInputError, match="listed twice"):
        AuditConfig(variants=("gaussian", "gaussian@1"))
    with pytest.raises(UserInputError, match="adapter_lr_scale"):  # every row's run settings are checked up front
        AuditConfig(adapter_lr_scale=-1.0)
    config = AuditConfig(train_samples=300, seed=3, rank=8, output="out")
    run = variant_finetune_config(config, audit_variants(config)[3])
    assert run.mechanism == ("label_rr",) and run.epsilon == 4.0 and run.reuse_forwards and run.mechanism_seed == 3
    # Absolute: a Ray worker may not share the driver's working directory.
    assert (run.train_samples, run.rank, run.workdir) == (300, 8, str(Path("out").resolve() / "rows" / "label_rr@4"))
    local = device_local_config(config)
    assert local.mode == "device_local" and local.mechanism == ("none",) and local.train_samples == 300


def test_default_variants_follow_the_task_kind(tmp_path: Path) -> None:
    """Without --variants an audit runs its task kind's protections: a generation audit would otherwise list Δ
    mechanisms that its mode refuses, every one of them skipped."""
    assert [v.label for v in audit_variants(AuditConfig())] == ["none", "gaussian@1", "label_rr@1", "label_rr@4",
                                                                "he_ckks"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi."}\n' * 20)
    generation = AuditConfig(task="generation", train_file=str(rows), model="tiny-llama")
    assert [v.label for v in audit_variants(generation)] == ["none", "gaussian_r@1", "gaussian_r@8"]
    assert [v.label for v in audit_variants(AuditConfig(variants=("label_rr@2",)))] == ["label_rr@2"]


def test_one_backbone_pass_serves_every_row(audited: tuple) -> None:
    _, report, _ = audited
    local = next(r for r in report["references"] if r["variant"] == "device_local")
    n_train, n_eval = report["data"]["train"]["rows_used"], report["data"]["eval"]["rows_used"]
    # The first row computes the training and evaluation sets' passes; every other row reads them, whatever subset
    # it uploads (every row holds out a validation split of the same training set for its safeguard).
    assert local["cost"]["device_forwards"] + local["cost"]["device_forwards_reused"] == n_train + n_eval
    for variant in report["variants"]:
        assert variant["cost"]["device_forwards"] == 0, variant["variant"]
        assert variant["cost"]["device_forwards_reused"] == n_train + n_eval, variant["variant"]
