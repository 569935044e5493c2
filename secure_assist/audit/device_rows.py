"""The rows of a many-device audit (`--devices N`, N > 1), each one real multi-device run, scored per device.

Rows: `zero_shot` (the backbone alone), `device_local` (every device trains the side network on its
own share alone), `pooled:<variant>` (one side network trained by the server over every device's
uploads, each protected by the variant's mechanism: `secure_assist.devices.pooled_run`) and
`fedavg`, `fedavg+dp`, `fedavg+secagg` (Flower federated averaging: `secure_assist.federated`).
A row whose engine is not installed is reported as skipped with the reason.

Each device is scored on the common evaluation split and on a split from its own distribution (the
common split re-weighted by its label shares: `own_distribution_weights`). `audit` and `compare`
both produce their rows here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from attacks.base import LABELS
from protocol.errors import UserInputError
from protocol.model.backbone import sharing_backbones
from protocol.model.model_io import load_finetuned
from secure_assist.audit.config import Variant, row_finetune_config
from secure_assist.audit.membership import MembershipSetting, membership_attacks
from secure_assist.audit.point import PointData, attack_rows
from secure_assist.audit.public_knowledge import PublicData, knowledge
from secure_assist.audit.rows import DEVICE_LOCAL, ZERO_SHOT, EvalData, SampleScores
from secure_assist.audit.schema import jsonable
from secure_assist.audit.verdict import HEADLINES
from secure_assist.config import FinetuneConfig
from secure_assist.devices.cross_membership import ATTACKER, cross_device_membership, device_trained_texts
from secure_assist.devices.partition import own_distribution_weights
from secure_assist.devices.poisoning import POISONER, poisoning_effect
from secure_assist.devices.share import device_share
from secure_assist.training.run import run_training
from secure_assist.training.summary import RunSummary

POOLED, FEDAVG = "pooled", "fedavg"
# Where each engine lives (imported when its row runs: a missing one skips its rows).
ENGINES = {POOLED: ("secure_assist.devices.pooled_run", "run_pooled"),
           FEDAVG: ("secure_assist.federated.run", "run_fedavg")}
# The per-device figures a row's statistics summarize.
COST_FIGURES = ("bytes_up", "bytes_down", "device_seconds")
# The label attacks' headline (balanced accuracy): the leak figure of a classification row.
LEAK_METRIC = HEADLINES[LABELS][0]


def pooled_row_name(variant: Variant) -> str:
    """The row of a pooled variant: `pooled:none`, `pooled:label_rr@4`."""
    return f"{POOLED}:{variant.label}"


def fedavg_row_name(variant: str) -> str:
    """The row of a FedAvg variant: `fedavg`, `fedavg+dp`, `fedavg+secagg`."""
    return FEDAVG if variant == "plain" else f"{FEDAVG}+{variant}"


@dataclass(frozen=True)
class DeviceData:
    """The audit's common data (whole training set, common evaluation split, the attacker's public
    rows), per device its evaluation weights for its own distribution, and the cross-device attacker's
    membership settings built so far (every row over the same devices reuses its reference networks)."""

    data: EvalData
    public: PublicData
    own_weights: list[np.ndarray]
    membership_settings: dict[str, MembershipSetting] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        """How many devices share the training set."""
        return len(self.own_weights)


def device_data(data: EvalData, public: PublicData, devices: int) -> DeviceData:
    """`data` (over the whole training set) with each device's own-distribution weights."""
    if data.metric.key != "accuracy":
        raise UserInputError("--devices N > 1 audits classification tasks (a device's own distribution is its "
                             "label shares)")
    n_classes = len(data.task.labels)
    shares = [device_share(replace(data.config, devices=devices, device_index=i, flip_labels=False), data.train,
                           n_classes) for i in range(devices)]
    return DeviceData(data, public, [own_distribution_weights(np.array([e.label for e in share]), data.labels,
                                                              n_classes) for share in shares])


def device_configs(config: Any, name: str, mechanism: str, epsilon: float | None, mode: str | None = None,
                   flipped: frozenset[int] = frozenset()) -> list[FinetuneConfig]:
    """Every device's configuration of one row: the row's run settings with the device's index, its own
    work directory `<output>/rows/<row>/device_<i>`, its own mechanism seed, and its labels flipped
    for the devices in `flipped` (poisoning)."""
    base = row_finetune_config(config, name.replace(":", "_"), mechanism, epsilon, mode)
    return [replace(base, device_index=i, workdir=str(Path(base.workdir) / f"device_{i:03d}"),
                    mechanism_seed=config.seed + i, flip_labels=i in flipped) for i in range(config.devices)]


def with_curious_attacker(configs: list[FinetuneConfig]) -> list[FinetuneConfig]:
    """`configs` with device `ATTACKER` keeping the shared model as it received it (before its safeguard, which
    still decides what it deploys): the copy its cross-device membership attacks (`row_membership`)."""
    return [replace(c, keep_received_model=True) if c.device_index == ATTACKER else c for c in configs]


