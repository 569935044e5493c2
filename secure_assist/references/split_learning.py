"""Split-learning baseline (U-shaped): the device runs the embeddings and the bottom k
layers and keeps the final norm, the LM head and the labels; the server runs layers
k+1..L with LoRA (peft). Per batch: the device sends cut-layer states of every token,
the server returns its output states, the device computes the loss and sends back
d loss / d output, the server updates LoRA and returns the cut-layer gradients.

Every message goes through the same recording endpoint as PAE, so the server's view
holds what a split-learning server really sees (activations and gradients).
Decoder-stack models with `layers` and `norm` modules (llama, qwen2, ...) are supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from protocol.model.backbone import Backbone, decoder_stack, layer_span
from protocol.wire.channel import InProcessChannel
from protocol.wire.codec import DEFAULT_MAX_BYTES
from protocol.device.forward_device import PAYLOAD_DTYPES, encode_prompts, new_sample_ids
from protocol.server.endpoint import RecordingEndpoint
from protocol.errors import ProtocolError, UserInputError
from protocol.wire.messages import Message, expect
from protocol.wire.split_messages import CutGradients, SplitActivations, SplitBackward, SplitForward
from protocol.data.tasks import Example, TaskSpec


class SplitLearningServer(RecordingEndpoint):
    """Runs layers cut_layer+1..L with LoRA; keeps the graph of the last forward until its backward."""

    def __init__(self, workdir: Path | str, backbone: Backbone, cut_layer: int, rank: int = 8,
                 learning_rate: float = 5e-4, max_message_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(workdir, max_message_bytes)
        self.inner = decoder_stack(backbone)
        self.cut_layer = cut_layer
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                            layers_to_transform=list(range(cut_layer, backbone.n_layers)))
        self.model = get_peft_model(backbone.model, config)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=learning_rate)
        self._pending: tuple[np.ndarray, torch.Tensor, torch.Tensor] | None = None

    def handle(self, message: Message) -> Message:
        """Forward requests keep their graph; the matching backward consumes it."""
        if isinstance(message, SplitForward):
            if message.cut_layer != self.cut_layer:
                raise ProtocolError(f"cut layer {message.cut_layer} differs from the server's {self.cut_layer}")
            cut = torch.from_numpy(message.activations.astype(np.float32)).requires_grad_(True)
            self.model.train()
            with layer_span(self.inner, self.cut_layer, len(self.inner.layers)) as top:
                out = top(inputs_embeds=cut, attention_mask=torch.from_numpy(message.attention_mask.astype(np.int64)),
                          use_cache=False).last_hidden_state
            self._pending = (message.sample_ids, cut, out)
            return SplitActivations(activations=out.detach().numpy().astype(np.float32))
        if isinstance(message, SplitBackward):
            if self._pending is None or not np.array_equal(self._pending[0], message.sample_ids):
                raise ProtocolError("backward does not match the last forward")
            _, cut, out = self._pending
            if message.output_gradients.shape != tuple(out.shape):
                raise ProtocolError(f"gradient shape {message.output_gradients.shape} != output {tuple(out.shape)}")
            self.optimizer.zero_grad()
            out.backward(torch.from_numpy(message.output_gradients))
            self.optimizer.step()
            self._pending = None
            return CutGradients(gradients=cut.grad.numpy().astype(np.float32))
        return super().handle(message)


@dataclass
class SplitRun:
    """Costs and per-step losses of a split-learning run."""

    sample_ids: np.ndarray
    losses: list[float]
    bytes_up: int
    bytes_down: int


def run_split_learning(device_backbone: Backbone, server_backbone: Backbone, task: TaskSpec,
                       train: list[Example], workdir: Path | str, cut_layer: int = 1, batch_size: int = 8,
                       payload_dtype: str = "float16", progress: bool = True) -> SplitRun:
    """One epoch of split learning over an in-process channel; two backbone copies
    because the server owns (and LoRA-modifies) its own."""
    if not 1 <= cut_layer < device_backbone.n_layers:
        raise UserInputError(f"cut layer must lie in 1..{device_backbone.n_layers - 1}")
    server = SplitLearningServer(workdir, server_backbone, cut_layer)
    channel = InProcessChannel(server)
    inner = decoder_stack(device_backbone)
    head = device_backbone.model.get_output_embeddings()
    label_ids = device_backbone.label_token_ids(task.label_words)
    ids = new_sample_ids(len(train))
    losses = []
    try:
        for start in tqdm(range(0, len(train), batch_size), desc="split learning", disable=not progress, leave=False):
            chunk, chunk_ids = train[start:start + batch_size], ids[start:start + batch_size]
            encoded = encode_prompts(device_backbone, task, [e.text for e in chunk])
            with torch.inference_mode(), layer_span(inner, 0, cut_layer) as bottom:
                cut = bottom(**encoded, use_cache=False).last_hidden_state
            mask = encoded["attention_mask"]
            reply = expect(channel.request(SplitForward(
                sample_ids=chunk_ids, activations=cut.cpu().numpy().astype(PAYLOAD_DTYPES[payload_dtype]),
                attention_mask=mask.cpu().numpy().astype(np.uint8), cut_layer=cut_layer)), SplitActivations)
            out = torch.from_numpy(reply.activations).requires_grad_(True)
            pivot = mask.sum(dim=1).cpu() - 1
            logits = head(inner.norm(out)[torch.arange(len(chunk)), pivot])[:, label_ids]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([e.label for e in chunk]))
            loss.backward()
            expect(channel.request(SplitBackward(sample_ids=chunk_ids, output_gradients=out.grad.numpy())),
                   CutGradients)
            losses.append(float(loss.detach()))
    finally:
        server.close()
    return SplitRun(sample_ids=ids, losses=losses, bytes_up=channel.bytes_up, bytes_down=channel.bytes_down)
