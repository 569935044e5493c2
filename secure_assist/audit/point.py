"""One point of an audit or a comparison: fine-tune → attack the server's view → rows.

`audit` (a variant) and `compare` (a sweep point) both run this; each then shapes its own
row from the `PointResult` (the audit scores against its reference rows and checks the DP
claim, compare keeps the label leakage summary). The run is real (`run_training` in
process) and so is every attack (`secure_assist.audit.attack_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from attacks.base import NotApplicable
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.data.tasks import Example, TaskSpec
from secure_assist.audit.attack_runs import attack_reports
from secure_assist.audit.auditor import load_ground_truth, upload_texts
from secure_assist.audit.public_knowledge import PublicData, knowledge
from secure_assist.audit.schema import COST_KEYS, FORWARD_KEYS, HE_COST_KEYS, jsonable
from secure_assist.audit.sampling import sample_ids
from secure_assist.audit.verdict import headline
from secure_assist.config import FinetuneConfig
from secure_assist.training.run import run_training
from secure_assist.training.summary import RunSummary


@dataclass(frozen=True)
class PointData:
    """What the attacker may be measured against: the run's task, its private rows (training
    and evaluation) and the public rows the attacker knows."""

    task: TaskSpec | InstructionTask
    train: list[Example] | list[InstructionExample]
    evaluate: list[Example] | list[InstructionExample]
    public: PublicData


@dataclass(frozen=True)
class PointResult:
    """A finished point: the run's summary, its work directory and one row per attack."""

    summary: RunSummary
    workdir: Path
    attacks: list[dict[str, Any]]
    uploads: int  # samples in the server's view (0 for a mode that uploads nothing)


def run_cost(summary: RunSummary) -> dict[str, Any]:
    """The run's cost figures a row reports (the CKKS mode's own costs where it has them)."""
    return {**{k: getattr(summary, k) for k in COST_KEYS + FORWARD_KEYS},
            **{k: summary.details[k] for k in HE_COST_KEYS if k in summary.details}}


def attack_rows(names: Sequence[str], workdir: Path, data: PointData, config: FinetuneConfig,
                progress: bool, attack_samples: int | None = None,
                held_out: list[Example] | list[InstructionExample] | None = None,
                server_dir: Path | None = None, round_number: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Every named attack on the run's server view (stored in `server_dir`, default: boosting round
    `round_number`'s folder, `<workdir>/server` for round 1): (rows, uploads attacked). Reconstruction
    attacks read a seed-fixed subsample of `attack_samples` uploads (default: all). A later round's rows
    are named `<attack> (round k)` and carry `round`."""
    truth = load_ground_truth(workdir, round_number)
    known = knowledge(config.model, data.task, data.public, upload_texts(truth), config.seed, progress,
                      private_pool=[e.text for e in data.train], mechanisms=tuple(config.mechanism))
    keep = None
    if attack_samples is not None:
        subsample = sample_ids(list(truth), attack_samples, config.seed)
        keep = subsample if len(subsample) < len(truth) else None
    rows = []
    reports = attack_reports(list(names), workdir, known, config.seed, progress, held_out, keep, server_dir,
                             round_number)
    tag = {} if round_number == 1 else {"round": round_number}
    suffix = f" (round {round_number})" if tag else ""
    for name, report, seconds in tqdm(reports, desc=f"attacks on {workdir.name}{suffix}", unit="attack",
                                      disable=not progress, leave=False):
        name += suffix
        if isinstance(report, NotApplicable):
            rows.append({"attack": name, "status": "not_applicable", "reason": str(report), **tag})
            continue
        rows.append({**jsonable(report), "attack": name, "status": "ok", **headline(report),
                     "of_uploads": len(truth), "seconds": seconds, **tag})
    return rows, len(truth)


def run_point(config: FinetuneConfig, attacks: Sequence[str], data: PointData, progress: bool,
              attack_samples: int | None = None,
              held_out: list[Example] | list[InstructionExample] | None = None) -> PointResult:
    """Fine-tune `config` for real on a fresh work directory, then run `attacks` on its server view
    (none for a run that uploads nothing: there is no view). With boosting rounds the server holds one
    view per round that ran, each with the device's refreshed signal: every attack reads each of them
    (a later round's rows carry `round`), so the point's best leak is the best over all rounds."""
    summary = run_training(config, progress=progress, overwrite=True)
    workdir = Path(config.workdir)
    rows, uploads = [], 0
    if attacks:
        for record in summary.rounds or [{"round": 1}]:
            round_rows, uploads_in_round = attack_rows(attacks, workdir, data, config, progress, attack_samples,
                                                       held_out, round_number=record["round"])
            rows += round_rows
            uploads = uploads_in_round  # every round uploads the same samples again
    return PointResult(summary=summary, workdir=workdir, attacks=rows, uploads=uploads)

