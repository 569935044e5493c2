"""The `secure-assist` command line.

Every user mistake ends as one `error:` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Callable, Sequence

from protocol.errors import SecureAssistError
from secure_assist.config import FinetuneConfig, config_from_mapping, load_config_file

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part != "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {exc}") from exc
    return parse


# Command-line flags of FinetuneConfig fields whose type argparse cannot infer.
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "label_words": lambda text: tuple(text.split("|")),
    "labels": _csv(str),
    "layers": _csv(int),
    "learning_rate": float,
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
    "payload_dtype": "activation dtype on the wire: float16 or float32",
    "workdir": "directory for the server view, cache and fine-tuned model",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file with FinetuneConfig keys (flags override it)")
    for field in fields(FinetuneConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _FLAG_TYPES.get(field.name, int if isinstance(field.default, int) else str)
        if field.name in ("train_samples", "eval_samples"):
            kind = int
        parser.add_argument(flag, dest=field.name, type=kind, default=argparse.SUPPRESS,
                            help=f"{_FLAG_HELP.get(field.name, '')} (default: {field.default!r})")


def _config(args: argparse.Namespace) -> FinetuneConfig:
    names = {f.name for f in fields(FinetuneConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        return load_config_file(FinetuneConfig, args.config, overrides)
    return config_from_mapping(FinetuneConfig, overrides)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from secure_assist.finetune import run_finetune

    summary = run_finetune(_config(args), progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from secure_assist.predict import predict_texts

    texts = list(args.text or [])
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            texts += [line.rstrip("\n") for line in handle if line.strip()]
    if not texts:
        raise SecureAssistError("give --text (repeatable) or --file with one text per line")
    for row in predict_texts(args.model_file, texts, progress=not args.quiet):
        print(json.dumps(row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="secure-assist", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser("finetune", help="PAE side-tuning: device + server, prints a JSON summary")
    _add_config_flags(finetune)
    finetune.add_argument("--overwrite", action="store_true", help="replace an earlier run in --workdir")
    finetune.add_argument("--quiet", action="store_true", help="no progress bars")
    finetune.set_defaults(handler=_cmd_finetune)

    predict = commands.add_parser("predict", help="predict locally with a fine-tuned model file")
    predict.add_argument("model_file", help="model.safetensors written by finetune")
    predict.add_argument("--text", action="append", help="a text to classify (repeatable)")
    predict.add_argument("--file", help="a file with one text per line")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `secure-assist` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SecureAssistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
