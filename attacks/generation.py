"""What the server learns from a generation view: the answers, and the fine-tuned model.

- `answer_from_residual`: r_t + W_Uᵀ softmax(W_U h_t) is the embedding row of y_t (the
  public head, tied to the embeddings in SmolLM2), so the nearest head row recovers the
  answer token; h_t is the uploaded last-layer state (without it, r_t alone is matched).
- `answer_inversion` (activations only): the answer token y_t is the *input* of the next
  loss position, so that position's states invert to it: a ridge map from the lowest
  uploaded layer's states to input embeddings, fitted on public instruction data run
  through the public backbone, then the nearest embedding; the last token is the logit
  lens' top-1 of the last position's highest uploaded layer.
- `generation_model_extraction`: public backbone + the server's hidden-space correction, at the
  scale that fits the server's own cache best (the device picks its scale on data the server never sees).
"""

from __future__ import annotations

import numpy as np
import torch

from attacks.base import ANSWER_TOKENS, EXTRACTION, Attack, AttackResult, PublicKnowledge
from attacks.labels import load_side_network
from attacks.public_model import head_matrix, logit_lens, public_backbone
from attacks.reconstruction import EmbeddingIndex, tuned_ridge_map
from attacks.view_data import AnswerData, answer_data
from protocol.modes.generation.device import CORRECTION_SCALES
from protocol.model.side_network import HiddenCorrection
from protocol.server.transcript import ANSWER_ACTIVATIONS, HIDDEN_CORRECTION, RESIDUAL, ServerView

# Positions scored against the whole vocabulary at once (bounds memory).
CHUNK = 512


def _per_sample(data: AnswerData, tokens: np.ndarray) -> list[list[int]]:
    return [tokens[rows].tolist() for rows in data.sample_rows()]


def nearest_rows(weight: torch.Tensor, vectors: np.ndarray) -> np.ndarray:
    """Index of the head row nearest (L2) to each vector."""
    norms = (weight ** 2).sum(dim=1)
    found = []
    for start in range(0, len(vectors), CHUNK):
        block = torch.from_numpy(vectors[start:start + CHUNK]).float()
        found.append((norms[None, :] - 2 * block @ weight.T).argmin(dim=1))
    return torch.cat(found).numpy() if found else np.zeros(0, np.int64)


class AnswerFromResidual(Attack):
    """The answer token at every loss position, from r_t and the public head."""

    NAME = "answer_from_residual"
    KIND = ANSWER_TOKENS
    NEEDS = frozenset({RESIDUAL, ANSWER_ACTIVATIONS})
    DESCRIPTION = "nearest head row of r_t + W_Uᵀ softmax(W_U h_t) (the answer token's embedding)"

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = answer_data(view, self, need_residual=True)
        backbone = public_backbone(public.backbone_name)
        weight = torch.from_numpy(head_matrix(backbone))
        signal = data.residual.astype(np.float32)
        last = backbone.n_layers in data.layers
        if last:
            with torch.no_grad():
                for start in range(0, len(signal), CHUNK):
                    states = torch.from_numpy(data.layer(self, backbone.n_layers)[start:start + CHUNK])
                    signal[start:start + CHUNK] += (torch.softmax(states @ weight.T, dim=-1) @ weight).numpy()
        tokens = nearest_rows(weight, signal)
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids,
                            token_ids=_per_sample(data, tokens),
                            details={"uses_last_layer": last, "positions": int(len(tokens))})


