"""The device role of generation tasks: teacher-forced inference passes over prompt + answer.

Loss positions of a sample are the positions whose next token is an answer token y_t.
Per loss position the device keeps the selected layers' states and the final (normed)
state h_t, whose logits through the public LM head W_U are z_t = W_U h_t. What it
uploads besides the states is the difference signal

    r_t = W_Uᵀ (onehot(y_t) − softmax(z_t))  ∈ R^d,

which is also minus the gradient of the token's cross-entropy with respect to h_t: the
server sees what a split-learning server would see at the output. PAE's MSE through the
head, Σ_t ‖W_U s_t − Δ_t‖² with Δ_t = onehot(y_t) − softmax(z_t), equals
Σ_t (s_tᵀ G s_t − 2 s_tᵀ r_t) + const with the public G = W_UᵀW_U, so r_t and G are all the
server needs: the V-sized Δ_t never leaves the device.

Inference adds the side output's hidden-space correction through the head, in logit
space: z_t + W_U s_t = W_U (h_t + s_t) (how it compares with probability space is not yet
measured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from protocol.model.backbone import Backbone
from protocol.device.forward_device import PAYLOAD_DTYPES, ForwardDevice
from protocol.modes.generation.messages import GenerationUpload, HeadGram
from protocol.data.instructions import InstructionExample, InstructionTask

# Positions scored at once against the whole vocabulary (bounds the (rows, V) logits in memory).
VOCAB_CHUNK = 256
# Factors of the hidden-space correction the device tries on its validation split (the safeguard), and
# so the scales an attacker tries too (public: only the device's choice is secret). The MSE fit through
# the head is a very short step in logit space (its effect on token y scales with y's leverage in W_U,
# about d/V): in a pilot run on SmolLM2 a grid that ended at 64 chose its largest factor, hence the range.
CORRECTION_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0)


@dataclass
class AnswerBatch:
    """What one teacher-forced pass yields at the loss positions of a batch."""

    activations: torch.Tensor  # (N, len(layers), d) float32, rounded to the payload dtype
    final_states: torch.Tensor  # (N, d): h_t, the head's input
    targets: torch.Tensor  # (N,) int64: y_t
    counts: torch.Tensor  # (n,) int64: loss positions of each sample

    def sample_rows(self) -> list[slice]:
        """Each sample's rows."""
        ends = np.cumsum(self.counts.numpy())
        return [slice(int(e - c), int(e)) for e, c in zip(ends, self.counts.numpy())]


@dataclass
class EncodedAnswers:
    """Right-padded prompt + answer ids of a batch and where its loss positions are."""

    input_ids: torch.Tensor  # (n, width), on the backbone's device
    attention_mask: torch.Tensor
    positions: tuple[torch.Tensor, torch.Tensor]  # (row, column) of every loss position
    targets: torch.Tensor  # (N,) y_t, on the CPU
    counts: torch.Tensor  # (n,)


