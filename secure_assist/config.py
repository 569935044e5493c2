"""Typed, frozen run configurations; unknown keys and wrong types are errors."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from protocol.backbone import DEFAULT_BACKBONE
from protocol.errors import UserInputError
from protocol.server import ServerTraining

T = TypeVar("T")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a PAE fine-tuning run depends on."""

    model: str = DEFAULT_BACKBONE
    task: str = "sst2"
    train_file: str | None = None
    eval_file: str | None = None
    template: str | None = None
    label_words: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    train_samples: int | None = 2000
    eval_samples: int | None = None
    epochs: int = 20
    layers: tuple[int, ...] | None = None
    payload_dtype: str = "float16"
    device_batch_size: int = 16
    # Server-side training: the defaults are the server's own (protocol.server.ServerTraining).
    rank: int = ServerTraining.rank
    learning_rate: float = ServerTraining.learning_rate
    weight_decay: float = ServerTraining.weight_decay
    adapter_lr_scale: float = ServerTraining.adapter_lr_scale
    cosine_decay: bool = ServerTraining.cosine_decay
    server_batch_size: int = ServerTraining.batch_size
    seed: int = 0
    workdir: str = "runs/finetune"
    # Privacy mechanisms (secure_assist.mechanisms.MECHANISMS), composed in stage order.
    mechanism: tuple[str, ...] = ("none",)
    epsilon: float | None = None
    dp_delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    activation_noise_multiplier: float | None = None
    activation_clip: float = 50.0
    mechanism_seed: int | None = None  # None: fresh OS entropy for the noise
    # Share of the training data the device holds out for the safeguard; None: 0 for
    # the unprotected baseline ('none'), 0.1 for any protected run.
    safeguard_fraction: float | None = None
    # Keep the device's forward passes in its own disk cache and reuse them on the same
    # data (audits and sweeps run many variants over one dataset); outputs are identical.
    reuse_forwards: bool = False

    def __post_init__(self) -> None:
        positive = ("epochs", "device_batch_size", "rank", "server_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"{name} must be at least 1 (or omitted for all), got {value}")
        if self.safeguard_fraction is not None and not 0 <= self.safeguard_fraction < 1:
            raise UserInputError(f"safeguard_fraction must be in [0, 1), got {self.safeguard_fraction}")
        self.server_training()  # validates the server's settings now, not after the forward passes

    def server_training(self) -> ServerTraining:
        """The server's side-network settings for this run."""
        return ServerTraining(rank=self.rank, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                              adapter_lr_scale=self.adapter_lr_scale, cosine_decay=self.cosine_decay,
                              batch_size=self.server_batch_size, seed=self.seed)


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation (str, int, float, None, tuple[X, ...] and unions)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def config_from_mapping(cls: type[T], values: dict[str, Any]) -> T:
    """Build a config dataclass from a mapping; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    converted = {}
    for name, value in values.items():
        if not _accepts(hints[name], value):
            raise UserInputError(f"{cls.__name__}.{name}: {value!r} is not a valid {hints[name]}")
        converted[name] = tuple(value) if isinstance(value, list) else value
    return cls(**converted)


def load_config_file(cls: type[T], path: Path | str, overrides: dict[str, Any]) -> T:
    """A config from a JSON file, with explicit overrides (e.g. from the command line) on top."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserInputError(f"config file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: a config file holds one JSON object")
    return config_from_mapping(cls, {**values, **overrides})
