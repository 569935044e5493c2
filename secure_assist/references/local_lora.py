"""Local LoRA: device-only fine-tuning with `peft` (the accuracy and memory reference).

LoRA adapters on the attention projections. Classification: cross-entropy over the
label-word logits at the pivot, exactly the prediction PAE improves. Generation: standard
supervised fine-tuning, cross-entropy of every answer token (teacher forced). Nothing
leaves the device.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from protocol.model.backbone import Backbone
from protocol.device.forward_device import pivot_outputs
from protocol.errors import UserInputError
from protocol.modes.generation.device import encode_answers
from protocol.data.instructions import InstructionExample, InstructionTask
from protocol.data.tasks import Example, TaskSpec


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (peft defaults for the target modules of each architecture)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 5e-4
    epochs: int = 1
    batch_size: int = 8
    seed: int = 0


@dataclass
class LoraRun:
    """Outcome of local LoRA training and evaluation."""

    trainable_parameters: int
    train_seconds: float
    steps: int
    probabilities: np.ndarray  # (n_eval, C) softmax over label words after training
    device_forwards_after_epoch1: int  # backbone passes (with backward) of epochs after the first
    # Nothing leaves the device: no traffic, no server.
    bytes_up: int = 0
    bytes_down: int = 0
    server_seconds: float = 0.0

    @property
    def device_seconds(self) -> float:
        """Device seconds of training (the scoring passes excluded, as for every row)."""
        return self.train_seconds


@contextmanager
def lora_adapters(backbone: Backbone, settings: LoraSettings) -> Iterator[tuple[torch.nn.Module, int]]:
    """(peft model, trainable parameters) with LoRA adapters injected into the backbone's own
    modules; on exit the adapters are removed and the frozen backbone is given back."""
    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=_target_modules(backbone))
    peft_model = get_peft_model(backbone.model, config)
    try:
        yield peft_model, sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    finally:
        backbone.model = peft_model.unload().eval().requires_grad_(False)


def train_adapters(peft_model: torch.nn.Module, settings: LoraSettings, n_train: int,
                   loss_of: Callable[[list[int]], torch.Tensor], progress: bool) -> tuple[int, float]:
    """AdamW over the adapters, `settings.epochs` seed-shuffled passes over n_train samples;
    `loss_of(indices)` is one batch's loss. Returns (steps, seconds)."""
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    steps, start = 0, time.perf_counter()
    peft_model.train()
    for epoch in range(settings.epochs):
        order = torch.randperm(n_train, generator=generator).tolist()
        batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        for batch in tqdm(batches, desc=f"local LoRA epoch {epoch + 1}", disable=not progress, leave=False):
            loss = loss_of(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    peft_model.eval()
    return steps, time.perf_counter() - start


def run_local_lora(backbone: Backbone, task: TaskSpec, train: list[Example], evaluate: list[Example],
                   settings: LoraSettings = LoraSettings(), progress: bool = True) -> LoraRun:
    """Train LoRA on `train`, score `evaluate`, then unload the adapters (backbone restored)."""
    label_ids = backbone.label_token_ids(task.label_words)
    last_layer = (backbone.n_layers,)

    def loss_of(batch: list[int]) -> torch.Tensor:
        _, logits = pivot_outputs(backbone, task, [train[i].text for i in batch], last_layer, label_ids)
        labels = torch.tensor([train[i].label for i in batch], device=logits.device)
        return torch.nn.functional.cross_entropy(logits, labels)

    with lora_adapters(backbone, settings) as (peft_model, trainable):
        steps, train_seconds = train_adapters(peft_model, settings, len(train), loss_of, progress)
        probabilities = []
        with torch.inference_mode():
            for i in range(0, len(evaluate), 16):
                _, logits = pivot_outputs(backbone, task, [e.text for e in evaluate[i:i + 16]], last_layer, label_ids)
                probabilities.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return LoraRun(trainable_parameters=trainable, train_seconds=train_seconds, steps=steps,
                   probabilities=np.concatenate(probabilities),
                   device_forwards_after_epoch1=(settings.epochs - 1) * len(train))


def sft_loss(backbone: Backbone, task: InstructionTask, examples: list[InstructionExample]) -> torch.Tensor:
    """Supervised fine-tuning loss: mean cross-entropy of the answer tokens, teacher forced."""
    batch = encode_answers(backbone, task, examples)
    out = backbone.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = backbone.model.get_output_embeddings()(out.last_hidden_state[batch.positions])
    return torch.nn.functional.cross_entropy(logits.float(), batch.targets.to(logits.device))


@contextmanager
def local_lora_sft(backbone: Backbone, task: InstructionTask, train: list[InstructionExample],
                   settings: LoraSettings = LoraSettings(), progress: bool = True) -> Iterator[tuple[int, int, float]]:
    """Generation reference: SFT on the answer tokens with LoRA. Trains on entry and yields
    (trainable parameters, steps, seconds) with the adapters in place, so the caller scores and
    generates with `backbone` inside the block; on exit the adapters are removed."""
    with lora_adapters(backbone, settings) as (peft_model, trainable):
        steps, seconds = train_adapters(peft_model, settings, len(train),
                                        lambda batch: sft_loss(backbone, task, [train[i] for i in batch]), progress)
        yield trainable, steps, seconds


def _target_modules(backbone: Backbone) -> list[str]:
    """q/v projections (the LoRA paper's choice); GPT-2 fuses them into c_attn."""
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    if "c_attn" in names:
        return ["c_attn"]
    raise UserInputError(f"no known attention projections to adapt in backbone {backbone.name!r}")
