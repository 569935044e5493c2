"""Boosting rounds (`--rounds R`, secure_assist.training.rounds) on tiny-llama: round k >= 2 uploads
Δ_k = onehot(y) − (p_b + S_{k−1}(A)) (generation: r_t at z_t + W_U S_{k−1,t}) to a fresh server role without
a backbone pass, its safeguard judges the new side output against the deployed sum, the model file holds the
sum (and `predict` reads it), the Gaussian mechanisms' ε covers every round, and what rounds do not support
is refused in one line."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protocol.data.instructions import InstructionExample
from protocol.device.forward_device import DeviceRole, PivotBatch, new_sample_ids, side_scores
from protocol.model.backbone import load_backbone
from protocol.errors import UserInputError
from protocol.model.model_io import load_finetuned
from protocol.model.side_network import AdditiveSideNetwork, HiddenCorrection, SideNetworkShape
from protocol.model.side_output import side_output_from_arrays
from protocol.model.summed_side import SummedSide
from protocol.modes.generation.device import AnswerBatch, GenerationDevice, residual_signal
from protocol.modes.generation.messages import GenerationUpload
from protocol.server.transcript import ServerView
from protocol.wire.messages import RefreshedTargets, Upload
from secure_assist.audit.config import (AuditConfig, audit_variants, device_local_config, fingerprint,
                                        variant_finetune_config)
from secure_assist.cli import main
from secure_assist.compare.grid import point_identity
from secure_assist.config import MAX_ROUNDS, FinetuneConfig, result_values
from secure_assist.finetune import run_finetune
from secure_assist.mechanism_parameters import GaussianParameters, GaussianResidualParameters
from secure_assist.mechanisms.accounting import analytic_gaussian_epsilon, analytic_gaussian_sigma
from secure_assist.mechanisms.delta import GaussianDelta, GaussianResidual
from secure_assist.predict import predict_texts
from secure_assist.task_kinds import task_kind
from secure_assist.training.run import build_mechanisms, hold_out, run_training
from secure_assist.training import rounds
from secure_assist.training.workdir import DEVICE_DIR, ROUNDS_FILE, ground_truth_file, server_dir
from tests.generation_data import alpaca_file

TINY = dict(model="tiny-llama", train_samples=40, eval_samples=16, epochs=2, rank=4, mechanism_seed=0)
GENERATION = dict(task="generation", train_file="x.jsonl")


def _uploads(workdir: Path, number: int) -> tuple[np.ndarray, np.ndarray]:
    """(activations, Δ) round `number`'s server received, one row per uploaded sample in the device's
    upload order (the order of its ground truth for the round)."""
    received = ServerView(workdir / server_dir(number)).received(Upload)
    rows = {bytes(sid).hex(): (a, d) for up in received for sid, a, d in zip(up.sample_ids, up.activations, up.delta)}
    truth = (workdir / DEVICE_DIR / ground_truth_file(number)).read_text().splitlines()
    ordered = [rows[json.loads(line)["sample_id"]] for line in truth]
    return (np.stack([a for a, _ in ordered]).astype(np.float32), np.stack([d for _, d in ordered]))


def _side_values(side: torch.nn.Module, activations: np.ndarray) -> np.ndarray:
    side.eval()
    with torch.inference_mode():
        return side(torch.from_numpy(activations)).numpy()


def _assert_holds_the_sum(summary: dict, part_kind: type, inputs: np.ndarray, atol: float) -> Any:
    """The run's model file holds a sum of its two rounds' parts of `part_kind`, whose output on `inputs` is the
    parts' outputs summed; returns the loaded model."""
    model = load_finetuned(summary["model_file"])
    assert summary["head"] == SummedSide.KIND == model.head_kind and len(model.side_network.parts) == 2
    assert all(isinstance(part, part_kind) for part in model.side_network.parts)
    np.testing.assert_allclose(_side_values(model.side_network, inputs),
                               sum(_side_values(part, inputs) for part in model.side_network.parts), atol=atol)
    return model


@pytest.fixture(scope="module")
def boosted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, dict]:
    """A two-round plain run with the safeguard off (every round's side output is deployed whole, so round 2's
    targets differ from round 1's)."""
    config = FinetuneConfig(rounds=2, safeguard_fraction=0.0, workdir=str(tmp_path_factory.mktemp("rounds") / "run"),
                            **TINY)
    return config, run_finetune(config, progress=False).to_json()


