"""The auditor: runs attacks on a run's server view and scores them against ground truth.

Ground truth (`<workdir>/device/ground_truth.jsonl`) lives here and only here: an attack
gets the server view and declared public knowledge, returns predictions keyed by sample
id, and the auditor computes metrics, chance/prior baselines and 95% bootstrap CIs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import (
    ALIGNMENT, ANSWER_TOKENS, EXTRACTION, LABELS, RECONSTRUCTION, SCORES, Attack, AttackResult, MissingViewField,
    PublicKnowledge,
)
from attacks.registry import get_attack
from attacks.reconstruction import words
from attacks.public_model import public_backbone
from attacks.rotation_math import relative_error
from attacks.view_data import pivot_data
from protocol.model.names import DEFAULT_BACKBONE
from protocol.device.forward_device import DeviceRole
from protocol.device.features import encode_dataset
from protocol.errors import SecureAssistError, UserInputError
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.model.model_io import load_finetuned
from protocol.model.input_maps import input_rotations, unrotate
from protocol.data.tasks import SST2, Example, TaskSpec, builtin_split
from protocol.server.transcript import ServerView
from secure_assist.audit.answer_audit import score_answers, score_generation_extraction
from secure_assist.audit.sampling import memory_view
from protocol.modes.registry import MODES
from secure_assist.audit.public_knowledge import default_public_knowledge
from secure_assist.training.workdir import DEVICE_DIR, MODEL_FILE, ground_truth_file, server_dir as round_dir
from secure_assist.metrics import auc_with_interval, bag_scores, bootstrap_interval, label_leak_metrics, rouge_l

# An alignment attack has recovered a layer's rotation when ‖R̂ − R‖_F / ‖R‖_F is below this.
RECOVERED_ERROR = 0.01


class ViewContractError(SecureAssistError):
    """A view whose mode declares a field that an attack then does not find: the audit
    stops (fails closed) instead of reporting the attack as not applicable."""


def run_on_view(attack: Attack, view: ServerView, public: PublicKnowledge) -> AttackResult:
    """Run an attack, checking the view's declared fields against what the attack reads.

    A view written by a registered mode declares its fields: an attack that needs a field
    the mode lacks is not applicable (without running), and one that finds a declared
    field missing is a `ViewContractError`. Views without a mode (the MobiLLM-style and
    split-learning baselines) fall back to the attack's own `MissingViewField`."""
    mode = view.mode()
    if mode is None:
        return attack.run(view, public)
    if mode not in MODES:
        raise ViewContractError(f"the server view names an unknown training mode {mode!r}")
    declared = MODES[mode].view_fields
    if not attack.applicable(declared):
        missing = sorted((attack.NEEDS - declared) or attack.NEEDS_ONE_OF)
        raise MissingViewField(attack.NAME, f"{' or '.join(missing)} (not in a {mode} view)")
    try:
        return attack.run(view, public)
    except MissingViewField as exc:
        raise ViewContractError(f"attack {attack.NAME!r} found no {exc.field_name!r} in a {mode} view, whose mode "
                                f"declares {sorted(declared)}: the view or the attack's reader is broken") from exc


@dataclass(frozen=True)
class Truth:
    """One uploaded sample as the device knows it (generation: its text and answer, no label)."""

    label: int
    text: str
    answer: str | None = None


def load_ground_truth(workdir: Path, round_number: int = 1) -> dict[str, Truth]:
    """sample id (hex) -> label and text, from the device side of a run (of its boosting round
    `round_number`, whose uploads carry fresh ids)."""
    path = workdir / DEVICE_DIR / ground_truth_file(round_number)
    if not path.is_file():
        raise UserInputError(f"{path} is missing: the auditor needs the device's ground truth")
    truth = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            truth[row["sample_id"]] = Truth(label=int(row.get("label", -1)), text=str(row["text"]),
                                            answer=row.get("answer"))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserInputError(f"{path}:{number}: malformed ground-truth row ({exc})") from exc
    return truth


def upload_texts(truth: dict[str, Truth]) -> list[tuple[str, str]]:
    """(sample id, text) of every upload, in the ground truth's order (what public knowledge takes)."""
    return [(sid, t.text) for sid, t in truth.items()]


def _aligned(result: AttackResult, truth: dict[str, Truth]) -> list[Truth]:
    unknown = [sid for sid in result.sample_ids if sid not in truth]
    if unknown:
        raise UserInputError(f"{len(unknown)} attacked sample ids are not in the ground truth (e.g. {unknown[0]})")
    return [truth[sid] for sid in result.sample_ids]


def score_labels(result: AttackResult, truth: dict[str, Truth], n_classes: int, seed: int = 0) -> dict[str, Any]:
    """Accuracy with the prior, balanced accuracy and (when the attack gives class scores) AUC, with CIs."""
    labels = np.array([t.label for t in _aligned(result, truth)])
    return label_leak_metrics(result.predictions, labels, n_classes, result.scores, seed)


