"""The audit fails closed: a view whose mode declares a field that an attack then cannot find
is an error (not "not applicable"), attacks declare what they read, and a DP claim is
checked on the field it names (an under-noised activation mechanism is flagged)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import attacks.view_data
from attacks.base import MEMBERSHIP, MissingViewField, PublicKnowledge
from attacks.registry import all_attacks
from protocol.server.transcript import VIEW_FIELDS
from secure_assist.audit.config import AuditConfig
from secure_assist.audit.runner import run_audit
from secure_assist.audit.auditor import ViewContractError, run_attack
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_task
from secure_assist.finetune import run_finetune
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS
from secure_assist.mechanisms import MECHANISMS
from secure_assist.mechanisms.activations import ActivationNoise

RUN = FinetuneConfig(model="tiny-llama", train_samples=24, eval_samples=8, epochs=1, rank=4, he_features=4,
                     mechanism_seed=0)


def test_every_attack_declares_the_view_fields_it_reads() -> None:
    for name, attack in all_attacks().items():
        if attack.KIND == MEMBERSHIP:
            continue  # it reads a deployed model, not the server's view
        assert attack.NEEDS or attack.NEEDS_ONE_OF, name
        assert (attack.NEEDS | attack.NEEDS_ONE_OF) <= set(VIEW_FIELDS), name


def test_a_field_the_mode_declares_but_the_reader_misses_fails_the_audit(tiny_llama, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    summary = run_finetune(replace(RUN, workdir=str(tmp_path / "pae")), progress=False)
    public = PublicKnowledge(backbone_name="tiny-llama", task=resolve_task(RUN))
    assert run_attack("delta_argmax", tmp_path / "pae", public=public)["accuracy"] == 1.0
    # As if a message field were renamed: the reader no longer finds Δ in the uploads.
    monkeypatch.setattr(attacks.view_data, "_plain_delta", lambda message: None)
    with pytest.raises(ViewContractError, match="delta"):
        run_attack("delta_argmax", tmp_path / "pae", public=public)
    assert summary.mode == "side_network"


def test_a_field_the_mode_does_not_declare_is_not_applicable_without_running(tiny_llama, tmp_path: Path) -> None:
    run_finetune(replace(RUN, mechanism=("he_ckks",), workdir=str(tmp_path / "he")), progress=False)
    public = PublicKnowledge(backbone_name="tiny-llama", task=resolve_task(RUN))
    with pytest.raises(MissingViewField, match="not in a ckks_ridge view"):
        run_attack("delta_argmax", tmp_path / "he", public=public)


class UnderNoisedActivations(ActivationNoise):
    """Claims the ε of its noise multiplier but adds a hundredth of the noise."""

    name = "under_noised_activations"

    def noise_scale(self) -> float:
        return super().noise_scale() / 100


@pytest.mark.parametrize("variant, consistent", [("activation_noise", True), ("under_noised_activations", False)])
def test_activation_dp_claims_are_checked_on_the_activations(tiny_llama, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, variant: str,
                                                             consistent: bool) -> None:
    # A new mechanism is its class and its entry in the light list the variants are checked against.
    monkeypatch.setitem(MECHANISMS, UnderNoisedActivations.name, UnderNoisedActivations)
    monkeypatch.setitem(MECHANISM_PARAMETERS, UnderNoisedActivations.name, UnderNoisedActivations.Parameters)
    # σ = 10 clip norms claims ε ≈ 1 on tiny-llama's two layers; the honest mechanism's releases of
    # two inputs are then indistinguishable, the under-noised one's are not.
    config = AuditConfig(model="tiny-llama", train_samples=24, eval_samples=8, epochs=1, variants=(variant,),
                         attacks=("public_head_zero_shot",), dp_releases=1000, activation_clip=0.5,
                         activation_noise_multiplier=10.0, output=str(tmp_path / "audit"))
    report = run_audit(config, progress=False)
    check = report["variants"][0]["dp_check"]
    assert check["target"] == "activations" and check["mechanism"] == variant
    assert check["consistent"] is consistent and report["consistent"] is consistent
    assert np.isfinite(check["empirical_epsilon_lower_bound"])
