"""The many-device audit (`secure-assist audit --devices N --partition P`, N > 1): every row of
`secure_assist.audit.device_rows`, its statistics over devices, and the report.

Per row: each device's accuracy on the common evaluation split and on its own distribution (mean,
10th percentile, minimum over devices), what the server buys per device over `device_local` (paired
per device, CI by bootstrap over devices: `secure_assist.audit.device_stats`), the cost per device
(bytes up and down, device seconds: mean and max) and the server's seconds, and for the pooled rows
the server-side attacks on each device's view. A finished row is written to
`<output>/device_rows/<row>.json` at once and read back by a rerun of the same configuration,
so a crash loses at most the row in progress.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from protocol.device.shared_forwards import serving
from protocol.errors import UserInputError
from protocol.files import write_atomic
from secure_assist.audit.config import AuditConfig, audit_variants, fingerprint
from secure_assist.audit.device_rows import (
    COST_FIGURES, DeviceData, device_configs, device_data, fedavg_row, fedavg_row_name, poisoning_families, poisoning_rows, pooled_row,
    pooled_row_name, reference_rows,
)
from secure_assist.audit.device_stats import paired_gain, spread
from secure_assist.audit.rows import DEVICE_LOCAL, ZERO_SHOT
from secure_assist.audit.schema import DEVICE_SCHEMA, DEVICE_SCHEMA_VERSION, jsonable, package_versions
from secure_assist.devices.partition import Partition
from secure_assist.training.forwards import forwards_summary, share_forwards

ROWS_DIR = "device_rows"
# What a stored row's figures mean for the same run settings. Bump it when code changes the meaning of a figure, so
# that rows stored before are recomputed instead of read back with their old meaning. 2: the membership column
# attacks the shared model as the curious device received it, not as its safeguard deployed it (commit 3b5e163).
ROW_MEANING = 2
# The two evaluation splits every device is scored on: the row's per-device key of each.
SPLITS = {"common": "accuracy", "own": "own_accuracy"}
# The poisoning section of an audit run without --poisoning.
NO_POISONING = [{"variant": "poisoning", "status": "not_measured", "reason": "not asked for (--poisoning)"}]


def check_devices(config: AuditConfig) -> None:
    """One-line errors for a partition or a device count that cannot work, before anything runs."""
    partition = Partition.parse(config.partition)
    n_train = config.train_samples
    if n_train is not None and config.devices > n_train:
        raise UserInputError(f"--devices {config.devices} is more than the {n_train} training samples "
                             f"(each device needs at least one)")
    device_configs(config, DEVICE_LOCAL, "none", None)  # every device's run settings are valid
    if partition.needs_labels and config.task == "generation":
        raise UserInputError(f"--partition {partition} splits by label: it needs a classification task")


def row_statistics(row: dict[str, Any], local: dict[str, Any], seed: int) -> dict[str, Any]:
    """The row with its statistics over devices: utility on both splits, the paired gain over
    `device_local` on both, cost per device, and the spread of its leaks over devices."""
    if row["status"] != "ok":
        return row
    devices, reference = row["per_device"], local["per_device"]
    row["utility"] = {split: spread([d[key] for d in devices]) for split, key in SPLITS.items()}
    row["gain_vs_device_local"] = {split: paired_gain([d[key] for d in devices], [d[key] for d in reference], seed)
                                   for split, key in SPLITS.items()}
    row["cost"] = {**{figure: spread([d[figure] for d in devices]) for figure in COST_FIGURES},
                   "server_seconds": row["server_seconds"]}
    leak = row.get("leak")
    if leak is not None:
        best = [d["best"] for d in leak["per_device"] if d["best"] is not None]
        only = [d["activations_only"] for d in leak["per_device"] if d["activations_only"] is not None]
        leak["best"] = spread(best) if best else None
        leak["activations_only_baseline"] = spread(only) if only else None
        leak["over_activations_only"] = paired_gain(best, only, seed) if best and len(best) == len(only) else None
        leak["attacks"] = {name: spread(values) for name, values in leak.pop("by_attack", {}).items()}
    return row


class RowStore:
    """Finished rows on disk, `<output>/device_rows/<row>.json`, each tagged with the config's fingerprint and the
    rows' meaning (`ROW_MEANING`): a rerun of the same audit by code that computes the same figures reads them back
    instead of recomputing."""

    def __init__(self, output: Path, config_fingerprint: str) -> None:
        self.folder = output / ROWS_DIR
        self.fingerprint = config_fingerprint

    def path(self, name: str) -> Path:
        """Where row `name` is kept."""
        return self.folder / f"{name.replace(':', '_')}.json"

    def load(self, name: str) -> dict[str, Any] | None:
        """The saved row, or None when absent, unreadable, another config's, of another meaning or not finished."""
        try:
            saved = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint
                or saved.get("row_meaning") != ROW_MEANING):
            return None
        row = saved.get("row")
        return row if isinstance(row, dict) and row.get("status") == "ok" else None

    def save(self, row: dict[str, Any]) -> None:
        """Keep a finished row (atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(row["variant"]),
                     json.dumps({"fingerprint": self.fingerprint, "row_meaning": ROW_MEANING, "row": row},
                                indent=1).encode("utf-8"))


def row_store(config: AuditConfig) -> RowStore:
    """The finished rows of `config`'s audit. A row is named by what it runs (`pooled:label_rr@4`, `fedavg+dp`), so
    which rows are asked for (--variants, --fedavg) and --poisoning (a section of its own) change no row: an audit
    that adds or drops rows reads the finished ones back."""
    return RowStore(Path(config.output), fingerprint(replace(config, poisoning=False, variants=(), fedavg=())))


def cached(store: RowStore, names: list[str], produce: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows `names` from `store` when all are there, else `produce()`d and each finished one saved."""
    saved = [store.load(n) for n in names]
    if all(saved):
        return saved
    rows = produce()
    for row in rows:
        if row["status"] == "ok":
            store.save(row)
    return rows


