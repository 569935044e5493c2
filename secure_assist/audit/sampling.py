"""A seed-fixed subsample of a server view, for the attacks too slow to run on every upload.

Reconstruction attacks cost per uploaded sample (nearest-embedding search over the
vocabulary for every layer, a logit lens per layer); on 2,000 uploads they would dominate
an audit. They read a `SampledView` of `attack_samples` uploads instead, and their
metrics carry bootstrap CIs over that subsample. The view is the same server view with
every other sample's rows removed from each inbound per-sample message: the attack
still sees only what the server saw.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from attacks.base import hex_ids
from protocol.transcript import INBOUND, RecordedMessage, ServerView


def sample_ids(ids: list[str], count: int, seed: int) -> frozenset[str]:
    """`count` of the sample ids (all of them when there are fewer), seed-fixed."""
    if len(ids) <= count:
        return frozenset(ids)
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return frozenset(ids[i] for i in chosen)


class SampledView(ServerView):
    """The server view restricted to the uploads of `keep` (hex sample ids)."""

    def __init__(self, workdir: Path | str, keep: frozenset[str]) -> None:
        super().__init__(workdir)
        self.keep = keep

    def messages(self) -> Iterator[RecordedMessage]:
        """Every recorded message; inbound per-sample ones hold only the kept samples' rows."""
        for record in super().messages():
            message = record.message
            ids = getattr(message, "sample_ids", None)
            if record.direction != INBOUND or not isinstance(ids, np.ndarray) or ids.ndim != 2:
                yield record
                continue
            mask = np.array([sid in self.keep for sid in hex_ids(ids)])
            # Per-sample fields are the (n, ...) arrays of two or more dimensions (ids, activations,
            # Δ, masks, gradients); one-dimensional ones (e.g. a ciphertext blob) are not per sample.
            rows = {item.name: getattr(message, item.name)[mask] for item in dataclasses.fields(message)
                    if isinstance(value := getattr(message, item.name), np.ndarray) and value.ndim >= 2
                    and value.shape[0] == len(ids)}
            yield RecordedMessage(record.direction, dataclasses.replace(message, **rows), record.size)
