"""`secure-assist compare`: a resumable privacy-utility-cost sweep with a table and trade-off plots.

The data and training flags are `secure-assist finetune`'s own; the five swept fields
take lists instead (their singular finetune flags are aliases of the list flags).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from secure_assist.audit.config import FEDAVG_VARIANTS
from secure_assist.commands.finetune import add_config_flags, config_from_args
from secure_assist.compare.grid import DEFAULT_ATTACKS, DEFAULT_EPSILONS, DEFAULT_MECHANISMS, DEVICE_LOCAL, SweepAxes
from secure_assist.config import FinetuneConfig
from secure_assist.executors import add_executor_flags, executor_from_args
from secure_assist.mechanism_parameters import MECHANISM_PARAMETERS

# Exit code when some points failed (twice each); the others are computed and reported.
EXIT_POINTS_FAILED = 1


def _items(kind: Callable[[str], Any], separator: str = ",") -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part.strip()) for part in text.split(separator) if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a '{separator}'-separated list: {exc}") from exc
    return parse


def _layer_subset(text: str) -> tuple[int, ...] | None:
    return None if text == "all" else tuple(int(part) for part in text.split(",") if part)


def _sample_count(text: str) -> int | None:
    return None if text == "all" else int(text)


# dest, flags, parser, help
_AXES = (
    ("mechanisms", ("--mechanisms", "--mechanism"), _items(str),
     f"comma-separated mechanisms, '+' composes ({', '.join(MECHANISM_PARAMETERS)}; "
     f"default: {','.join(DEFAULT_MECHANISMS)})"),
    ("epsilons", ("--epsilons", "--epsilon"), _items(float),
     f"comma-separated target ε, applied to mechanisms that read ε (default: {DEFAULT_EPSILONS[0]:g})"),
    ("layer_subsets", ("--layer-subsets", "--layers"), _items(_layer_subset, "/"),
     "layer subsets separated by '/', each 'all' or comma-separated layers, e.g. all/1,2,3/28,29,30 (default: all)"),
    ("activation_noise_multipliers", ("--activation-noise-multipliers", "--activation-noise-multiplier"),
     _items(float), "comma-separated activation noise σ relative to --activation-clip; 0: none (default: 0)"),
    ("train_samples", ("--train-samples",), _items(_sample_count),
     f"comma-separated training sample counts, or 'all' (default: {FinetuneConfig.train_samples})"),
    ("attacks", ("--attacks",), _items(str),
     f"comma-separated label and alignment attacks (default: {','.join(DEFAULT_ATTACKS)})"),
)


def axes_from_args(args: argparse.Namespace) -> SweepAxes:
    """The sweep axes of the explicit list flags (SweepAxes defaults otherwise)."""
    given = {dest: getattr(args, "axis_" + dest) for dest, *_ in _AXES if hasattr(args, "axis_" + dest)}
    return SweepAxes(**given)


def run(args: argparse.Namespace) -> int:
    """Validate everything, sweep (resuming from finished points), write the outputs."""
    from secure_assist.compare.grid import expand
    from secure_assist.compare.report import write_outputs
    from secure_assist.compare.sweep import run_sweep

    # Absolute: a Ray worker may not share the driver's working directory.
    output = Path(args.output).resolve()
    base, axes = config_from_args(args), axes_from_args(args)
    if base.devices > 1:  # the points stay one device's runs (its share); the many-device rows come beside them
        from secure_assist.compare.devices import device_audit_config, device_rows_beside

        device_audit_config(base, axes, args.fedavg, output)  # its one-line errors before any point runs
    points = expand(base, axes, output, references=args.references)
    with executor_from_args(args) as executor:
        compare = run_sweep(points, output, progress=not args.quiet, announce=not args.quiet, executor=executor)
    if base.devices > 1:
        compare["devices"] = device_rows_beside(base, axes, args.fedavg, output, progress=not args.quiet)
    paths = write_outputs(compare, output)
    if args.json:
        print(json.dumps(compare, indent=1))
    elif not args.quiet:
        print(f"{len(points)} points: {compare['computed']} computed, {compare['cached']} cached, "
              f"{compare['skipped']} skipped, {compare['failed']} failed in {compare['wall_seconds']:.0f} s")
        print("outputs: " + ", ".join(str(p) for p in paths))
    if compare["failed"]:
        print(f"error: {compare['failed']} point(s) failed twice (their errors are in compare.json); "
              f"rerun to retry them", file=sys.stderr)
        return EXIT_POINTS_FAILED
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    # 'resolve': the list flags below replace finetune's single-value flags of the swept fields.
    parser = commands.add_parser("compare", conflict_handler="resolve",
                                 help="sweep mechanisms, ε, layers, activation noise and sample counts; "
                                      "resumable; table and trade-off plots")
    add_config_flags(parser)
    for dest, flags, kind, text in _AXES:
        parser.add_argument(*flags, dest="axis_" + dest, metavar="LIST", type=kind, default=argparse.SUPPRESS,
                            help=text)
    parser.add_argument("--output", "--workdir", dest="output", default="runs/compare",
                        help="folder for points/, runs/, compare.{json,md,csv} and the plots (default: runs/compare)")
    parser.add_argument("--references", nargs="?", const=(DEVICE_LOCAL,), default=(), metavar="LIST",
                        type=lambda text: tuple(dict.fromkeys(p for p in text.split(",") if p)),
                        help="add reference rows at each training sample count: device_local (the side network "
                             "trained on the device, nothing uploaded; the default without a list) and the "
                             "registered references scored on an evaluation split (secure_assist.references; an "
                             "unknown name is refused with the list)")
    parser.add_argument("--fedavg", metavar="LIST", type=_items(str), default=FEDAVG_VARIANTS,
                        help=f"with --devices N > 1: the federated-averaging rows beside the points (of "
                             f"{', '.join(FEDAVG_VARIANTS)}; default: all; '' for none)")
    add_executor_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    parser.add_argument("--json", action="store_true", help="print compare.json on stdout")
    parser.set_defaults(handler=run)
