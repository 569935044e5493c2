"""Server views as the audit reads them: decoded once, and optionally a seed-fixed subsample.

An audit runs a dozen attacks on each variant's view; decoding and validating the whole
transcript for each of them would cost more than most attacks. `memory_view` decodes a
view once and serves its messages from memory (the last two views are kept).

Reconstruction attacks cost per uploaded sample (nearest-embedding search over the
vocabulary for every layer, a logit lens per layer); on 2,000 uploads they would dominate
an audit. They read a view restricted to `attack_samples` uploads instead, and their
metrics carry bootstrap CIs over that subsample. The restricted view is the same server
view with every other sample's rows removed from each inbound per-sample message: the
attack still sees only what the server saw.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from attacks.base import hex_ids
from protocol.server.transcript import INBOUND, TRANSCRIPT_FILE, RecordedMessage, ServerView


def sample_ids(ids: list[str], count: int, seed: int) -> frozenset[str]:
    """`count` of the sample ids (all of them when there are fewer), seed-fixed."""
    if len(ids) <= count:
        return frozenset(ids)
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    return frozenset(ids[i] for i in chosen)


def restricted(records: Iterable[RecordedMessage], keep: frozenset[str]) -> Iterator[RecordedMessage]:
    """The records with inbound per-sample messages cut to the uploads of `keep` (hex sample ids)."""
    for record in records:
        message = record.message
        ids = getattr(message, "sample_ids", None)
        if record.direction != INBOUND or not isinstance(ids, np.ndarray) or ids.ndim != 2:
            yield record
            continue
        mask = np.array([sid in keep for sid in hex_ids(ids)])
        if hasattr(message, "sample_rows"):  # several rows per sample (generation: one per loss position)
            yield RecordedMessage(record.direction, _kept_rows(message, mask), record.size)
            continue
        # Per-sample fields are the (n, ...) arrays of two or more dimensions (ids, activations,
        # Δ, masks, gradients); one-dimensional ones (e.g. a ciphertext blob) are not per sample.
        rows = {item.name: getattr(message, item.name)[mask] for item in dataclasses.fields(message)
                if isinstance(value := getattr(message, item.name), np.ndarray) and value.ndim >= 2
                and value.shape[0] == len(ids)}
        yield RecordedMessage(record.direction, dataclasses.replace(message, **rows), record.size)


def _kept_rows(message: object, mask: np.ndarray) -> object:
    """A message whose samples own `sample_rows()` rows, cut to the samples of `mask`: per-sample
    fields by sample, per-row fields (as many rows as all samples own) by row."""
    spans = message.sample_rows()
    n_rows = spans[-1].stop if spans else 0
    kept = [np.arange(span.start, span.stop) for span, chosen in zip(spans, mask) if chosen]
    rows = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    cut = {}
    for item in dataclasses.fields(message):
        value = getattr(message, item.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == len(mask):
            cut[item.name] = value[mask]
        elif isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_rows:
            cut[item.name] = value[rows]
    return dataclasses.replace(message, **cut)


class MemoryView(ServerView):
    """A server view decoded once (restricted to the uploads of `keep` when given)."""

    def __init__(self, workdir: Path | str, keep: frozenset[str] | None = None) -> None:
        super().__init__(workdir)
        records = super().messages()
        self._records = list(records if keep is None else restricted(records, keep))

    def messages(self) -> Iterator[RecordedMessage]:
        """Every recorded message, from memory."""
        return iter(self._records)


@lru_cache(maxsize=2)
def _memory_view(workdir: str, size: int, modified: int, keep: frozenset[str] | None) -> MemoryView:
    return MemoryView(workdir, keep)


def memory_view(workdir: Path | str, keep: frozenset[str] | None = None) -> MemoryView:
    """The view of `workdir`, decoded once per content (the transcript's size and time are part of the key)."""
    transcript = Path(workdir) / TRANSCRIPT_FILE
    if not transcript.is_file():
        return MemoryView(workdir, keep)  # ServerView's own error: no transcript here
    stat = transcript.stat()
    return _memory_view(str(workdir), stat.st_size, stat.st_mtime_ns, keep)
