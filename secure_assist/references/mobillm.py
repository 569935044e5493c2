"""MobiLLM-style baseline: every token's activation at every layer, plus labels, goes
to the server each epoch (no cache), and the server trains the side network with
cross-entropy.

The side network is the same additive adapter stack, applied position-wise to every
token; its states are mean-pooled over the prompt's tokens before the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from protocol.model.backbone import Backbone
from protocol.wire.channel import InProcessChannel
from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.device.forward_device import PAYLOAD_DTYPES, encode_prompts, new_sample_ids
from protocol.server.endpoint import RecordingEndpoint
from protocol.server.trainer import SideTrainer
from protocol.server.training_settings import ServerTraining
from protocol.errors import ProtocolError
from protocol.modes.generation.device import encode_answers
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.wire.messages import FetchWeights, FullUpload, Message, SideWeights, UploadAck, encode_message, expect
from protocol.model.side_network import AdditiveSideNetwork, SideNetworkShape, network_from_arrays, state_arrays
from protocol.data.tasks import Example, TaskSpec


def pooled_logits(network: AdditiveSideNetwork, activations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Side network over every token (n, L, T, d), masked mean over tokens, then the head."""
    n, layers, tokens, hidden = activations.shape
    per_token = activations.permute(0, 2, 1, 3).reshape(n * tokens, layers, hidden)
    states = network.side_states(per_token).reshape(n, tokens, hidden)
    weights = mask.float().unsqueeze(-1)
    return network.head((states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0))


