"""The device forward passes of a whole sweep or audit, computed once before any run.

`share_forwards` groups the runs by device configuration and forwards the union of
their training and evaluation texts once per group (through the device-side disk cache,
so a restarted sweep reads them back instead of forwarding again). Every run then reads
its rows inside `protocol.device.shared_forwards.serving`, whichever executor runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from protocol.model.backbone import Backbone, load_backbone
from protocol.device.forward_device import PAYLOAD_DTYPES, DeviceRole
from protocol.device.features import cached_or_computed
from protocol.device.shared_forwards import SharedForwards, serving, spec_key
from protocol.data.tasks import Example
from secure_assist.config import FinetuneConfig
from secure_assist.data import resolve_data


def share_forwards(configs: Iterable[FinetuneConfig], progress: bool = True) -> list[SharedForwards]:
    """One table per device configuration among `configs` (those that reuse forwards):
    the forward outputs of every text any of them trains, holds out or evaluates on."""
    backbones: dict[str, Backbone] = {}
    groups: dict[str, tuple[DeviceRole, dict[str, Example]]] = {}
    for config in configs:
        if not config.reuse_forwards:
            continue
        task, train, evaluate = resolve_data(config)
        if config.model not in backbones:
            backbones[config.model] = load_backbone(config.model)
        device = DeviceRole(backbones[config.model], task, layers=config.layers, payload_dtype=config.payload_dtype,
                            batch_size=config.device_batch_size, progress=progress)
        _, texts = groups.setdefault(spec_key(device), (device, {}))
        for example in train + evaluate:
            texts.setdefault(example.text, example)  # a text's forward does not depend on its label
    tables = []
    for spec, (device, texts) in groups.items():
        examples = list(texts.values())
        pivots, seconds = cached_or_computed(device, examples)
        seconds = device.forward_seconds if seconds is None else seconds
        tables.append(SharedForwards(
            spec, [e.text for e in examples], pivots.activations.numpy().astype(PAYLOAD_DTYPES[device.payload_dtype]),
            pivots.label_logits.numpy(), seconds / len(examples), computed=device.forward_samples))
    return tables


@dataclass(frozen=True)
class WithForwards:
    """The task body of sweeps and audits: `work(*args)` while `tables` are served, so the
    work function itself is the same whichever executor runs it."""

    work: Callable[..., Any]

    def __call__(self, args: tuple[Any, ...], tables: list[SharedForwards]) -> Any:
        with serving(tables):
            return self.work(*args)


def forwards_summary(tables: list[SharedForwards]) -> dict[str, Any]:
    """Device forwards computed for the whole sweep (0 when read back), rows, bytes held, seconds."""
    return {"computed": sum(t.computed for t in tables), "rows": sum(len(t.texts) for t in tables),
            "bytes": sum(t.nbytes for t in tables), "seconds": sum(t.seconds_per_forward * t.computed for t in tables)}