def score_scores(result: AttackResult, truth: dict[str, Truth], seed: int = 0) -> dict[str, Any]:
    """max(AUC, 1 - AUC) and its CI."""
    labels = np.array([t.label for t in _aligned(result, truth)])
    return auc_with_interval(np.asarray(result.scores, dtype=float), labels, seed)


def score_reconstruction(result: AttackResult, truth: dict[str, Truth], tokenizer: object, task: TaskSpec,
                         seed: int = 0) -> dict[str, Any]:
    """Bag-of-words precision/recall/F1, exact match, ROUGE-L, the F1 of the same guesses scored
    against other samples' texts (a seed-fixed permutation: what the guesses get right without
    being specific to their sample, e.g. frequent words) and, for per-position attacks, the
    share of prompt tokens recovered at their position."""
    rows = _aligned(result, truth)
    per = np.array([bag_scores(words(guess), words(t.text)) for guess, t in zip(result.texts, rows)])
    others = np.random.default_rng(seed).permutation(len(rows))
    shuffled = np.mean([bag_scores(words(guess), words(rows[i].text))[2] for guess, i in zip(result.texts, others)])
    exact = np.array([" ".join(words(g)) == " ".join(words(t.text)) for g, t in zip(result.texts, rows)], float)
    rouge = np.array([rouge_l(g, t.text) for g, t in zip(result.texts, rows)])
    report: dict[str, Any] = {
        "token_precision": float(per[:, 0].mean()), "token_recall": float(per[:, 1].mean()),
        "token_f1": float(per[:, 2].mean()),
        "token_f1_ci95": bootstrap_interval(lambda idx: float(per[idx, 2].mean()), len(per), seed),
        "token_f1_shuffled": float(shuffled), "exact_match": float(exact.mean()),
        "exact_match_ci95": bootstrap_interval(lambda idx: float(exact[idx].mean()), len(exact), seed),
        "rouge_l": float(rouge.mean()), "n": len(rows)}
    if result.token_ids is not None:
        hits = total = 0
        for guess, row in zip(result.token_ids, rows):
            actual = tokenizer(task.prompt(row.text), add_special_tokens=False)["input_ids"]
            hits += sum(a == b for a, b in zip(guess, actual))
            total += len(actual)
        report["position_token_accuracy"] = hits / total
    return report


def score_extraction(result: AttackResult, workdir: Path, backbone_name: str, task: TaskSpec,
                     held_out: list[Example], progress: bool = True) -> dict[str, Any]:
    """Agreement of the server's copy with the deployed model on held-out inputs,
    next to the agreement of the backbone alone."""
    deployed = load_finetuned(workdir / MODEL_FILE)
    role = DeviceRole(public_backbone(backbone_name), task, layers=deployed.layers,
                      payload_dtype=deployed.payload_dtype, progress=progress)
    pivots = encode_dataset(role, held_out)
    base = torch.softmax(pivots.label_logits, dim=-1)
    with torch.inference_mode():
        reference = (base + deployed.side_network.eval()(pivots.activations)).argmax(dim=1).numpy()
        copy = (base + result.model(pivots.activations)).argmax(dim=1).numpy()
    agree, backbone_agree = (copy == reference).astype(float), (base.argmax(dim=1).numpy() == reference).astype(float)
    return {"agreement": float(agree.mean()),
            "agreement_ci95": bootstrap_interval(lambda idx: float(agree[idx].mean()), len(agree)),
            "backbone_only_agreement": float(backbone_agree.mean()), "n": len(held_out)}


def score_alignment(result: AttackResult, attack: Attack, view: ServerView, workdir: Path,
                    seed: int = 0) -> dict[str, Any]:
    """How close R̂ is to the device's secret rotations (identity when it rotates nothing):
    per-layer relative error, layers recovered, and per sample the cosine between the realigned
    and the true plain states once the layer mean is removed (pivot states of one layer share
    a large common offset that any alignment of the mean gets right), beside that cosine
    without realignment."""
    deployed = load_finetuned(workdir / MODEL_FILE)
    states = pivot_data(view, attack).activations
    truth = input_rotations(deployed.side_network)
    if truth is None:
        truth = np.broadcast_to(np.eye(states.shape[2], dtype=np.float32), result.rotation.shape)
    errors = relative_error(result.rotation, truth)
    centred = states - states.mean(axis=0)
    plain = unrotate(centred, truth)

    def cosine(estimate: np.ndarray) -> np.ndarray:
        dots = (estimate * plain).sum(axis=2)
        norms = np.linalg.norm(estimate, axis=2) * np.linalg.norm(plain, axis=2)
        return (dots / norms.clip(1e-12)).mean(axis=1)

    aligned, unaligned = cosine(unrotate(centred, result.rotation)), cosine(centred)
    return {"rotation_relative_error": errors.tolist(), "rotation_relative_error_mean": float(errors.mean()),
            "layers_recovered": int((errors < RECOVERED_ERROR).sum()), "layers": len(errors),
            "centred_state_cosine": float(aligned.mean()),
            "centred_state_cosine_ci95": bootstrap_interval(lambda idx: float(aligned[idx].mean()), len(aligned),
                                                            seed),
            "unaligned_centred_state_cosine": float(unaligned.mean()), "n": len(aligned)}