def device_rows(config: AuditConfig, shared: DeviceData, attacks: list[str], progress: bool,
                store: RowStore) -> list[dict[str, Any]]:
    """Every row of a many-device audit (each saved to `store` as soon as it is done), with statistics."""
    references = cached(store, [ZERO_SHOT, DEVICE_LOCAL], lambda: reference_rows(config, shared, progress))
    produced = [lambda v=v: [pooled_row(config, v, shared, attacks, progress)] for v in audit_variants(config)]
    produced += [lambda v=v: [fedavg_row(config, v, shared, attacks, progress)] for v in config.fedavg]
    names = [pooled_row_name(v) for v in audit_variants(config)] + [fedavg_row_name(v) for v in config.fedavg]
    rows = references + [row for name, produce in zip(names, produced) for row in cached(store, [name], produce)]
    local = rows[1]
    for row in rows:
        row_statistics(row, local, config.seed)
        if row["status"] == "ok":
            row.setdefault("membership", {"status": "not_applicable", "reason": "no model shared between devices"})
    return rows


def device_section(config: AuditConfig, data_inputs: tuple[Any, Any, dict[str, Any]], attacks: list[str],
                   progress: bool = True) -> dict[str, Any]:
    """The many-device rows of `config` (over the whole training set's `data_inputs`: (EvalData,
    PublicData, provenance) from `runner.audit_inputs`, with the server-side `attacks`), the poisoning
    section and the shared forwards: what `audit` reports and `compare --devices` puts beside its points."""
    data, public, _ = data_inputs
    shared = device_data(data, public, config.devices)
    tables = share_forwards([data.config], progress)
    store = row_store(config)
    with serving(tables):
        rows = device_rows(config, shared, attacks, progress, store)
        poisoning = cached(store, [f"poisoning:{family}" for family in poisoning_families(config)],
                           lambda: poisoning_rows(config, progress)) if config.poisoning else NO_POISONING
    return {"devices": config.devices, "partition": config.partition, "rows": rows, "poisoning": poisoning,
            "shared_forwards": forwards_summary(tables)}


def run_device_audit(config: AuditConfig, data_inputs: tuple[Any, Any, dict[str, Any]], attacks: list[str],
                     progress: bool = True) -> dict[str, Any]:
    """The many-device audit's JSON report (see `device_section`). `check_devices(config)` first: its
    errors should come before the data is read."""
    start = time.perf_counter()
    report = {
        "schema": DEVICE_SCHEMA, "schema_version": DEVICE_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": jsonable({**asdict(config), "variants": [v.label for v in audit_variants(config)]}),
        "config_fingerprint": fingerprint(config), "seed": config.seed, "package_versions": package_versions(),
        "data": jsonable(data_inputs[2]), **device_section(config, data_inputs, attacks, progress),
    }
    report["wall_seconds"] = time.perf_counter() - start
    return report
