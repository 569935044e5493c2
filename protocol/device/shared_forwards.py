"""Device forward passes computed once and served to many runs.

A sweep or an audit runs many fine-tunings over the same data: every point of a sweep
and every variant of an audit needs the device's pivot activations and label logits of
its training and evaluation examples. Their example lists differ (sample-size axes take
prefixes, runs evaluate on their own splits), so the disk cache of
`protocol.device.features`, keyed by the set of texts of each dataset, would forward the
same texts again for each distinct set. A `SharedForwards` table instead holds one row per distinct text for one
device configuration (backbone, task and prompt, layers, payload dtype), computed once;
a `ForwardCachingDevice` running inside `serving(tables)` reads the rows the table holds
from it instead of the backbone, in any order and any subset.

Memory: `nbytes` = rows × layers × hidden size × payload bytes + rows × classes × 4, held
once per process (or once per node, read without copying, in Ray's object store); a run
that reads rows gets float32 copies of the rows it asked for only. The table is
device-side state (activations and label logits of the device's own data); it never
goes to the server.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterable, Iterator

import numpy as np
import torch

from protocol.device.forward_device import DeviceRole, PivotBatch
from protocol.data.tasks import Example


def device_spec(device: DeviceRole) -> dict[str, object]:
    """What a device's forward outputs depend on besides the text."""
    return {"backbone": device.backbone.name, "task": asdict(device.task), "layers": list(device.layers),
            "payload_dtype": device.payload_dtype}


def spec_key(device: DeviceRole) -> str:
    """sha256 of `device_spec`: the table a device may read from."""
    return hashlib.sha256(json.dumps(device_spec(device), sort_keys=True).encode()).hexdigest()


class SharedForwards:
    """One device configuration's forward outputs, one row per distinct text."""

    def __init__(self, spec: str, texts: list[str], activations: np.ndarray, label_logits: np.ndarray,
                 seconds_per_forward: float, computed: int) -> None:
        if not (len(texts) == activations.shape[0] == label_logits.shape[0]) or len(set(texts)) != len(texts):
            raise ValueError("a shared forward table needs one row per distinct text")
        self.spec = spec
        self.texts = texts
        self.activations = activations  # (n, layers, d) in the payload dtype: the values the device uploads
        self.label_logits = label_logits  # (n, C) float32
        self.seconds_per_forward = seconds_per_forward  # measured when the rows were computed
        self.computed = computed  # rows forwarded when this table was built (0: read from the disk cache)
        self._rows = {text: row for row, text in enumerate(texts)}

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the memory bound of one copy)."""
        return int(self.activations.nbytes + self.label_logits.nbytes)

    def holds(self, text: str) -> bool:
        """Whether the table has a row for `text`."""
        return text in self._rows

    def pivots(self, examples: list[Example]) -> PivotBatch | None:
        """The rows of `examples` in their order, or None when a text is not in the table."""
        rows = [self._rows.get(e.text) for e in examples]
        if any(row is None for row in rows):
            return None
        index = np.asarray(rows, dtype=np.int64)
        return PivotBatch(activations=torch.from_numpy(self.activations[index].astype(np.float32)),
                          label_logits=torch.from_numpy(self.label_logits[index].astype(np.float32)))


_SERVED: dict[str, SharedForwards] = {}


@contextmanager
def serving(tables: Iterable[SharedForwards]) -> Iterator[None]:
    """Within the block, forward-caching devices of this process read these tables."""
    previous = dict(_SERVED)
    _SERVED.update({table.spec: table for table in tables})
    try:
        yield
    finally:
        _SERVED.clear()
        _SERVED.update(previous)


def served_table(device: DeviceRole) -> SharedForwards | None:
    """The served table of `device`'s configuration, if any."""
    return _SERVED.get(spec_key(device)) if _SERVED else None
