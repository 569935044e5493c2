"""The generation device's memory of its teacher-forced passes, for boosting rounds.

Round k >= 2 of `secure_assist.training.rounds` uploads the same states again with r_t refreshed at
the deployed correction, and its safeguard scores the validation split once more: both need only
what round 1's passes yielded (the uploaded layers' states, h_t and y_t per loss position), so the
device keeps them instead of running the backbone again. Classification keeps its passes in the
on-disk forward cache (`protocol.device.features`); generation passes have one row per answer
position, not per text, and no such cache exists for them, so this one lives in memory for the
run. Each sample's rows are kept apart, keyed by its prompt and answer ids, so any later batch of
held samples is served whole; the states are kept in the payload dtype, which they are already
rounded to (no loss, half the memory of float32 for fp16 payloads). Device-side state only.
"""

from __future__ import annotations

import torch

from protocol.modes.generation.device import AnswerBatch, GenerationDevice
from protocol.data.instructions import InstructionExample

_Key = tuple[tuple[int, ...], tuple[int, ...]]


class AnswerCachingDevice(GenerationDevice):
    """A generation device that runs the backbone once per sample and serves every later pass over
    the sample from memory. Served passes count as `reused_forwards`; their seconds were counted
    once, when this device computed them (as the classification cache does for its own entries)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Per sample: (states in the payload dtype, h_t, y_t) at its loss positions.
        self._held: dict[_Key, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _key(self, example: InstructionExample) -> _Key:
        prompt, answer = self.token_ids(example)
        return tuple(prompt), tuple(answer)

    def run_batch(self, chunk: list[InstructionExample]) -> AnswerBatch:
        """The batch's outputs from memory when every sample is held, else one pass (then held)."""
        keys = [self._key(example) for example in chunk]
        if not all(key in self._held for key in keys):
            batch = super().run_batch(chunk)
            dtype = torch.float16 if self.payload_dtype == "float16" else torch.float32
            for key, rows in zip(keys, batch.sample_rows()):
                self._held.setdefault(key, (batch.activations[rows].to(dtype), batch.final_states[rows],
                                            batch.targets[rows]))
            return batch
        held = [self._held[key] for key in keys]
        self.reused_forwards += len(chunk)
        return AnswerBatch(activations=torch.cat([states for states, _, _ in held]).float(),
                           final_states=torch.cat([final for _, final, _ in held]),
                           targets=torch.cat([targets for _, _, targets in held]),
                           counts=torch.tensor([len(targets) for _, _, targets in held]))