def encode_answers(backbone: Backbone, task: InstructionTask, examples: list[InstructionExample]) -> EncodedAnswers:
    """Token ids of prompt + answer (teacher forcing) and the loss positions: position p predicts
    token p + 1, so the last prompt token predicts y_1, and so on."""
    tokenizer = backbone.tokenizer
    pairs = [(task.prompt_ids(tokenizer, e), task.answer_ids(tokenizer, e)) for e in examples]
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows, columns, targets = [], [], []
    for i, (prompt, answer) in enumerate(pairs):
        ids[i, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[i, :len(prompt) + len(answer)] = 1
        rows += [i] * len(answer)
        columns += range(len(prompt) - 1, len(prompt) + len(answer) - 1)
        targets += answer
    return EncodedAnswers(input_ids=ids.to(backbone.device), attention_mask=mask.to(backbone.device),
                          positions=(torch.tensor(rows), torch.tensor(columns)), targets=torch.tensor(targets),
                          counts=torch.tensor([len(a) for _, a in pairs]))


def head_weight(backbone: Backbone) -> torch.Tensor:
    """W_U (V, d), float32, on the backbone's device."""
    return backbone.model.get_output_embeddings().weight.detach().float()


def residual_signal(weight: torch.Tensor, final_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """r_t = W_Uᵀ(onehot(y_t) − softmax(W_U h_t)) for every row, in chunks of positions."""
    parts = []
    for start in range(0, len(targets), VOCAB_CHUNK):
        states, labels = final_states[start:start + VOCAB_CHUNK], targets[start:start + VOCAB_CHUNK]
        gap = torch.softmax(states.to(weight.device) @ weight.T, dim=-1)
        gap[torch.arange(len(labels)), labels.to(weight.device)] -= 1.0
        parts.append(-(gap @ weight).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, weight.shape[1])


def answer_log_probs(weight: torch.Tensor, final_states: torch.Tensor, corrections: torch.Tensor | None,
                     targets: torch.Tensor, scales: tuple[float, ...], space: str = "logit"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y_t), whether y_t is the top-1 token), shape (N, len(scales)), of the backbone's
    next-token distribution corrected by scale·W_U s_t: added to the logits ('logit'), or to
    the probabilities, clamped at 1e-6 and renormalized ('probability'). Scale 0 (or no
    corrections) is the backbone alone."""
    log_probs, correct = [], []
    for start in range(0, len(targets), VOCAB_CHUNK):
        rows = slice(start, start + VOCAB_CHUNK)
        logits = final_states[rows].to(weight.device) @ weight.T
        shift = (torch.zeros_like(logits) if corrections is None
                 else corrections[rows].to(weight.device) @ weight.T)
        labels = targets[rows].to(weight.device)
        index = torch.arange(len(labels))
        columns_lp, columns_ok = [], []
        for scale in scales:
            if space == "logit":
                scores = torch.log_softmax(logits + scale * shift, dim=-1)
            else:
                probs = (torch.softmax(logits, dim=-1) + scale * shift).clamp_min(1e-6)
                scores = torch.log(probs / probs.sum(dim=-1, keepdim=True))
            columns_lp.append(scores[index, labels].cpu())
            columns_ok.append((scores.argmax(dim=-1) == labels).cpu())
        log_probs.append(torch.stack(columns_lp, dim=1))
        correct.append(torch.stack(columns_ok, dim=1))
    return torch.cat(log_probs), torch.cat(correct)


def corrections(side: torch.nn.Module, outputs: AnswerBatch) -> torch.Tensor:
    """The side output's hidden-space correction s_t (N, d) at every loss position of a batch."""
    side.eval()
    with torch.inference_mode():
        return side(outputs.activations)


class GenerationDevice(ForwardDevice):
    """Teacher-forced passes, generation uploads, answer scoring and greedy decoding."""

    task: InstructionTask

    def __init__(self, backbone: Backbone, task: InstructionTask, layers: tuple[int, ...] | None = None,
                 payload_dtype: str = "float16", batch_size: int = 16, progress: bool = True,
                 transform: object | None = None) -> None:
        super().__init__(backbone, task, layers, payload_dtype, batch_size, progress, transform)
        self.weight = head_weight(backbone)

    def token_ids(self, example: InstructionExample) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one example."""
        tokenizer = self.backbone.tokenizer
        return self.task.prompt_ids(tokenizer, example), self.task.answer_ids(tokenizer, example)

    def run_batch(self, chunk: list[InstructionExample]) -> AnswerBatch:
        """One inference-only pass over prompt + answer of each example."""
        start = time.perf_counter()
        batch = encode_answers(self.backbone, self.task, chunk)
        with torch.inference_mode():
            out = self.backbone.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                 output_hidden_states=True)
            states = torch.stack([out.hidden_states[layer][batch.positions] for layer in self.layers], dim=1)
            final = out.hidden_states[-1][batch.positions].float()
        self.forward_samples += len(chunk)
        self.forward_seconds += time.perf_counter() - start
        return AnswerBatch(activations=self.rounded(states).cpu(), final_states=final.cpu(), targets=batch.targets,
                           counts=batch.counts)

    def make_upload(self, chunk: list[InstructionExample], outputs: AnswerBatch, sample_ids: np.ndarray,
                    deployed: torch.nn.Module | None = None) -> GenerationUpload:
        """States and r_t at every loss position (answer tokens stay here); with `deployed` (a boosting
        round's sum so far) r_t is taken at the corrected logits z_t + W_U S_t = W_U (h_t + S_t)."""
        with torch.inference_mode():
            residual = residual_signal(self.weight, self.deployed_states(outputs, deployed), outputs.targets)
        return GenerationUpload(sample_ids=sample_ids, counts=outputs.counts.numpy().astype(np.int64),
                                activations=outputs.activations.numpy().astype(PAYLOAD_DTYPES[self.payload_dtype]),
                                residual=residual.numpy().astype(np.float32), layers=self.layers)

    @staticmethod
    def deployed_states(outputs: AnswerBatch, deployed: torch.nn.Module | None) -> torch.Tensor:
        """The head inputs of what the device deploys: h_t, plus the correction S_t of `deployed` (the logits
        W_U (h_t + S_t) are the backbone's plus the correction's, so one hidden-space sum carries both)."""
        return outputs.final_states if deployed is None else outputs.final_states + corrections(deployed, outputs)

    def mechanism_inputs(self, chunk: list[InstructionExample], outputs: AnswerBatch) -> tuple[np.ndarray, np.ndarray]:
        # Generation has no label words: the mechanisms see the answer tokens and no label logits.
        return outputs.targets.numpy(), np.zeros((len(outputs.targets), 0), np.float32)

    def head_gram(self) -> HeadGram:
        """G = W_Uᵀ W_U of the public head (sent once; the server needs no backbone)."""
        weight = self.weight.double()
        return HeadGram(gram=(weight.T @ weight).float().cpu().numpy())

    def token_scores(self, examples: list[InstructionExample], side: torch.nn.Module | None,
                     scales: tuple[float, ...] = (0.0, 1.0), space: str = "logit",
                     deployed: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log p(y_t), top-1 correct, counts) at every answer position, for each scale of the
        side output (columns), on top of the backbone or, with `deployed`, of the backbone plus that
        correction (scale 0 is then the deployed model); computed locally with no traffic."""
        log_probs, correct, counts = [], [], []
        for _, outputs in self.batches(examples, "device answer scoring"):
            shift = None if side is None else corrections(side, outputs)
            with torch.inference_mode():
                lp, ok = answer_log_probs(self.weight, self.deployed_states(outputs, deployed), shift,
                                          outputs.targets, scales, space)
            log_probs.append(lp.numpy())
            correct.append(ok.numpy())
            counts.append(outputs.counts.numpy())
        return np.concatenate(log_probs), np.concatenate(correct), np.concatenate(counts)

    def generate(self, examples: list[InstructionExample], side: torch.nn.Module | None,
                 max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy decoding with the side output's correction added to every next-token logit."""
        limit = max_new_tokens or self.task.max_answer_tokens
        results: list[list[int]] = []
        chunks = [examples[i:i + self.batch_size] for i in range(0, len(examples), self.batch_size)]
        for chunk in chunks:
            results += self._generate_batch([self.task.prompt_ids(self.backbone.tokenizer, e) for e in chunk],
                                            side, limit)
        return results

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], side: torch.nn.Module | None, limit: int) -> list[list[int]]:
        tokenizer, device = self.backbone.tokenizer, self.backbone.device
        width = max(len(p) for p in prompts)
        # Left padding lines the last prompt tokens up; explicit positions ignore the pads.
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        inner, cache = self.backbone.model.base_model, None
        done = torch.zeros(len(prompts), dtype=torch.bool)
        produced: list[list[int]] = [[] for _ in prompts]
        step_ids = ids
        for _ in range(limit):
            out = inner(input_ids=step_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                        cache=cache, use_cache=True, output_hidden_states=True)
            cache = out.cache
            logits = out.hidden_states[-1][:, -1].float() @ self.weight.T
            if side is not None:
                side.eval()
                states = self.rounded(torch.stack([out.hidden_states[layer][:, -1] for layer in self.layers], dim=1))
                logits = logits + side(states.cpu()).to(device) @ self.weight.T
            chosen = logits.argmax(dim=-1).cpu()
            done |= chosen == tokenizer.eos_token_id
            for i in torch.nonzero(~done).flatten().tolist():
                produced[i].append(int(chosen[i]))
            if done.all():
                break
            step_ids = chosen[:, None]
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
        return produced