def device_record(index: int, deployed: SampleScores, weights: np.ndarray, summary: RunSummary | None) -> dict:
    """One device's utility on the common split and on its own distribution, and its costs."""
    record = {"device": index, "accuracy": deployed.value(), "own_accuracy": float(weights @ deployed.total)}
    if summary is None:  # zero-shot: nothing trained, nothing sent
        return {**record, "n_train": 0, **{k: 0.0 for k in COST_FIGURES}, "safeguard": None}
    guard = summary.safeguard
    return {**record, "n_train": summary.n_train, **{k: float(getattr(summary, k)) for k in COST_FIGURES},
            "safeguard": None if not guard else guard["action"]}


def scored(summaries: list[RunSummary], shared: DeviceData) -> tuple[list[dict], list[dict]]:
    """(zero-shot records, deployed records) of every device's run, on the common evaluation split."""
    zero, deployed = [], []
    for index, summary in enumerate(summaries):
        backbone, model = shared.data.scores(summary)
        zero.append(device_record(index, backbone, shared.own_weights[index], None))
        deployed.append(device_record(index, model, shared.own_weights[index], summary))
    return zero, deployed


def row_entry(name: str, records: list[dict], server_seconds: float | None, **extra: Any) -> dict[str, Any]:
    """A finished row before its statistics (`secure_assist.audit.many_devices.row_statistics`)."""
    return {"variant": name, "status": "ok", "per_device": jsonable(records), "server_seconds": server_seconds,
            **extra}


def skipped(name: str, reason: str) -> dict[str, Any]:
    """A row that could not run here, and why."""
    return {"variant": name, "status": "skipped", "reason": reason}


def reference_rows(config: Any, shared: DeviceData, progress: bool) -> list[dict[str, Any]]:
    """`zero_shot` and `device_local`: every device trains on its own share alone, nothing uploaded."""
    with sharing_backbones():  # every simulated device runs the same frozen backbone
        summaries = [run_training(c, progress=False, overwrite=True)
                     for c in tqdm(device_configs(config, DEVICE_LOCAL, "none", None, mode=DEVICE_LOCAL),
                                   desc="device_local: devices", unit="device", disable=not progress)]
    zero, local = scored(summaries, shared)
    return [row_entry(ZERO_SHOT, zero, None), row_entry(DEVICE_LOCAL, local, None)]


def engine(family: str) -> Callable[..., Any] | str:
    """The engine function of a row family, or why it is not available here."""
    module, function = ENGINES[family]
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        return f"the {family} engine ({module}.{function}) is not available here: {exc}"


def device_leaks(names: list[str], summaries: list[RunSummary], configs: list[FinetuneConfig], shared: DeviceData,
                 attack_samples: int | None, progress: bool) -> dict[str, Any]:
    """Today's server-side attacks on each device's own server view: per device its best label leak and
    best activations-only leak, and over devices the spread of each (and of each attack's headline)."""
    data = shared.data
    point = PointData(data.task, data.train, data.evaluate, shared.public)
    per_device, by_attack = [], {}
    for index, (summary, config) in enumerate(tqdm(list(zip(summaries, configs)), desc="attacks: devices",
                                                   unit="device", disable=not progress)):
        rows, uploads = attack_rows(names, Path(config.workdir), point, config, False, attack_samples, data.evaluate,
                                    Path(summary.server_view))
        leaks = [r for r in rows if r["status"] == "ok" and r["kind"] == LABELS]
        best = max(leaks, key=lambda r: r[LEAK_METRIC], default=None)
        only = max((r for r in leaks if r["activations_only"]), key=lambda r: r[LEAK_METRIC], default=None)
        for r in leaks:
            by_attack.setdefault(r["attack"], []).append(r[LEAK_METRIC])
        per_device.append({"device": index, "server_view": summary.server_view, "uploads": uploads,
                           "best_attack": best and best["attack"],
                           "best": best and best[LEAK_METRIC], "best_ci95": best and best[LEAK_METRIC + "_ci95"],
                           "activations_only_attack": only and only["attack"],
                           "activations_only": only and only[LEAK_METRIC],
                           "chance": best and best["balanced_chance"]})
    return {"metric": LEAK_METRIC, "per_device": jsonable(per_device), "by_attack": by_attack}


def row_membership(config: Any, configs: list[FinetuneConfig], summaries: list[RunSummary], shared: DeviceData,
                   attacks: list[str], progress: bool) -> dict[str, Any]:
    """Cross-device membership of a row whose devices share a model: device `ATTACKER`, curious, attacks the
    other devices' samples through the shared model as it received it, before its safeguard
    (`with_curious_attacker`; `secure_assist.devices.cross_membership`), with the audit's membership attacks and
    reference count; 'not_measured' without them."""
    names = membership_attacks(attacks)
    if not names or not config.membership_references:
        return {"status": "not_measured", "reason": "no membership attack configured (--attacks, "
                                                    "--membership-references)"}
    received = summaries[ATTACKER].received_model_file
    if received is None:
        raise ValueError("the attacker device's run kept no received model: build the row's configs with "
                         "with_curious_attacker")
    report = cross_device_membership(configs[ATTACKER], received,
                                     device_trained_texts([c.workdir for c in configs]),
                                     references=config.membership_references, attacks=names, public=shared.public,
                                     progress=progress, settings=shared.membership_settings)
    return {"status": "ok", "model": "the shared model as the attacker device received it (before its safeguard)",
            **jsonable(report)}