def test_round_two_uploads_delta_refreshed_at_the_deployed_sum_to_its_own_server(boosted) -> None:
    config, summary = boosted
    workdir = Path(config.workdir)
    assert [r["server_view"] for r in summary["rounds"]] == [str(workdir / "server"), str(workdir / "server_round2")]
    assert summary["server_view"] == str(workdir / "server")  # round 1's, where every consumer reads it
    assert ServerView(workdir / "server").mode() == ServerView(workdir / "server_round2").mode() == "side_network"
    first_ids = [json.loads(line)["sample_id"] for line in (workdir / DEVICE_DIR / ground_truth_file(1)).open()]
    second_ids = [json.loads(line)["sample_id"] for line in (workdir / DEVICE_DIR / ground_truth_file(2)).open()]
    assert len(second_ids) == summary["n_train"] and second_ids == first_ids  # every sample, under round 1's id
    # Round 2 sent only its targets; its view records the upload they stand for, round 1's A with them.
    assert ServerView(workdir / "server_round2").received(RefreshedTargets) == []
    assert summary["rounds"][1]["upload_bytes"] < summary["rounds"][0]["upload_bytes"] / 4
    activations_1, delta_1 = _uploads(workdir, 1)
    activations_2, delta_2 = _uploads(workdir, 2)
    assert np.array_equal(activations_1, activations_2)  # the same A
    deployed = load_finetuned(summary["model_file"]).side_network
    # Round 1's Δ is onehot(y) − p_b (mechanism none): round 2's must be that minus S_1(A), round 1's part.
    expected = delta_1 - _side_values(deployed.parts[0], activations_1)
    assert np.abs(expected).max() > 0 and not np.allclose(delta_2, delta_1)
    np.testing.assert_allclose(delta_2, expected, atol=1e-5)


def test_rounds_after_the_first_run_no_backbone_pass(boosted) -> None:
    _, summary = boosted
    assert summary["rounds"][1]["device_forwards"] == 0
    assert summary["device_forwards_reused"] > 0  # read from the device's forward cache instead


def test_the_summary_reports_each_round_and_their_totals(boosted) -> None:
    _, summary = boosted
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["safeguard"] is None for r in rounds)
    assert rounds[1]["judged_against"] == "p_b + rounds 1..1 as deployed"
    assert summary["device_peak_rss_mib"] == max(r["device_peak_rss_mib"] for r in rounds)
    for key in ("bytes_up", "bytes_down", "server_seconds"):
        assert summary[key] == pytest.approx(sum(r[key] for r in rounds)) and all(r[key] > 0 for r in rounds)
    assert summary["upload_wire_bytes_this_session"] == sum(r["upload_bytes"] for r in rounds)
    assert summary["upload_bytes_per_sample"] == summary["upload_wire_bytes_this_session"] / summary["n_train"]
    assert summary["device_seconds"] > rounds[0]["device_seconds"] and rounds[1]["device_seconds"] > 0


def test_the_model_file_holds_the_sum_and_predict_reads_it(boosted) -> None:
    config, summary = boosted
    activations, _ = _uploads(Path(config.workdir), 1)
    _assert_holds_the_sum(summary, AdditiveSideNetwork, activations, atol=1e-6)
    task, _, evaluate = task_kind(config).data(config)
    rows = predict_texts(summary["model_file"], [e.text for e in evaluate], progress=False)
    predicted = np.array([task.labels.index(row["label"]) for row in rows])
    assert float((predicted == np.array([e.label for e in evaluate])).mean()) == summary["accuracy"]


def test_each_round_scores_the_sum_it_deployed(boosted) -> None:
    # Round 1's record scores round 1's part alone, round 2's the sum (the run's metrics), on the evaluation split.
    config, summary = boosted
    task, _, evaluate = task_kind(config).data(config)
    labels = np.array([e.label for e in evaluate])
    device = DeviceRole(load_backbone(config.model), task, layers=config.layers, payload_dtype=config.payload_dtype,
                        progress=False)
    parts = load_finetuned(summary["model_file"]).side_network.parts
    accuracies = [float((device.scores(evaluate, side)[1].argmax(1) == labels).mean())
                  for side in (parts[0], SummedSide(parts))]
    assert [r["eval_metrics"]["accuracy"] for r in summary["rounds"]] == pytest.approx(accuracies, abs=1e-9)
    assert summary["rounds"][-1]["eval_metrics"]["accuracy"] == summary["accuracy"]


