"""`secure-assist attack`: run one server-side attack on a run and print its scores."""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence


def run(args: argparse.Namespace) -> int:
    """Run the attack and print its report (JSON or one line per metric)."""
    from secure_assist.audit.auditor import run_attack

    report = run_attack(args.name, args.workdir, seed=args.seed, progress=not args.quiet,
                        public_file=args.public_file, round_number=args.round)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def _attack_name(text: str) -> str:
    """A registered attack's name; checked when `attack` is parsed (as argparse checks choices),
    not when the parser is built, which must not import the attack modules."""
    from attacks.registry import all_attacks

    known = sorted(all_attacks())
    if text not in known:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(known)})")
    return text


def _round_number(text: str) -> int:
    """A boosting round's number: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid round: {text!r} (rounds count from 1)")
    return int(text)


class _HelpListingAttacks(argparse.Action):
    """`-h/--help` of `attack`: lists every attack, with its description, when help is asked for.
    Listing them imports every attack module (torch, scikit-learn), which building the parser
    must not do: the whole CLI would then start in seconds instead of a fraction of one."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from attacks.registry import all_attacks

        parser.description = "Attacks: " + "; ".join(f"{name}: {cls.DESCRIPTION}"
                                                     for name, cls in sorted(all_attacks().items()))
        parser.print_help()
        parser.exit()


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("attack", add_help=False, help="run a server-side attack on a run's view and score it")
    parser.add_argument("-h", "--help", action=_HelpListingAttacks, help="show this help message (and every attack) "
                                                                         "and exit")
    parser.add_argument("name", metavar="NAME", type=_attack_name, help="attack name (see above)")
    parser.add_argument("--workdir", "--transcript", dest="workdir", required=True,
                        help="run directory holding server/ (the view: transcript, cache, φ) and "
                             "device/ground_truth.jsonl")
    parser.add_argument("--public-file", help="the attacker's public data: a data file with the run's task columns "
                                              "(labeled examples, unlabeled text, candidates; generation: instruction "
                                              "rows, those the device uploaded left out); needed for a custom or "
                                              "generation task, default for a built-in one: its unused training rows")
    parser.add_argument("--round", type=_round_number, default=1, metavar="K",
                        help="the boosting round whose view is attacked (server_round<K>/, scored on its own ground "
                             "truth; default 1: server/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of public data sampling and bootstrap")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
