"""`secure-assist finetune`: PAE side-tuning, device and server in one process."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any, Callable

from secure_assist.config import FinetuneConfig, config_from_mapping, load_config_file
from secure_assist.mechanisms import MECHANISMS


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part != "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {exc}") from exc
    return parse


# Flags whose type argparse cannot infer from the field's default.
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "label_words": lambda text: tuple(text.split("|")),
    "labels": _csv(str),
    "layers": _csv(int),
    "learning_rate": float,
    "weight_decay": float,
    "adapter_lr_scale": float,
    "train_samples": int,
    "eval_samples": int,
    "mechanism": _csv(str),
    "epsilon": float,
    "dp_delta": float,
    "noise_multiplier": float,
    "clip": float,
    "activation_noise_multiplier": float,
    "activation_clip": float,
    "mechanism_seed": int,
    "safeguard_fraction": float,
}
_FLAG_HELP = {
    "model": "backbone: 'smollm2-135m' (embedded), a tiny-* test model, a local path or a cached hub id",
    "task": "built-in task name (sst2) or 'custom' (with --train-file, --template, --label-words, --labels)",
    "template": "prompt template containing {text}",
    "label_words": "label words separated by '|', e.g. ' negative| positive' (each one token)",
    "labels": "label values as they appear in the data, comma-separated, in label-word order",
    "train_samples": "number of training samples (seed-fixed subset)",
    "eval_samples": "number of evaluation samples (default: all)",
    "layers": "comma-separated backbone layers to upload (default: all)",
    "learning_rate": "server AdamW learning rate of the side network's gates and head",
    "weight_decay": "server AdamW decoupled weight decay",
    "adapter_lr_scale": "adapters learn at this multiple of --learning-rate (they overfit small data)",
    "cosine_decay": "decay the server's learning rate to zero over the cached epochs (cosine)",
    "payload_dtype": "activation dtype on the wire: float16 or float32",
    "workdir": "directory for the server view, cache and fine-tuned model",
    "mechanism": "comma-separated privacy mechanisms, composed: " + ", ".join(MECHANISMS),
    "epsilon": "target per-sample ε of gaussian / label_rr",
    "dp_delta": "δ of the gaussian mechanisms",
    "noise_multiplier": "gaussian noise σ relative to --clip (instead of --epsilon)",
    "clip": "L2 clip norm c of Δ (gaussian)",
    "activation_noise_multiplier": "activation_noise σ relative to --activation-clip",
    "activation_clip": "L2 clip norm of each layer's pivot vector (activation_noise)",
    "mechanism_seed": "seed of the mechanisms' randomness (default: OS entropy)",
    "safeguard_fraction": "share of the training data held out on the device for the safeguard",
    "reuse_forwards": "keep the device's forward passes in its disk cache and reuse them on the same data",
}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field, plus --config for a JSON file."""
    parser.add_argument("--config", help="JSON file with FinetuneConfig keys (flags override it)")
    for field in fields(FinetuneConfig):
        flag, text = "--" + field.name.replace("_", "-"), f"{_FLAG_HELP.get(field.name, '')} (default: {field.default!r})"
        if isinstance(field.default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
            continue
        kind = _FLAG_TYPES.get(field.name, int if isinstance(field.default, int) else str)
        parser.add_argument(flag, dest=field.name, type=kind, default=argparse.SUPPRESS, help=text)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The FinetuneConfig given by --config and the explicit flags."""
    names = {f.name for f in fields(FinetuneConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        return load_config_file(FinetuneConfig, args.config, overrides)
    return config_from_mapping(FinetuneConfig, overrides)


def run(args: argparse.Namespace) -> int:
    """Fine-tune and print the JSON summary."""
    from secure_assist.finetune import run_finetune

    summary = run_finetune(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("finetune", help="PAE side-tuning: device + server, prints a JSON summary")
    add_config_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --workdir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
