"""Local LoRA: device-only fine-tuning with `peft` (the accuracy and memory reference).

LoRA adapters on the attention projections; cross-entropy over the label-word logits
at the pivot, exactly the prediction PAE improves. Nothing leaves the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from protocol.backbone import Backbone
from protocol.device import pivot_outputs
from protocol.errors import UserInputError
from protocol.tasks import Example, TaskSpec


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


def run_local_lora(backbone: Backbone, task: TaskSpec, train: list[Example], evaluate: list[Example],
                   settings: LoraSettings = LoraSettings(), progress: bool = True) -> LoraRun:
    """Train LoRA on `train`, score `evaluate`, then unload the adapters (backbone restored)."""
    torch.manual_seed(settings.seed)
    label_ids = backbone.label_token_ids(task.label_words)
    last_layer = (backbone.n_layers,)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=_target_modules(backbone))
    peft_model = get_peft_model(backbone.model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    steps, start = 0, time.perf_counter()
    peft_model.train()
    try:
        for epoch in range(settings.epochs):
            order = torch.randperm(len(train), generator=generator).tolist()
            batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
            for batch in tqdm(batches, desc=f"local LoRA epoch {epoch + 1}", disable=not progress, leave=False):
                _, logits = pivot_outputs(backbone, task, [train[i].text for i in batch], last_layer, label_ids)
                labels = torch.tensor([train[i].label for i in batch], device=logits.device)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
        train_seconds = time.perf_counter() - start
        peft_model.eval()
        probabilities = []
        with torch.inference_mode():
            for i in range(0, len(evaluate), 16):
                _, logits = pivot_outputs(backbone, task, [e.text for e in evaluate[i:i + 16]], last_layer, label_ids)
                probabilities.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    finally:
        # Give the caller its frozen backbone back, adapters removed.
        backbone.model = peft_model.unload().eval().requires_grad_(False)
    return LoraRun(trainable_parameters=trainable, train_seconds=train_seconds, steps=steps,
                   probabilities=np.concatenate(probabilities))


def _target_modules(backbone: Backbone) -> list[str]:
    """q/v projections (the LoRA paper's choice); GPT-2 fuses them into c_attn."""
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    if "c_attn" in names:
        return ["c_attn"]
    raise UserInputError(f"no known attention projections to adapt in backbone {backbone.name!r}")
