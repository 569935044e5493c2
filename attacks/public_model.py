"""The public backbone as the attacker uses it: its head, final norm and embeddings.

Loaded once per process (the server holds one copy of the open weights).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from protocol.model.backbone import Backbone, decoder_stack, layer_span, load_backbone
from protocol.data.tasks import TaskSpec


@lru_cache(maxsize=2)
def public_backbone(name: str) -> Backbone:
    """The open-weight backbone named in the public knowledge (on the CPU)."""
    return load_backbone(name, device=torch.device("cpu"))


def zero_shot_logits(backbone: Backbone, task: TaskSpec, last_layer: np.ndarray) -> np.ndarray:
    """Label-word logits z_b from last-layer pivot states: the backbone's own prediction."""
    ids = backbone.label_token_ids(task.label_words)
    return backbone.public_head(torch.from_numpy(last_layer)).float().cpu().numpy()[:, ids]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _lens_logits(backbone: Backbone, states: np.ndarray) -> torch.Tensor:
    norm = getattr(backbone.model.base_model, "norm", None) or torch.nn.Identity()
    with torch.no_grad():
        normed = norm(torch.from_numpy(states).float())
    return backbone.public_head(normed).float().cpu()


def logit_lens(backbone: Backbone, states: np.ndarray) -> np.ndarray:
    """Vocabulary logits of intermediate states: the public final norm, then the LM head."""
    return _lens_logits(backbone, states).numpy()


def logit_lens_top(backbone: Backbone, states: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k highest logit-lens tokens of each state, highest first: (..., d) -> (..., k).
    (A partial selection: sorting the whole vocabulary of every state cost most of the attack.)"""
    return torch.topk(_lens_logits(backbone, states), k, dim=-1).indices.numpy()


def head_matrix(backbone: Backbone) -> np.ndarray:
    """The public LM head W_U (vocab, d), float32."""
    return backbone.model.get_output_embeddings().weight.detach().float().cpu().numpy()


def input_embeddings(backbone: Backbone) -> np.ndarray:
    """The public token embedding matrix (vocab, d)."""
    return backbone.model.get_input_embeddings().weight.detach().float().cpu().numpy()


def token_states(backbone: Backbone, task: TaskSpec, texts: list[str], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states after `layer` layers of every real prompt token of `texts`, and the
    token ids: the attacker runs only the bottom of the public backbone on public text."""
    encoded = backbone.tokenizer([task.prompt(t) for t in texts], return_tensors="pt", padding=True)
    with torch.inference_mode(), layer_span(decoder_stack(backbone), 0, layer) as bottom:
        states = bottom(**encoded, use_cache=False).last_hidden_state
    real = encoded["attention_mask"].bool()
    return states[real].float().numpy(), encoded["input_ids"][real].numpy()
