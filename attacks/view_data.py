"""Fields an attack can pull out of a server view, whatever protocol or mechanism wrote it.

Reading is duck-typed over the inbound messages: any message with `sample_ids` and
per-sample pivot `activations` (n, layers, d) is a pivot upload, one with (n, L, T, d)
activations is a full-activation upload (MobiLLM-style), and split-learning records
carry their own field names. A field a mechanism replaced (e.g. an encrypted Δ) is
simply absent, and the attack that needs it raises `MissingViewField`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import Attack, hex_ids


from protocol.server.transcript import INBOUND, ServerView


@dataclass
class PivotData:
    """Per-sample pivot uploads in arrival order (first copy of each sample id)."""

    sample_ids: list[str]
    activations: np.ndarray  # float32 (n, len(layers), d)
    layers: tuple[int, ...]
    delta: np.ndarray | None  # float32 (n, C) when the view holds a plaintext Δ

    def layer(self, attack: Attack, number: int) -> np.ndarray:
        """Activations of one backbone layer, or the typed error if it was not uploaded."""
        if number not in self.layers:
            raise attack.lacks(f"activations of layer {number}, which the device did not upload")
        return self.activations[:, self.layers.index(number)]


def layer_directions(activations: np.ndarray) -> np.ndarray:
    """Each layer's state scaled to unit norm: what an attack that compares states with the
    public backbone's should read when a mechanism may clip or rescale each layer's vector
    (activation_noise clips to its bound, int8 rounds on its own scale): directions survive."""
    return activations / np.linalg.norm(activations, axis=-1, keepdims=True).clip(1e-12)


def _plain_delta(message: object) -> np.ndarray | None:
    delta = getattr(message, "delta", None)
    if isinstance(delta, np.ndarray) and delta.ndim == 2 and delta.dtype.kind == "f":
        return delta.astype(np.float32)
    return None


def pivot_data(view: ServerView, attack: Attack, need_delta: bool = False) -> PivotData:
    """Pivot activations (and Δ when present) of every uploaded sample."""
    ids, acts, deltas, layers, seen = [], [], [], None, set()
    delta_everywhere = True
    for record in view.messages():
        message = record.message
        raw_ids, activations = getattr(message, "sample_ids", None), getattr(message, "activations", None)
        if (record.direction != INBOUND or raw_ids is None or activations is None or activations.ndim != 3
                or hasattr(message, "attention_mask")  # all-token uploads are not pivot uploads
                or hasattr(message, "counts")):  # nor are generation uploads (several positions per sample)
            continue
        layers = tuple(getattr(message, "layers", range(1, activations.shape[1] + 1)))
        delta = _plain_delta(message)
        delta_everywhere &= delta is not None
        for row, sample_id in enumerate(hex_ids(raw_ids)):
            if sample_id in seen:
                continue
            seen.add(sample_id)
            ids.append(sample_id)
            acts.append(activations[row].astype(np.float32))
            if delta is not None:
                deltas.append(delta[row])
    if not ids:
        raise attack.missing("pivot activations (no pivot upload in this view)")
    if need_delta and not delta_everywhere:
        raise attack.missing("delta (a plaintext prediction difference)")
    return PivotData(sample_ids=ids, activations=np.stack(acts), layers=layers,
                     delta=np.stack(deltas) if delta_everywhere else None)


@dataclass
class FullActivationData:
    """Per-token activations of every uploaded sample (first copy of each id)."""

    sample_ids: list[str]
    activations: list[np.ndarray]  # per sample (n_layers, n_tokens, d), real tokens only
    first_layer: int  # backbone layer number of activations[:, 0]


def full_activation_data(view: ServerView, attack: Attack) -> FullActivationData:
    """All-token activations from MobiLLM-style or split-learning uploads."""
    ids, acts, seen, first_layer = [], [], set(), 1
    for record in view.messages():
        message = record.message
        raw_ids, activations = getattr(message, "sample_ids", None), getattr(message, "activations", None)
        mask = getattr(message, "attention_mask", None)
        if record.direction != INBOUND or raw_ids is None or activations is None or mask is None:
            continue
        if activations.ndim == 3:  # split learning: one cut layer (n, T, d)
            activations = activations[:, None]
            first_layer = int(getattr(message, "cut_layer", 1))
        for row, sample_id in enumerate(hex_ids(raw_ids)):
            if sample_id in seen:
                continue
            seen.add(sample_id)
            ids.append(sample_id)
            acts.append(activations[row][:, mask[row].astype(bool)].astype(np.float32))
    if not ids:
        raise attack.missing("per-token activations (MobiLLM-style or split-learning uploads)")
    return FullActivationData(sample_ids=ids, activations=acts, first_layer=first_layer)


@dataclass
class GradientData:
    """Gradients the device sent the server (split learning), one pivot row per sample."""

    sample_ids: list[str]
    gradients: np.ndarray  # (n, d): the largest-norm position of each sample's gradient


def gradient_data(view: ServerView, attack: Attack) -> GradientData:
    """Per-sample output gradients the server received (first training epoch)."""
    ids, rows, seen = [], [], set()
    for record in view.messages():
        message = record.message
        grads = getattr(message, "output_gradients", None)
        raw_ids = getattr(message, "sample_ids", None)
        if record.direction != INBOUND or grads is None or raw_ids is None:
            continue
        # The loss reads only the pivot, so one position carries the whole gradient.
        norms = np.linalg.norm(grads.astype(np.float32), axis=-1)
        pivot = norms.argmax(axis=1)
        for row, sample_id in enumerate(hex_ids(raw_ids)):
            if sample_id in seen:
                continue
            seen.add(sample_id)
            ids.append(sample_id)
            rows.append(grads[row, pivot[row]].astype(np.float32))
    if not ids:
        raise attack.missing("output_gradients (only split learning sends gradients)")
    return GradientData(sample_ids=ids, gradients=np.stack(rows))



@dataclass
class AnswerData:
    """Generation uploads: every sample's loss-position rows, in arrival order (first copy of each id)."""

    sample_ids: list[str]
    counts: np.ndarray  # (n,) rows of each sample
    activations: np.ndarray  # float32 (sum counts, len(layers), d)
    layers: tuple[int, ...]
    residual: np.ndarray | None  # float32 (sum counts, d): r_t as received

    def sample_rows(self) -> list[slice]:
        """Each sample's rows."""
        ends = np.cumsum(self.counts)
        return [slice(int(e - c), int(e)) for e, c in zip(ends, self.counts)]

    def layer(self, attack: Attack, number: int) -> np.ndarray:
        """States of one backbone layer at every row, or the typed error if it was not uploaded."""
        if number not in self.layers:
            raise attack.lacks(f"activations of layer {number}, which the device did not upload")
        return self.activations[:, self.layers.index(number)]


def answer_data(view: ServerView, attack: Attack, need_residual: bool = False) -> AnswerData:
    """States (and r when present) at the loss positions of every generation upload."""
    ids, counts, acts, residual, layers, seen = [], [], [], [], None, set()
    for record in view.messages():
        message = record.message
        if record.direction != INBOUND or getattr(message, "counts", None) is None:
            continue
        layers = tuple(message.layers)
        for sample_id, rows in zip(hex_ids(message.sample_ids), message.sample_rows()):
            if sample_id in seen:
                continue
            seen.add(sample_id)
            ids.append(sample_id)
            counts.append(rows.stop - rows.start)
            acts.append(message.activations[rows].astype(np.float32))
            residual.append(message.residual[rows].astype(np.float32))
    if not ids:
        raise attack.missing("answer-position activations (no generation upload in this view)")
    return AnswerData(sample_ids=ids, counts=np.array(counts, np.int64), activations=np.concatenate(acts),
                      layers=layers, residual=np.concatenate(residual) if need_residual else None)