def pooled_cross_entropy(network: AdditiveSideNetwork, activations: torch.Tensor, labels: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """MobiLLM's objective: cross-entropy of the pooled logits against the uploaded labels."""
    return torch.nn.functional.cross_entropy(pooled_logits(network, activations, mask), labels)


class MobiLLMServer(RecordingEndpoint):
    """Trains on each full upload as it arrives (the side trainer, cross-entropy, plain AdamW);
    keeps nothing but φ between epochs."""

    def __init__(self, workdir: Path | str, n_classes: int, rank: int = 64, learning_rate: float = 1e-3,
                 seed: int = 0, max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(workdir, max_message_bytes)
        self.n_classes = n_classes
        # MobiLLM's recipe: AdamW at one rate with its default decay, no schedule, no checkpoints.
        self.trainer = SideTrainer(ServerTraining(rank=rank, learning_rate=learning_rate, weight_decay=0.01,
                                                  adapter_lr_scale=1.0, cosine_decay=False, seed=seed))

    def handle(self, message: Message) -> Message:
        """Train one CE step per upload; serve φ on request."""
        network = self.trainer.network
        if isinstance(message, FullUpload):
            acts = torch.from_numpy(message.activations.astype(np.float32))
            if network is None:
                network = AdditiveSideNetwork(SideNetworkShape(
                    n_layers=acts.shape[1], hidden_size=acts.shape[3], rank=self.trainer.training.rank,
                    n_classes=self.n_classes), generator=self.trainer.init_generator())
                valid = torch.from_numpy(message.attention_mask.astype(bool))
                network.fit_input_scaling(acts.permute(0, 2, 1, 3)[valid])
                self.trainer.start(network, tuple(range(1, acts.shape[1] + 1)))
            if message.labels.min() < 0 or message.labels.max() >= network.shape.n_classes:
                raise ProtocolError(f"labels must lie in 0..{self.n_classes - 1}")
            self.trainer.step(acts, torch.from_numpy(message.labels),
                              loss=partial(pooled_cross_entropy, mask=torch.from_numpy(message.attention_mask)))
            return UploadAck(stored=0, duplicates=0)
        if isinstance(message, FetchWeights) and network is not None:
            return SideWeights(state=state_arrays(network), architecture=self.trainer.architecture())
        return super().handle(message)


@dataclass
class MobiLLMRun:
    """Costs and predictions of a MobiLLM-style run."""

    bytes_up_per_epoch: list[int]
    bytes_down: int
    device_seconds: float
    device_forward_samples: int
    server_seconds: float
    probabilities: np.ndarray  # (n_eval, C) softmax of the side network's logits

    @property
    def bytes_up(self) -> int:
        """Bytes uploaded over every epoch."""
        return sum(self.bytes_up_per_epoch)

    @property
    def device_forwards_after_epoch1(self) -> int:
        """Backbone passes of later epochs: MobiLLM re-sends every epoch."""
        return self.device_forward_samples - (self.device_forward_samples // max(1, len(self.bytes_up_per_epoch)))


def _full_activations(backbone: Backbone, task: TaskSpec, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """All tokens' hidden states at every layer (n, L, T, d) and the attention mask."""
    encoded = encode_prompts(backbone, task, texts)
    with torch.inference_mode():
        out = backbone.model.base_model(**encoded, output_hidden_states=True)
    acts = torch.stack(out.hidden_states[1:], dim=1).cpu()
    return acts, encoded["attention_mask"].cpu()


def run_mobillm(backbone: Backbone, task: TaskSpec, train: list[Example], evaluate: list[Example],
                workdir: Path | str, epochs: int = 1, batch_size: int = 16, payload_dtype: str = "float16",
                seed: int = 0, progress: bool = True) -> MobiLLMRun:
    """Run the baseline over an in-process channel and score `evaluate` on the device."""
    server = MobiLLMServer(workdir, n_classes=task.n_classes, seed=seed)
    channel = InProcessChannel(server)
    dtype = PAYLOAD_DTYPES[payload_dtype]
    per_epoch, device_seconds, forwards = [], 0.0, 0
    ids = new_sample_ids(len(train))
    try:
        for epoch in range(epochs):
            before = channel.bytes_up
            starts = range(0, len(train), batch_size)
            for i in tqdm(starts, desc=f"MobiLLM epoch {epoch + 1}", disable=not progress, leave=False):
                chunk = train[i:i + batch_size]
                start = time.perf_counter()
                acts, mask = _full_activations(backbone, task, [e.text for e in chunk])
                device_seconds += time.perf_counter() - start
                forwards += len(chunk)
                channel.request(FullUpload(sample_ids=ids[i:i + batch_size], activations=acts.numpy().astype(dtype),
                                           attention_mask=mask.numpy().astype(np.uint8),
                                           labels=np.array([e.label for e in chunk], dtype=np.int64)))
            per_epoch.append(channel.bytes_up - before)
        weights = expect(channel.request(FetchWeights()), SideWeights)
    finally:
        server.close()
    network = network_from_arrays(weights.state, weights.architecture).eval()
    probabilities = []
    for i in range(0, len(evaluate), batch_size):
        acts, mask = _full_activations(backbone, task, [e.text for e in evaluate[i:i + batch_size]])
        with torch.inference_mode():
            logits = pooled_logits(network, acts.to(dtype=torch.float16).float(), mask)
        probabilities.append(torch.softmax(logits, dim=-1).numpy())
    return MobiLLMRun(bytes_up_per_epoch=per_epoch, bytes_down=channel.bytes_down, device_seconds=device_seconds,
                      device_forward_samples=forwards, server_seconds=server.compute_seconds,
                      probabilities=np.concatenate(probabilities))


@dataclass
class MobiLLMGenerationBytes:
    """What MobiLLM-style uploads of generation samples cost the device, per epoch."""

    bytes_up: int
    samples: int
    device_seconds: float


def measure_generation_upload(backbone: Backbone, task: InstructionTask, examples: list[InstructionExample],
                              batch_size: int = 4, payload_dtype: str = "float16",
                              progress: bool = True) -> MobiLLMGenerationBytes:
    """Serialize the MobiLLM-style upload of generation samples (every token of prompt + answer at
    every layer) and count its bytes; the answer token ids travel as int64 labels (one per answer
    token, flattened), the rest of the message as for classification. Nothing is trained: the
    bytes are what one epoch sends."""
    total, seconds = 0, 0.0
    for start in tqdm(range(0, len(examples), batch_size), desc="MobiLLM-style generation upload",
                      disable=not progress, leave=False):
        chunk = examples[start:start + batch_size]
        begin = time.perf_counter()
        batch = encode_answers(backbone, task, chunk)
        with torch.inference_mode():
            out = backbone.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                            output_hidden_states=True)
        acts = torch.stack(out.hidden_states[1:], dim=1).cpu().numpy().astype(PAYLOAD_DTYPES[payload_dtype])
        seconds += time.perf_counter() - begin
        upload = FullUpload(sample_ids=new_sample_ids(len(chunk)), activations=acts,
                            attention_mask=batch.attention_mask.cpu().numpy().astype(np.uint8),
                            labels=batch.targets.numpy().astype(np.int64)[:len(chunk)])
        # FullUpload carries one label per sample: the other answer tokens are counted at 8 bytes each.
        total += len(encode_message(upload)) + 8 * (len(batch.targets) - len(chunk))
    return MobiLLMGenerationBytes(bytes_up=total, samples=len(examples), device_seconds=seconds)