def pooled_row(config: Any, variant: Variant, shared: DeviceData, attacks: list[str], progress: bool) -> dict:
    """One pooled row: every device uploads under the variant's mechanism into its own namespace, the server
    trains one side network over the pool, each device deploys it behind its own safeguard; then the
    server-side attacks on each device's view."""
    name = pooled_row_name(variant)
    configs = with_curious_attacker(device_configs(config, name, variant.mechanism, variant.epsilon))  # run_pooled sets the mode
    run_pooled = engine(POOLED)
    if isinstance(run_pooled, str):
        return skipped(name, run_pooled)
    try:
        outcome = run_pooled(configs, progress=progress, overwrite=True)
    except UserInputError as exc:  # e.g. a mechanism that does not pool (he_ckks): refused before any device works
        return skipped(name, str(exc))
    _, deployed = scored(outcome.summaries, shared)
    leak = device_leaks(attacks, outcome.summaries, configs, shared, config.attack_samples, progress) if attacks \
        else None
    return row_entry(name, deployed, outcome.server_seconds, mechanism=variant.mechanism, epsilon=variant.epsilon,
                     leak=leak, membership=row_membership(config, configs, outcome.summaries, shared, attacks,
                                                          progress))


def fedavg_row(config: Any, variant: str, shared: DeviceData, attacks: list[str], progress: bool) -> dict[str, Any]:
    """One FedAvg row (variant plain, dp or secagg): Flower averages the devices' side networks; each
    device deploys the final global model behind its own safeguard."""
    name = fedavg_row_name(variant)
    run_fedavg = engine(FEDAVG)
    if isinstance(run_fedavg, str):
        return skipped(name, run_fedavg)
    from secure_assist.federated.settings import FedAvgSettings  # present whenever run_fedavg is

    configs = with_curious_attacker(device_configs(config, name, "none", None))
    settings = FedAvgSettings(variant=variant)
    outcome = run_fedavg(configs, settings, progress=progress, overwrite=True)
    _, deployed = scored(outcome.summaries, shared)
    return row_entry(name, deployed, outcome.server_seconds, accounting=jsonable(outcome.accounting), leak=None,
                     update_leak=update_leak(outcome, configs[0], settings, shared, progress),
                     membership=row_membership(config, configs, outcome.summaries, shared, attacks, progress))


def update_leak(outcome: Any, config: FinetuneConfig, settings: Any, shared: DeviceData,
                progress: bool) -> dict[str, Any]:
    """The FedAvg server's attack on what it saw (`attacks.fedavg_updates`: each device's label shares from
    its updates, or the pool's under SecAgg), scored against the devices' true label shares: mean total
    variation over devices, beside the prior-only guess's (every device holds the pool's shares)."""
    from attacks.fedavg_updates import fedavg_update_leak  # with the federated engine only

    data = shared.data
    public = knowledge(config.model, data.task, shared.public, [], config.seed, progress,
                       private_pool=[e.text for e in data.train])
    layers = load_finetuned(outcome.summaries[0].model_file).layers
    return jsonable(fedavg_update_leak(outcome.updates_dir, outcome.label_counts(len(data.task.labels)), public,
                                       layers, config.server_training(), settings.local_epochs, config.seed))


def poisoning_families(config: Any) -> list[str]:
    """The engines a poisoning section runs: pooled, and FedAvg when the audit has FedAvg rows."""
    return [POOLED] + ([FEDAVG] if config.fedavg else [])


def poisoning_rows(config: Any, progress: bool) -> list[dict[str, Any]]:
    """One label-flipping device (device `POISONER`) against pooled plain and (with FedAvg rows) FedAvg
    plain: the honest devices' accuracy clean and poisoned, paired per honest device
    (`secure_assist.devices.poisoning`)."""
    base = row_finetune_config(config, "poisoning", "none", None)
    rows = []
    for family in poisoning_families(config):  # each engine's plain row: run_pooled's and run_fedavg's defaults
        name = f"poisoning:{family}"
        run = engine(family)
        if isinstance(run, str):
            rows.append(skipped(name, run))
            continue
        effect = poisoning_effect(base, lambda configs: run(configs, progress=progress, overwrite=True).summaries,
                                  Path(base.workdir) / family, POISONER, config.seed)
        rows.append({"variant": name, "status": "ok", **jsonable(effect)})
    return rows
