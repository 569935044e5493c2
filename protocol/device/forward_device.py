"""The device role: inference-only forward passes, pivot activations, Δ, local prediction.

The device holds the data, the labels and the frozen backbone. It never runs autograd
and keeps no optimizer state: per sample it uploads one opaque random id, the pivot
activation of each selected layer and Δ = onehot(y) - softmax(z_b), where z_b are the
backbone's logits for the label words at the pivot (the last prompt token).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from protocol.model.backbone import Backbone
from protocol.wire.channel import Channel
from protocol.errors import UserInputError
from protocol.wire.messages import SAMPLE_ID_BYTES, Message, Upload, refreshed_targets
from protocol.data.tasks import Example, TaskSpec

PAYLOAD_DTYPES = {"float16": np.float16, "float32": np.float32}
MAX_PROMPT_TOKENS = 256


@dataclass
class PivotBatch:
    """What one inference pass yields for a batch of prompts."""

    activations: torch.Tensor  # (n, len(layers), d), float32, rounded to the payload dtype
    label_logits: torch.Tensor  # (n, C): z_b

    @staticmethod
    def concatenate(parts: list["PivotBatch"]) -> "PivotBatch":
        """One batch holding `parts` in order."""
        return PivotBatch(activations=torch.cat([p.activations for p in parts]),
                          label_logits=torch.cat([p.label_logits for p in parts]))


class UploadTransform(Protocol):
    """A device-side protection applied to each upload before it leaves the device.

    `transform` sees the plain upload plus the device-only labels and label logits and
    returns the messages to send instead (none, to hold samples back until `flush`).
    """

    def transform(self, upload: Upload, labels: np.ndarray, label_logits: np.ndarray) -> list[Message]:
        """The messages that replace `upload` on the wire."""

    def flush(self) -> list[Message]:
        """Messages still held back once every batch was transformed."""


def new_sample_ids(n: int) -> np.ndarray:
    """Opaque random ids (never derived from content)."""
    return np.frombuffer(secrets.token_bytes(n * SAMPLE_ID_BYTES), dtype=np.uint8).reshape(n, SAMPLE_ID_BYTES).copy()


def prediction_difference(label_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Δ = onehot(y) - softmax(z_b)."""
    onehot = torch.nn.functional.one_hot(labels, label_logits.shape[-1]).float()
    return onehot - torch.softmax(label_logits.float(), dim=-1)


