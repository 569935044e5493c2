"""Helpers that write synthetic server views (transcripts) and ground truth for attack tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from protocol.wire.messages import Message, encode_message
from protocol.server.transcript import INBOUND, TranscriptWriter

SERVER, DEVICE = "server", "device"


def write_view(workdir: Path, messages: list[Message]) -> None:
    """Record `messages` as inbound traffic of a server whose view is `workdir/server`."""
    writer = TranscriptWriter(workdir / SERVER)
    for message in messages:
        writer.record(INBOUND, encode_message(message))
    writer.close()


def write_truth(workdir: Path, ids: np.ndarray, labels: list[int], texts: list[str]) -> None:
    """The device's ground truth for the auditor."""
    path = workdir / DEVICE / "ground_truth.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"sample_id": bytes(i).hex(), "label": int(y), "text": t}) + "\n"
                            for i, y, t in zip(ids, labels, texts)))


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    """Distinct 16-byte sample ids."""
    return np.random.default_rng(seed).integers(0, 256, (n, 16), dtype=np.uint8)