def test_the_attack_command_reads_the_round_it_is_given(boosted, capsys: pytest.CaptureFixture) -> None:
    config, summary = boosted
    reports = []
    for number in (1, 2):
        assert main(["attack", "delta_argmax", "--workdir", config.workdir, "--round", str(number), "--json",
                     "--quiet"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    # Each scored against its round's own ground truth (round 2's fresh ids are not in round 1's): round 2's Δ,
    # plain and refreshed, still gives every label away.
    assert [r["n"] for r in reports] == [summary["n_train"]] * 2 and reports[1]["balanced_accuracy"] > 0.9
    assert main(["attack", "delta_argmax", "--workdir", config.workdir, "--round", "3", "--quiet"]) != 0
    assert "holds no server view of round 3 (server_round3/ is missing)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "delta_argmax", "--workdir", config.workdir, "--round", "0"])
    assert "invalid round: '0'" in capsys.readouterr().err


def test_each_finished_round_is_on_disk_before_the_next_one_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Round 3 stops the run (as a crash or ^C would): rounds 1 and 2's records, scores included, are kept.
    run_round = rounds.boost_round

    def stopped_in_round_three(run, number: int, deployed):
        if number == 3:
            raise KeyboardInterrupt
        return run_round(run, number, deployed)

    monkeypatch.setattr(rounds, "boost_round", stopped_in_round_three)
    workdir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneConfig(rounds=3, safeguard_fraction=0.0, workdir=str(workdir), **TINY), progress=False)
    kept = [json.loads(line) for line in (workdir / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in kept] == [1, 2] and all("accuracy" in r["eval_metrics"] for r in kept)


def test_the_rounds_file_holds_the_summary_records(boosted) -> None:
    config, summary = boosted
    kept = [json.loads(line) for line in (Path(config.workdir) / ROUNDS_FILE).read_text().splitlines()]
    assert kept == summary["rounds"]


def test_one_round_is_the_run_as_before_and_round_one_of_many(tmp_path: Path) -> None:
    one = run_finetune(FinetuneConfig(reuse_forwards=True, workdir=str(tmp_path / "one"), **TINY),
                       progress=False).to_json()
    many = run_finetune(FinetuneConfig(rounds=2, workdir=str(tmp_path / "many"), **TINY), progress=False).to_json()
    assert "rounds" not in one and one["head"] == AdditiveSideNetwork.KIND  # no wrapper, no new key
    assert not (tmp_path / "one" / "server_round2").exists()
    first = many["rounds"][0]
    assert first["safeguard"] == one["safeguard"] and first["final_train_loss"] == one["final_train_loss"]
    assert first["bytes_down"] == one["bytes_down"] and first["upload_bytes"] == one["upload_wire_bytes_this_session"]


def test_a_dropped_round_ends_the_rounds(tmp_path: Path) -> None:
    # The safeguard on (its default share): on tiny-llama's random backbone it drops round 1's side network, so
    # round 2 would train on round 1's targets again. No further round runs, uploads or gets a server role.
    summary = run_finetune(FinetuneConfig(rounds=3, workdir=str(tmp_path / "run"), **TINY), progress=False).to_json()
    rounds = summary["rounds"]
    assert rounds[0]["safeguard"]["action"] == "dropped"  # the setting this test needs
    assert [r["round"] for r in rounds] == [1] and rounds[0]["stopped"] == "rounds 2..3 not run: round 1 was dropped"
    assert not (tmp_path / "run" / "server_round2").exists()
    assert summary["bytes_up"] == rounds[0]["bytes_up"] and summary["accuracy"] == summary["zero_shot_accuracy"]
    assert rounds[0]["eval_metrics"]["accuracy"] == summary["zero_shot_accuracy"]  # a dropped round deploys p_b


def test_round_two_is_judged_against_the_deployed_sum() -> None:
    # One-hot activations make each side output a table of per-sample values.
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 2, n)
    logits = torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32))
    pivots = PivotBatch(activations=torch.eye(n).unsqueeze(1), label_logits=logits)
    backbone = torch.softmax(logits, dim=-1).numpy()
    correction = np.eye(2, dtype=np.float32)[labels] - backbone  # what makes p_b + g exactly right

    class Table(torch.nn.Module):
        KIND = "table"
        n_outputs = 2

        def __init__(self, values: np.ndarray) -> None:
            super().__init__()
            self.values = torch.from_numpy(values.copy())

        def forward(self, activations: torch.Tensor) -> torch.Tensor:
            return activations[:, 0, :] @ self.values

        def map_outputs_(self, matrix: np.ndarray) -> None:
            self.values = self.values @ torch.from_numpy(np.asarray(matrix, dtype=np.float32))

    class Device:
        def scores(self, examples: list, side: torch.nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
            return side_scores(pivots, side)

    from protocol.data.tasks import Example
    validation = [Example(text=str(i), label=int(y)) for i, y in enumerate(labels)]
    kind = task_kind(FinetuneConfig())
    alone = kind.safeguard(Device(), Table(correction), validation)
    assert alone["factor"] == 1.0  # against the backbone the correction is kept whole
    again = Table(correction)
    decision = kind.safeguard(Device(), again, validation, deployed=Table(correction))
    # p_b + the deployed correction is already right: adding it once more only overshoots.
    assert decision["action"] == "dropped" and float(again.values.abs().max()) == 0.0


def test_a_summed_side_output_saves_each_part_and_maps_them_all() -> None:
    torch.manual_seed(0)
    parts = [AdditiveSideNetwork(SideNetworkShape(n_layers=2, hidden_size=8, rank=2, n_classes=3)) for _ in range(2)]
    for part in parts:
        torch.nn.init.normal_(part.head.weight)
    summed = SummedSide(parts)
    activations = torch.randn(5, 2, 8)
    state, architecture = summed.to_arrays()
    rebuilt = side_output_from_arrays(SummedSide.KIND, state, json.loads(json.dumps(architecture)))
    assert isinstance(rebuilt, SummedSide) and [p.KIND for p in rebuilt.parts] == [AdditiveSideNetwork.KIND] * 2
    states = activations.numpy()
    np.testing.assert_allclose(_side_values(rebuilt, states),
                               _side_values(parts[0], states) + _side_values(parts[1], states), atol=1e-6)
    matrix = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    before = _side_values(rebuilt, activations.numpy())
    rebuilt.map_outputs_(matrix)
    np.testing.assert_allclose(_side_values(rebuilt, activations.numpy()), before @ matrix, atol=1e-5)
    with pytest.raises(ValueError, match="belong to no part"):
        side_output_from_arrays(SummedSide.KIND, {**state, "stray": np.zeros(1)}, architecture)
    with pytest.raises(ValueError, match="parts"):
        side_output_from_arrays(SummedSide.KIND, state, {"parts": "side_network"})


@pytest.mark.parametrize("settings", [
    dict(mode="ckks_ridge", mechanism=("he_ckks",)), dict(mode="device_local"), dict(mode="pooled"),
    dict(mode="generation"), dict(mode="generation_local"), dict(mechanism=("label_rr",), epsilon=1.0),
    dict(mechanism=("rotation_mask",)), dict(mechanism=("activation_noise",), activation_noise_multiplier=1.0),
    dict(mechanism=("int8_activations",)), dict(mechanism=("activation_rotation",)),
    dict(mechanism=("gaussian", "activation_noise"), epsilon=1.0, activation_noise_multiplier=1.0),
    dict(devices=2),
    dict(GENERATION, mode="generation_local"), dict(GENERATION, mode="side_network"),
    dict(GENERATION, mechanism=("activation_noise",), activation_noise_multiplier=1.0),
    dict(GENERATION, mechanism=("gaussian_r", "activation_noise"), epsilon=1.0, activation_noise_multiplier=1.0),
    dict(GENERATION, devices=2),
])
def test_what_rounds_do_not_support_is_refused_in_one_line(settings: dict) -> None:
    with pytest.raises(UserInputError, match=r"^--rounds > 1 ") as raised:
        FinetuneConfig(rounds=2, **settings)
    assert "\n" not in str(raised.value)
    FinetuneConfig(**settings)  # the same settings train one round


@pytest.mark.parametrize("rounds", [0, MAX_ROUNDS + 1])
def test_rounds_are_bounded(rounds: int) -> None:
    with pytest.raises(UserInputError, match=rf"^rounds must be in 1\.\.{MAX_ROUNDS}, got {rounds}$"):
        FinetuneConfig(rounds=rounds)
    assert FinetuneConfig(rounds=MAX_ROUNDS).rounds == MAX_ROUNDS


def test_finetune_help_lists_rounds(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--rounds ROUNDS" in capsys.readouterr().out


def test_gaussian_noise_covers_every_round() -> None:
    delta, sensitivity = 1e-5, GaussianDelta.sensitivity
    one = GaussianDelta(GaussianParameters(epsilon=1.0), np.random.default_rng(0))
    four = GaussianDelta(GaussianParameters(epsilon=1.0, rounds=4), np.random.default_rng(0))
    assert one.noise_multiplier == analytic_gaussian_sigma(1.0, delta, sensitivity)
    assert one.epsilon == pytest.approx(1.0)
    assert four.noise_multiplier == pytest.approx(2 * one.noise_multiplier)  # √4 × the one-release σ, per round
    assert four.epsilon == pytest.approx(analytic_gaussian_epsilon(four.noise_multiplier / 2, delta, sensitivity))
    assert four.epsilon == pytest.approx(1.0, abs=1e-6)  # the configured ε, over all four releases
    given = GaussianDelta(GaussianParameters(noise_multiplier=3.0, rounds=4), np.random.default_rng(0))
    assert given.noise_multiplier == 3.0
    assert given.epsilon == pytest.approx(analytic_gaussian_epsilon(1.5, delta, sensitivity))  # ε of 4 releases
    described = four.describe()
    assert described["rounds"] == 4 and described["noise_multiplier_per_round"] == four.noise_multiplier
    assert "4 releases" in described["guarantee"] and "rounds" not in one.describe()


def test_each_round_draws_fresh_noise(tmp_path: Path) -> None:
    config = FinetuneConfig(rounds=2, mechanism=("gaussian",), noise_multiplier=0.5, clip=100.0,
                            safeguard_fraction=0.0, workdir=str(tmp_path / "run"), **TINY)
    summary = run_finetune(config, progress=False).to_json()
    (described,) = summary["mechanisms"]
    assert described["rounds"] == 2 and described["noise_multiplier_per_round"] == 0.5
    assert described["epsilon"] == pytest.approx(analytic_gaussian_epsilon(0.5 / math.sqrt(2), 1e-5, 2.0))
    activations, delta_1 = _uploads(tmp_path / "run", 1)
    _, delta_2 = _uploads(tmp_path / "run", 2)
    first_part = load_finetuned(summary["model_file"]).side_network.parts[0]
    # Nothing is clipped at c = 100, so Δ_2 − Δ_1 + S_1(A) is the difference of the two rounds' noise.
    noise_difference = delta_2 - delta_1 + _side_values(first_part, activations)
    assert noise_difference.std() == pytest.approx(100.0 * 0.5 * math.sqrt(2), rel=0.25)


def test_fingerprints_change_with_rounds_only() -> None:
    assert "rounds" not in result_values(asdict(FinetuneConfig()))  # one round: the fingerprints of before
    assert result_values(asdict(FinetuneConfig(rounds=2)))["rounds"] == 2
    plain = point_identity(FinetuneConfig(), ())
    assert point_identity(FinetuneConfig(rounds=2), ()) != plain
    audit = AuditConfig(variants=("none", "gaussian"))
    assert fingerprint(replace(audit, rounds=2)) != fingerprint(audit)


def test_the_audit_boosts_its_pae_rows_and_refuses_rows_that_cannot(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="^--rounds > 1 runs classification with mechanism none or gaussian only, not label_rr$"):
        AuditConfig(rounds=2, output=str(tmp_path / "refused"))  # the default variants include label_rr
    config = AuditConfig(rounds=2, variants=("none", "gaussian"), output=str(tmp_path / "audit"))
    assert [variant_finetune_config(config, v).rounds for v in audit_variants(config)] == [2, 2]
    assert device_local_config(config).rounds == 1  # the reference trains on the device, once


def test_an_audit_boosts_its_rows_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The safeguard off: on tiny-llama it would drop round 1, which ends the rounds.
    output = tmp_path / "audit"
    code = main(["audit", "--model", "tiny-llama", "--train-samples", "40", "--eval-samples", "16", "--epochs", "2",
                 "--rank", "4", "--rounds", "2", "--safeguard-fraction", "0", "--variants", "none,gaussian",
                 "--attacks", "delta_argmax",
                 "--membership-references", "0", "--dp-releases", "400", "--attack-samples", "12",
                 "--output", str(output), "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((output / "report.json").read_text())
    assert [v["status"] for v in report["variants"]] == ["ok", "ok"]
    assert all((output / "rows" / row / "server_round2").is_dir() for row in ("none", "gaussian@1"))
    assert not (output / "rows" / "device_local" / "server_round2").exists()
    assert "Boosting rounds: each variant row runs 2" in (output / "report.md").read_text()
    for variant in report["variants"]:
        # Every attack reads each round's view, scored on that round's ground truth (its fresh sample ids).
        by_name = {r["attack"]: r for r in variant["attacks"]}
        first, second = by_name["delta_argmax"], by_name["delta_argmax (round 2)"]
        assert "round" not in first and second["round"] == 2 and second["status"] == first["status"] == "ok"
        assert second["of_uploads"] == first["of_uploads"] and second["n"] == first["n"]
        assert variant["best_label_leak"]["balanced_accuracy"] == max(first["balanced_accuracy"],
                                                                       second["balanced_accuracy"])
    # Without the safeguard round 1 is deployed whole, so round 2's plain Δ differs from round 1's, and its
    # leak is measured on its own: the plain row's round-2 attack recovers the labels as round 1's does.
    plain = {r["attack"]: r for r in report["variants"][0]["attacks"]}
    assert plain["delta_argmax (round 2)"]["balanced_accuracy"] > 0.9


# Generation: round k >= 2 uploads r_t = W_Uᵀ(onehot(y_t) − softmax(z_t + W_U S_{k−1,t})) from the passes the device
# holds in memory, and the deployed model is the sum of the hidden-space corrections.
GENERATION_TINY = dict(model="tiny-llama", task="generation", train_samples=30, eval_samples=8, epochs=2,
                       max_answer_tokens=6, rouge_samples=4, rank=4, mechanism_seed=0)


def _generation_config(folder: Path, **settings: object) -> FinetuneConfig:
    return FinetuneConfig(train_file=str(alpaca_file(folder, 40)), workdir=str(folder / "run"),
                          **GENERATION_TINY, **settings)


def _residual_uploads(workdir: Path, number: int) -> tuple[np.ndarray, np.ndarray]:
    """(states, r) round `number`'s server received, one row per answer position, samples in the device's
    upload order (its ground truth for the round)."""
    received = ServerView(workdir / server_dir(number)).received(GenerationUpload)
    rows = {bytes(sid).hex(): (up.activations[part], up.residual[part])
            for up in received for sid, part in zip(up.sample_ids, up.sample_rows())}
    truth = (workdir / DEVICE_DIR / ground_truth_file(number)).read_text().splitlines()
    ordered = [rows[json.loads(line)["sample_id"]] for line in truth]
    return (np.concatenate([a for a, _ in ordered]).astype(np.float32), np.concatenate([r for _, r in ordered]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, dict]:
    """A two-round plain generation run with the safeguard off (round 1's correction is deployed whole)."""
    config = _generation_config(tmp_path_factory.mktemp("generation_rounds"), rounds=2, safeguard_fraction=0.0)
    return config, run_finetune(config, progress=False).to_json()


def test_generation_round_two_uploads_r_refreshed_at_the_deployed_correction(generated) -> None:
    config, summary = generated
    workdir = Path(config.workdir)
    assert ServerView(workdir / "server_round2").mode() == "generation"
    states_1, residual_1 = _residual_uploads(workdir, 1)
    states_2, residual_2 = _residual_uploads(workdir, 2)
    assert np.array_equal(states_1, states_2)  # the same states, under fresh ids
    # h_t and y_t recomputed on the device side by a fresh device, batched as the run batched its upload.
    task, train, _ = task_kind(config).data(config)
    upload_set, _ = hold_out(train, config)
    device = GenerationDevice(load_backbone(config.model), task, layers=config.layers,
                              batch_size=config.device_batch_size, progress=False)
    part = load_finetuned(summary["model_file"]).side_network.parts[0]
    batches = [outputs for _, outputs in device.batches(upload_set, "recompute")]
    np.testing.assert_array_equal(torch.cat([b.activations for b in batches]).numpy(), states_1)
    backbone = torch.cat([residual_signal(device.weight, b.final_states, b.targets) for b in batches]).numpy()
    refreshed = torch.cat([residual_signal(device.weight, b.final_states + torch.from_numpy(
        _side_values(part, b.activations.numpy())), b.targets) for b in batches]).numpy()
    # Round 1's correction is a short step (the MSE fit through the head), so r moves little: the tolerance is far
    # below that move.
    moved = np.abs(refreshed - backbone).max()
    assert moved > 0 and np.abs(residual_2 - residual_1).max() > moved / 2
    np.testing.assert_allclose(residual_1, backbone, rtol=0, atol=moved / 20)  # round 1: r at the backbone's z_t
    np.testing.assert_allclose(residual_2, refreshed, rtol=0, atol=moved / 20)  # round 2: r at z_t + W_U S_1


def test_a_refreshed_r_is_taken_at_the_corrected_logits() -> None:
    # r_t = W_Uᵀ(onehot(y_t) − softmax(W_U h_t + W_U S_t)), against the formula in float64, with a large correction.
    torch.manual_seed(0)
    n, d, vocabulary = 6, 8, 12
    device = GenerationDevice.__new__(GenerationDevice)  # no backbone: the upload's arithmetic only
    device.weight, device.payload_dtype, device.layers = torch.randn(vocabulary, d), "float32", (1,)
    outputs = AnswerBatch(activations=torch.randn(n, 1, d), final_states=torch.randn(n, d),
                          targets=torch.randint(0, vocabulary, (n,)), counts=torch.tensor([2, 4]))
    deployed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, d))  # (N, 1, d) -> S_t (N, d)
    upload = device.make_upload([], outputs, new_sample_ids(2), deployed)
    weight, hidden = device.weight.double(), outputs.final_states.double()
    with torch.no_grad():
        hidden = hidden + deployed(outputs.activations).double()
    expected = (torch.eye(vocabulary, dtype=torch.float64)[outputs.targets] - torch.softmax(hidden @ weight.T, -1))
    np.testing.assert_allclose(upload.residual, (expected @ weight).numpy(), atol=1e-5)
    plain = device.make_upload([], outputs, new_sample_ids(2))
    assert np.abs(upload.residual - plain.residual).max() > 0.1


def test_generation_rounds_after_the_first_run_no_backbone_pass(generated) -> None:
    _, summary = generated
    assert summary["rounds"][1]["device_forwards"] == 0
    # Read from memory: round 2's upload, and the evaluation split scored after round 2 (after round 1 it ran).
    assert summary["device_forwards_reused"] == summary["n_train"] + summary["n_eval"]


def test_the_generation_model_file_holds_the_sum_and_predict_and_the_evaluation_read_it(generated) -> None:
    config, summary = generated
    states, _ = _residual_uploads(Path(config.workdir), 1)
    model = _assert_holds_the_sum(summary, HiddenCorrection, states, atol=1e-5)
    task, _, evaluate = task_kind(config).data(config)
    device = GenerationDevice(load_backbone(config.model), task, layers=config.layers,
                              batch_size=config.device_batch_size, progress=False)

    def answer_nll(side: torch.nn.Module) -> float:
        log_probs, _, counts = device.token_scores(evaluate, side)  # batched as the run's evaluation
        return float(-log_probs[:, 1].astype(np.float64).sum() / counts.sum())

    # The corrections are short steps (tiny NLL moves): the tolerance tells the sum from round 1's part alone.
    assert summary["eval_answer_nll"] == pytest.approx(answer_nll(model.side_network), rel=0, abs=1e-9)
    assert summary["eval_answer_nll"] != pytest.approx(answer_nll(model.side_network.parts[0]), rel=0, abs=1e-8)
    # Each round's record scores what it deployed: round 1 its part alone, round 2 the sum.
    assert [r["eval_metrics"]["eval_answer_nll"] for r in summary["rounds"]] == pytest.approx(
        [answer_nll(model.side_network.parts[0]), summary["eval_answer_nll"]], rel=0, abs=1e-9)
    instructions = ["Name a color.", "Add 2 and 3."]
    rows = predict_texts(summary["model_file"], instructions, progress=False)
    examples = [InstructionExample(instruction=text, input="", output="") for text in instructions]
    assert [r["answer"] for r in rows] == [device.backbone.tokenizer.decode(ids, skip_special_tokens=True)
                                           for ids in device.generate(examples, model.side_network)]


@pytest.fixture(scope="module")
def generated_safeguarded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Generation with three rounds asked for and the safeguard on (its default share)."""
    folder = tmp_path_factory.mktemp("generation_safeguarded")
    return folder, run_finetune(_generation_config(folder, rounds=3), progress=False).to_json()


def test_a_dropped_generation_round_ends_the_rounds(generated_safeguarded) -> None:
    folder, summary = generated_safeguarded
    rounds = summary["rounds"]
    assert rounds[0]["safeguard"]["action"] == "dropped"  # tiny-llama's random backbone: the setting this test needs
    assert [r["round"] for r in rounds] == [1] and rounds[0]["stopped"] == "rounds 2..3 not run: round 1 was dropped"
    assert not (folder / "run" / "server_round2").exists()
    assert summary["eval_answer_nll"] == summary["zero_shot_answer_nll"]


def test_one_generation_round_is_the_run_as_before_and_round_one_of_many(generated_safeguarded,
                                                                         tmp_path: Path) -> None:
    _, many = generated_safeguarded
    one = run_finetune(_generation_config(tmp_path), progress=False).to_json()
    assert "rounds" not in one and one["head"] == HiddenCorrection.KIND  # no wrapper, no new key
    assert not (tmp_path / "run" / "server_round2").exists()
    first = many["rounds"][0]
    assert first["safeguard"] == one["safeguard"] and first["final_train_loss"] == one["final_train_loss"]
    assert first["bytes_down"] == one["bytes_down"] and first["upload_bytes"] == one["upload_wire_bytes_this_session"]


def test_a_generation_round_is_judged_against_the_deployed_correction() -> None:
    # Orthonormal head rows and h_t = 0: the backbone's logits are all 0 and a hidden correction Wᵀu adds exactly u
    # to the logits. The correction raises y_t by 1 and another token v_t by 2: better than the flat backbone, but
    # on top of a deployed correction that already raised v_t by 5 it only lends v_t more weight.
    torch.manual_seed(0)
    n, d, vocabulary = 40, 8, 6
    weight = torch.linalg.qr(torch.randn(d, d))[0][:vocabulary]
    targets = torch.randint(0, vocabulary, (n,))
    others = (targets + 1) % vocabulary
    outputs = AnswerBatch(activations=torch.eye(n).unsqueeze(1), final_states=torch.zeros(n, d), targets=targets,
                          counts=torch.ones(n, dtype=torch.long))
    onehot = torch.eye(vocabulary)

    class Table(torch.nn.Module):
        KIND = "table"
        n_outputs = d

        def __init__(self, logit_shift: torch.Tensor) -> None:
            super().__init__()
            self.values = logit_shift @ weight  # the hidden correction of each sample (one-hot activations)

        def forward(self, activations: torch.Tensor) -> torch.Tensor:
            return activations[:, 0, :] @ self.values

        def map_outputs_(self, matrix: np.ndarray) -> None:
            self.values = self.values @ torch.from_numpy(np.asarray(matrix, dtype=np.float32))

    device = GenerationDevice.__new__(GenerationDevice)  # scoring only: no backbone
    device.weight, device.batches = weight, lambda examples, description: iter([(examples, outputs)])
    validation = [InstructionExample(instruction=str(i), input="", output="x") for i in range(n)]
    kind = task_kind(FinetuneConfig(**GENERATION))
    correction = onehot[targets] + 2 * onehot[others]
    assert kind.safeguard(device, Table(correction), validation)["action"] != "dropped"
    again = Table(correction)
    decision = kind.safeguard(device, again, validation, deployed=Table(5 * onehot[others]))
    assert decision["action"] == "dropped" and float(again.values.abs().max()) == 0.0


def test_gaussian_r_noise_covers_every_round() -> None:
    delta, sensitivity = 1e-5, GaussianResidual.sensitivity
    one = GaussianResidual(GaussianResidualParameters(epsilon=1.0), np.random.default_rng(0))
    four = GaussianResidual(GaussianResidualParameters(epsilon=1.0, rounds=4), np.random.default_rng(0))
    assert one.noise_multiplier == analytic_gaussian_sigma(1.0, delta, sensitivity) and one.releases == 1
    assert four.releases == 4 and four.noise_multiplier == pytest.approx(2 * one.noise_multiplier)
    assert four.epsilon == pytest.approx(1.0, abs=1e-6)  # the configured ε, over all four releases
    given = GaussianResidual(GaussianResidualParameters(noise_multiplier=3.0, rounds=4), np.random.default_rng(0))
    assert given.epsilon == pytest.approx(analytic_gaussian_epsilon(1.5, delta, sensitivity))  # ε of 4 releases
    described = four.describe()
    assert described["rounds"] == 4 and described["noise_multiplier_per_round"] == four.noise_multiplier
    assert described["guarantee"].startswith("(ε, δ)-DP per sample on r,") and "4 releases" in described["guarantee"]
    # A run's chain gets the config's rounds.
    config = FinetuneConfig(rounds=3, mechanism=("gaussian_r",), epsilon=1.0, **GENERATION)
    (described,) = build_mechanisms(config).describe()
    assert described["rounds"] == 3 and described["epsilon"] == pytest.approx(1.0, abs=1e-6)