class AnswerInversion(Attack):
    """Answer tokens from the activations alone: each position's states invert to its input."""

    NAME = "answer_inversion"
    KIND = ANSWER_TOKENS
    NEEDS = frozenset({ANSWER_ACTIVATIONS})
    ACTIVATIONS_ONLY = True
    DESCRIPTION = ("activations only: public ridge map of the lowest uploaded layer to input embeddings at the next "
                   "position, logit lens for the last token")
    PUBLIC_SAMPLES = 300

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        data = answer_data(view, self)
        examples = list(public.public_examples[:self.PUBLIC_SAMPLES])
        if len(examples) < 20 or public.answer_states is None:
            raise self.lacks(f"public instruction data (>= 20 examples, got {len(examples)}) and the public backbone")
        backbone = public_backbone(public.backbone_name)
        layer = min(data.layers)
        states, inputs = public.answer_states(examples, layer)
        index = EmbeddingIndex(backbone)
        mapping, tuned = tuned_ridge_map(states, inputs, backbone, index)
        # Row t + 1 of a sample holds the state whose input is y_t; its last row gives no input.
        inverted = np.array(index.nearest(mapping(data.layer(self, layer))), dtype=np.int64)
        highest = max(data.layers)
        states = data.layer(self, highest)
        # The last layer's states are already final-normed (the head's input); earlier ones get the public norm.
        top = (backbone.public_head(torch.from_numpy(states)).float().cpu().numpy() if highest == backbone.n_layers
               else logit_lens(backbone, states)).argmax(axis=1)
        predicted = []
        for rows in data.sample_rows():
            predicted.append(inverted[rows][1:].tolist() + [int(top[rows.stop - 1])])
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=data.sample_ids, token_ids=predicted,
                            details={"layer": layer, **tuned, "public_positions": int(len(inputs))})


# Scales of the server's correction the extraction attack tries: the device's own grid (it picks its scale
# among them on validation data the server never sees).
EXTRACTION_SCALES = CORRECTION_SCALES
CALIBRATION_POSITIONS = 2000


def calibrated_scale(network: torch.nn.Module, data: AnswerData, weight: torch.Tensor, last: int
                     ) -> tuple[float, list[float]]:
    """The scale of the server's correction with the lowest answer cross-entropy on its own cache.

    No answer token is needed: with w_t = r_t + W_Uᵀ softmax(W_U h_t) (y_t's head row), the
    cross-entropy of logits z_t + a·W_U s_t is LSE(z_t + a·W_U s_t) − h_tᵀw_t − a·s_tᵀw_t, which is
    linear in r_t, so a noised r (gaussian_r) still gives an unbiased estimate."""
    rows = np.linspace(0, len(data.residual) - 1, min(CALIBRATION_POSITIONS, len(data.residual))).astype(int)
    states = torch.from_numpy(data.activations[rows, data.layers.index(last)])
    with torch.no_grad():
        logits = states @ weight.T
        target = torch.from_numpy(data.residual[rows]) + torch.softmax(logits, dim=-1) @ weight
        correction = network(torch.from_numpy(data.activations[rows]))
        shift, own, gain = correction @ weight.T, (states * target).sum(dim=1), (correction * target).sum(dim=1)
        losses = [float((torch.logsumexp(logits + a * shift, dim=-1) - own - a * gain).mean())
                  for a in EXTRACTION_SCALES]
    return EXTRACTION_SCALES[int(np.argmin(losses))], losses


class GenerationModelExtraction(Attack):
    """Public backbone + the hidden-space correction the server trained and keeps, at the scale
    that fits the server's own cache best (the device's scale is never sent)."""

    NAME = "generation_model_extraction"
    KIND = EXTRACTION
    NEEDS = frozenset({HIDDEN_CORRECTION, RESIDUAL, ANSWER_ACTIVATIONS})
    DESCRIPTION = ("public backbone + server-held hidden-space correction, scaled to the lowest cross-entropy on "
                   "the server's cache")

    def run(self, view: ServerView, public: PublicKnowledge) -> AttackResult:
        network = load_side_network(self, view, HiddenCorrection)
        data = answer_data(view, self, need_residual=True)
        backbone = public_backbone(public.backbone_name)
        details: dict[str, object] = {"backbone": public.backbone_name, "copy": "backbone + server correction"}
        if backbone.n_layers in data.layers:
            scale, losses = calibrated_scale(network, data, torch.from_numpy(head_matrix(backbone)), backbone.n_layers)
            network.map_outputs_(scale * np.eye(network.n_outputs))
            details.update(scale=scale, calibration_losses=losses)
        else:
            details["scale"] = "1 (the last layer was not uploaded: no calibration)"
        return AttackResult(attack=self.NAME, kind=self.KIND, sample_ids=[], model=network, details=details)
