"""`secure-assist predict`: local prediction with a fine-tuned model file (a label, or a generated answer)."""

from __future__ import annotations

import argparse
import json

from protocol.errors import UserInputError


def run(args: argparse.Namespace) -> int:
    """Print one JSON line per text."""
    from secure_assist.predict import predict_texts

    texts = list(args.text or [])
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            texts += [line.rstrip("\n") for line in handle if line.strip()]
    if not texts:
        raise UserInputError("give --text (repeatable) or --file with one text per line")
    for row in predict_texts(args.model_file, texts, progress=not args.quiet):
        print(json.dumps(row))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("predict", help="predict locally with a fine-tuned model file")
    parser.add_argument("model_file", help="model.safetensors written by finetune")
    parser.add_argument("--text", action="append", help="a text to classify, or an instruction to answer with a "
                        "generation model (repeatable)")
    parser.add_argument("--file", help="a file with one text per line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
