"""A server view whose pivot states an alignment attack has rotated back: X·R̂ᵀ per layer.

Every attack that reads states in the public backbone's coordinates runs unchanged on it,
which is how the audit measures "every activations-only attack on the realigned states".
Nothing else in the view changes: Δ, φ and the side files are as the server holds them;
`estimated_rotation` hands R̂ to the attacks that need it itself (the model copy φ∘R̂).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from protocol.model.input_maps import unrotate
from protocol.server.transcript import RecordedMessage, ServerView


class RealignedView(ServerView):
    """`view` with every pivot upload's activations multiplied by R̂ᵀ, layer by layer.

    `samples` caps the pivot uploads it shows (the first ones, each sample once): attacks
    re-run on realigned states cost per sample, and their CIs say what the cap costs."""

    def __init__(self, view: ServerView, rotation: np.ndarray, aligner: str, samples: int | None = None) -> None:
        super().__init__(view.workdir)
        self.rotation = np.asarray(rotation, dtype=np.float32)
        self.aligner = aligner
        self.samples = samples

    def messages(self) -> Iterator[RecordedMessage]:
        shown: set[bytes] = set()
        for record in super().messages():
            message = record.message
            activations = getattr(message, "activations", None)
            if not (isinstance(activations, np.ndarray) and activations.ndim == 3
                    and activations.shape[1:] == self.rotation.shape[:2]):
                yield record
                continue
            keep = []
            for row, sample_id in enumerate(bytes(i) for i in message.sample_ids):
                if sample_id not in shown and (self.samples is None or len(shown) < self.samples):
                    shown.add(sample_id)
                    keep.append(row)
            if not keep:
                continue
            fields = {"sample_ids": message.sample_ids[keep], "activations": unrotate(activations[keep], self.rotation)}
            delta = getattr(message, "delta", None)
            if isinstance(delta, np.ndarray) and len(delta) == len(activations):
                fields["delta"] = delta[keep]
            yield RecordedMessage(record.direction, dataclasses.replace(message, **fields), record.size)


def estimated_rotation(view: ServerView) -> np.ndarray | None:
    """The attacker's R̂ behind a realigned view, None for a view as received."""
    return view.rotation if isinstance(view, RealignedView) else None