def encode_prompts(backbone: Backbone, task: TaskSpec, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded token ids and attention mask of the prompts, on the backbone's device."""
    tokenizer = backbone.tokenizer
    # Truncate from the left so the pivot (end of the prompt) always survives.
    tokenizer.truncation_side = "left"
    return tokenizer([task.prompt(t) for t in texts], return_tensors="pt", padding=True,
                     truncation=True, max_length=MAX_PROMPT_TOKENS).to(backbone.device)


def pivot_outputs(backbone: Backbone, task: TaskSpec, texts: list[str], layers: tuple[int, ...],
                  label_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pivot hidden states of `layers` (n, len(layers), d) and label-word logits z_b (n, C).

    Runs under whatever autograd mode the caller chose (inference on the device,
    gradients for the local LoRA baseline).
    """
    encoded = encode_prompts(backbone, task, texts)
    # The base model skips the vocabulary projection of every position; the head is
    # applied at the pivot only, which keeps memory bounded.
    out = backbone.model.base_model(**encoded, output_hidden_states=True)
    pivot = encoded["attention_mask"].sum(dim=1) - 1
    rows = torch.arange(len(texts), device=pivot.device)
    states = torch.stack([out.hidden_states[i][rows, pivot] for i in layers], dim=1)
    head = backbone.model.get_output_embeddings()
    label_logits = head(out.hidden_states[-1][rows, pivot])[:, label_ids]
    return states, label_logits


class ForwardDevice:
    """What every device role shares: the frozen backbone, the uploaded layers and their
    payload dtype, batched inference passes with a progress bar, cost counters, and the
    protection transform every upload goes through. Subclasses define one pass
    (`run_batch`), the upload it yields (`make_upload`) and what the mechanisms see."""

    def __init__(self, backbone: Backbone, task: object, layers: tuple[int, ...] | None = None,
                 payload_dtype: str = "float16", batch_size: int = 16, progress: bool = True,
                 transform: UploadTransform | None = None) -> None:
        if payload_dtype not in PAYLOAD_DTYPES:
            raise UserInputError(f"payload dtype {payload_dtype!r} not in {sorted(PAYLOAD_DTYPES)}")
        if batch_size < 1:
            raise UserInputError("batch size must be at least 1")
        self.backbone = backbone
        self.task = task
        self.layers = layers or tuple(range(1, backbone.n_layers + 1))
        bad = [i for i in self.layers if not 1 <= i <= backbone.n_layers]
        if bad or len(set(self.layers)) != len(self.layers):
            raise UserInputError(f"layers {list(self.layers)} must be distinct and within 1..{backbone.n_layers}")
        self.payload_dtype = payload_dtype
        self.batch_size = batch_size
        self.progress = progress
        self.transform = transform
        self.forward_samples = 0
        self.forward_seconds = 0.0
        # Passes served from the device-side cache (protocol.device.features.ForwardCachingDevice)
        # and the seconds they took when they were computed.
        self.reused_forwards = 0
        self.reused_forward_seconds = 0.0

    def rounded(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 states rounded as the payload dtype sends them (the side output sees the same values)."""
        return states.to(torch.float16).float() if self.payload_dtype == "float16" else states.float()

    def run_batch(self, chunk: list[Any]) -> Any:
        """One inference-only pass over a batch of examples (subclasses)."""
        raise NotImplementedError

    def make_upload(self, chunk: list[Any], outputs: Any, sample_ids: np.ndarray,
                    deployed: torch.nn.Module | None = None) -> Message:
        """The plain upload of one batch (subclasses): its targets are those of the backbone alone, or, with
        `deployed` (a boosting round's sum so far), those left by the backbone plus that side output."""
        raise NotImplementedError

    def mechanism_inputs(self, chunk: list[Any], outputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """The device-only (labels, label logits) the protection mechanisms may read (subclasses)."""
        raise NotImplementedError

    def batches(self, examples: list[Any], description: str) -> Iterator[tuple[list[Any], Any]]:
        """Forward passes over `examples`, batch by batch, with a progress bar."""
        chunks = [examples[i:i + self.batch_size] for i in range(0, len(examples), self.batch_size)]
        for chunk in tqdm(chunks, desc=description, unit="batch", disable=not self.progress, leave=False):
            yield chunk, self.run_batch(chunk)

    def upload(self, channel: Channel, examples: list[Any]) -> np.ndarray:
        """Epoch 1: forward every example once and upload it; return the sample ids used."""
        all_ids = []
        for chunk, outputs in self.batches(examples, "device forward + upload"):
            ids = new_sample_ids(len(chunk))
            self.send(channel, chunk, outputs, ids)
            all_ids.append(ids)
        self.finish(channel)
        return np.concatenate(all_ids)

    def send(self, channel: Channel, chunk: list[Any], outputs: Any, sample_ids: np.ndarray,
             deployed: torch.nn.Module | None = None) -> None:
        """Upload one batch (its targets as `make_upload` forms them), through the protection transform
        when there is one. With `deployed` (a boosting round >= 2, under the ids of round 1, whose server
        holds the batch's states) only the refreshed targets are sent (`RefreshedTargets`)."""
        upload = self.make_upload(chunk, outputs, sample_ids, deployed)
        messages = [upload] if self.transform is None else self.transform.transform(
            upload, *self.mechanism_inputs(chunk, outputs))
        self._request_all(channel, messages, refreshing=deployed is not None)

    def finish(self, channel: Channel, refreshing: bool = False) -> None:
        """Send what the protection transform held back (nothing without one); `refreshing`: a boosting
        round's, whose states the server holds (only the targets go)."""
        if self.transform is not None:
            self._request_all(channel, self.transform.flush(), refreshing)

    @staticmethod
    def _request_all(channel: Channel, messages: list[Message], refreshing: bool) -> None:
        for message in messages:
            channel.request(refreshed_targets(message) if refreshing else message)


class DeviceRole(ForwardDevice):
    """Runs the frozen backbone on the device's own data (classification: one pivot per sample)."""

    def __init__(self, backbone: Backbone, task: TaskSpec, layers: tuple[int, ...] | None = None,
                 payload_dtype: str = "float16", batch_size: int = 16, progress: bool = True,
                 transform: UploadTransform | None = None) -> None:
        super().__init__(backbone, task, layers, payload_dtype, batch_size, progress, transform)
        self.label_ids = backbone.label_token_ids(task.label_words)

    def forward(self, texts: list[str]) -> PivotBatch:
        """One inference-only pass over a batch of texts."""
        start = time.perf_counter()
        with torch.inference_mode():
            states, label_logits = pivot_outputs(self.backbone, self.task, texts, self.layers, self.label_ids)
        self.forward_samples += len(texts)
        self.forward_seconds += time.perf_counter() - start
        return PivotBatch(activations=self.rounded(states).cpu(), label_logits=label_logits.float().cpu())

    def run_batch(self, chunk: list[Example]) -> PivotBatch:
        return self.forward([e.text for e in chunk])

    def make_upload(self, chunk: list[Example], pivots: PivotBatch, sample_ids: np.ndarray,
                    deployed: torch.nn.Module | None = None) -> Upload:
        """The message for one batch: ids, pivot activations and Δ = onehot(y) − p_b, or with `deployed`
        Δ = onehot(y) − (p_b + deployed(A)) (labels stay here)."""
        labels = torch.tensor([e.label for e in chunk])
        delta = prediction_difference(pivots.label_logits, labels)
        if deployed is not None:
            backbone_probs, combined = side_scores(pivots, deployed)
            delta = delta - torch.from_numpy(combined - backbone_probs)
        return Upload(sample_ids=sample_ids,
                      activations=pivots.activations.numpy().astype(PAYLOAD_DTYPES[self.payload_dtype]),
                      delta=delta.numpy().astype(np.float32), layers=self.layers)

    def mechanism_inputs(self, chunk: list[Example], pivots: PivotBatch) -> tuple[np.ndarray, np.ndarray]:
        return np.array([e.label for e in chunk]), pivots.label_logits.numpy()

    def scores(self, examples: list[Example], side: torch.nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
        """(p_b, p_b + g(A)) per example, computed locally with no traffic."""
        parts = [side_scores(pivots, side) for _, pivots in self.batches(examples, "device predict")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def side_scores(pivots: PivotBatch, side: torch.nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """(p_b, p_b + g(A)) of one batch of forward outputs; `side` maps pivot activations to C
    side values (the side network φ or the CKKS mode's ridge head), None for the backbone alone."""
    probs = torch.softmax(pivots.label_logits, dim=-1)
    extra = torch.zeros_like(probs)
    if side is not None:
        side.eval()
        with torch.inference_mode():
            extra = side(pivots.activations)
    return probs.numpy(), (probs + extra).numpy()