def run_attack(name: str, workdir: Path | str, public: PublicKnowledge | None = None,
               backbone_name: str | None = None, task: TaskSpec | InstructionTask | None = None, seed: int = 0,
               progress: bool = True, held_out: list[Example] | list[InstructionExample] | None = None,
               public_file: str | None = None, keep: frozenset[str] | None = None,
               round_number: int = 1) -> dict[str, Any]:
    """Run one registered attack on `<workdir>/server` (boosting round `round_number`'s view) and
    score it with `<workdir>/device`."""
    return audit(name, workdir, public, backbone_name, task, seed, progress, held_out, public_file=public_file,
                 keep=keep, round_number=round_number)[1]


def audit(name: str, workdir: Path | str, public: PublicKnowledge | None = None,
          backbone_name: str | None = None, task: TaskSpec | InstructionTask | None = None, seed: int = 0,
          progress: bool = True, held_out: list[Example] | list[InstructionExample] | None = None,
          view: ServerView | None = None, public_file: str | None = None,
          keep: frozenset[str] | None = None, server_dir: Path | None = None,
          round_number: int = 1) -> tuple[AttackResult, dict[str, Any]]:
    """The attack's raw result (which never saw ground truth) and its scored report.

    `public`: the attacker's public knowledge (default: from `public_file`, or a built-in
    task's unused rows; a generation view needs `public_file`). `held_out`: the inputs model
    extraction is scored on (default: the task's whole dev split; for generation, the public
    examples); runs pass their own evaluation split, whose device forwards they already hold.
    `view`: what the attack reads (default: the run's server view as stored; e.g. a view an
    alignment attack realigned). `keep`: attack only these uploads (hex sample ids; a
    `SampledView` of the stored view). `server_dir`: where the stored view is (default:
    `<workdir>/server`; a pooled device's own namespace in the pool's server directory).
    `round_number`: the boosting round whose view (`<workdir>/server_round<k>` unless `server_dir`
    says otherwise) and ground truth are read (default: round 1, every run's)."""
    workdir = Path(workdir)
    attack = get_attack(name)
    if view is None and server_dir is None and not (workdir / round_dir(round_number)).is_dir():
        raise UserInputError(f"{workdir} holds no server view of round {round_number} "
                             f"({round_dir(round_number)}/ is missing): the run had fewer rounds, or none ran there")
    truth = load_ground_truth(workdir, round_number)
    if (workdir / MODEL_FILE).is_file() and (backbone_name is None or task is None):
        deployed = load_finetuned(workdir / MODEL_FILE)
        backbone_name, task = backbone_name or deployed.backbone, task or deployed.task
    backbone_name, task = backbone_name or DEFAULT_BACKBONE, task or SST2
    if public is None:
        public = default_public_knowledge(backbone_name, task, upload_texts(truth), seed,
                                          progress, public_file)
    view = view or memory_view(server_dir or workdir / round_dir(round_number), keep)
    result = run_on_view(attack, view, public)
    report: dict[str, Any] = {"attack": name, "kind": attack.KIND, "activations_only": attack.ACTIVATIONS_ONLY,
                              "description": attack.DESCRIPTION, "workdir": str(workdir), **result.details}
    if attack.KIND == LABELS:
        report.update(score_labels(result, truth, task.n_classes, seed))
    elif attack.KIND == SCORES:
        report.update(score_scores(result, truth, seed))
    elif attack.KIND == RECONSTRUCTION:
        report.update(score_reconstruction(result, truth, public_backbone(backbone_name).tokenizer, task, seed))
    elif attack.KIND == ANSWER_TOKENS:
        report.update(score_answers(result, [t.answer for t in _aligned(result, truth)], backbone_name, task, seed))
    elif attack.KIND == EXTRACTION and isinstance(task, InstructionTask):
        report.update(score_generation_extraction(result.model, load_finetuned(workdir / MODEL_FILE),
                                                  held_out or list(public.public_examples), seed, progress))
    elif attack.KIND == EXTRACTION:
        report.update(score_extraction(result, workdir, backbone_name, task,
                                       held_out or builtin_split(task.name, "dev"), progress))
    elif attack.KIND == ALIGNMENT:
        report.update(score_alignment(result, attack, view, workdir, seed))
    return result, report
