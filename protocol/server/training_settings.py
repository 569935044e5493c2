"""The side trainer's hyper-parameters, apart from the trainer so that configuration and the
command line can read them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import UserInputError


@dataclass(frozen=True)
class ServerTraining:
    """Side-network hyper-parameters (server side).

    At a constant rate the side network's dev accuracy swings from epoch to epoch (so the
    served weights depend on where training stops), and on some prompts adapters at the full
    rate overfit where the gates and head alone do not (BENCHMARKS.md, "Prompt and recipe").
    So the adapters learn at `adapter_lr_scale` times the rate, AdamW's decoupled weight decay
    is strong, and the cached epochs follow a cosine decay.
    """

    rank: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1.0
    adapter_lr_scale: float = 0.01
    cosine_decay: bool = True  # False: a constant learning rate
    batch_size: int = 32
    dropout: float = 0.0
    seed: int = 0
    # Epoch 1 writes a full checkpoint every this many uploads; rows after it are replayed
    # from the cache on restart (see protocol.server.recovery), so this only bounds restart time.
    checkpoint_every_uploads: int = 32

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise UserInputError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("weight_decay", "adapter_lr_scale"):
            if not getattr(self, name) >= 0:
                raise UserInputError(f"{name} must be zero or positive, got {getattr(self, name)}")
