"""`secure-assist finetune`: PAE side-tuning, device and server in one process."""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import fields
from typing import Any, Callable

from secure_assist.config import FinetuneConfig, config_from_mapping, load_config_file


def _items(kind: Callable[[str], Any], separator: str) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(separator) if part != "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a '{separator}'-separated list: {exc}") from exc
    return parse


def flag_parser(annotation: Any, separator: str = ",") -> Callable[[str], Any]:
    """The argparse type of a config field, from its annotation: str, int, float, an
    optional one, or a tuple of them (a `separator`-separated list)."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)] if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else [annotation]
    kind = options[0]
    if typing.get_origin(kind) is tuple:
        return _items(typing.get_args(kind)[0], separator)
    return kind


def add_config_flags(parser: argparse.ArgumentParser, config_class: type = FinetuneConfig,
                     skip: tuple[str, ...] = ()) -> None:
    """One flag per config field (type and help from the field itself), plus --config for a JSON file."""
    parser.add_argument("--config", help=f"JSON file with {config_class.__name__} keys (flags override it)")
    hints = typing.get_type_hints(config_class)
    for item in fields(config_class):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        text = f"{item.metadata.get('help', '')} (default: {item.default!r})"
        if hints[item.name] is bool:
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
            continue
        kind = flag_parser(hints[item.name], item.metadata.get("separator", ","))
        parser.add_argument(flag, dest=item.name, type=kind, default=argparse.SUPPRESS, help=text)


def config_from_args(args: argparse.Namespace, config_class: type = FinetuneConfig) -> Any:
    """The config given by --config and the explicit flags."""
    names = {f.name for f in fields(config_class)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        return load_config_file(config_class, args.config, overrides)
    return config_from_mapping(config_class, overrides)


def run(args: argparse.Namespace) -> int:
    """Fine-tune and print the JSON summary."""
    from secure_assist.finetune import run_finetune

    summary = run_finetune(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps(summary.to_json(), indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("finetune", help="PAE side-tuning: device + server, prints a JSON summary")
    add_config_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --workdir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
