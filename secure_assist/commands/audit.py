"""`secure-assist audit`: fine-tune every protection variant, attack each server view, write reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protocol.errors import UserInputError
from secure_assist.audit.config import AuditConfig
from secure_assist.audit.schema import DEVICE_SCHEMA
from secure_assist.commands import finetune as finetune_command
from secure_assist.executors import add_executor_flags, executor_from_args

# Exit code when a DP variant's empirical ε lower bound exceeds its claimed ε.
EXIT_INCONSISTENT = 3


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The AuditConfig given by --config and the explicit flags."""
    return finetune_command.config_from_args(args, AuditConfig)


def run(args: argparse.Namespace) -> int:
    """Run the audit, write the reports, print where (or the JSON report with --json)."""
    from secure_assist.audit.report import write_reports
    from secure_assist.audit.runner import run_audit

    config = config_from_args(args)
    if config.devices != 1 and args.executor != "local":
        # Refused, not ignored: the many-device rows run one after another in this process (FedAvg through
        # Flower's own simulation engine), so a Ray cluster asked for would sit idle.
        raise UserInputError(f"--executor {args.executor} is not supported with --devices {config.devices}: the "
                             "many-device audit runs in this process (drop --executor)")
    with executor_from_args(args) as executor:
        report = run_audit(config, progress=not args.quiet, executor=executor)
    paths = write_reports(report, config.output)
    if report["schema"] == DEVICE_SCHEMA:
        return _many_devices_output(report, paths, args)
    if args.json:
        print(json.dumps(report, indent=1))
    elif not args.quiet:
        for sentence in report["conclusions"]:
            print(sentence)
        for variant in report["variants"]:
            if variant["status"] != "ok":
                print(f"{variant['variant']}: {variant['status']}: {variant['reason']}")
        print("reports: " + ", ".join(str(p) for p in paths))
    failed = [v["variant"] for v in report["variants"] if v["status"] == "failed"]
    if failed:
        print(f"error: variant(s) {', '.join(failed)} failed twice (see the report); rerun to retry", file=sys.stderr)
        return 1
    if not report["consistent"]:
        print("error: a DP variant's empirical ε lower bound exceeds its claimed ε (inconsistent)", file=sys.stderr)
        return EXIT_INCONSISTENT
    return 0


def _many_devices_output(report: dict[str, Any], paths: list[Path], args: argparse.Namespace) -> int:
    """Print a many-device audit's conclusions (or its JSON); 0, as every row that ran is reported."""
    from secure_assist.audit.device_report import conclusions

    if args.json:
        print(json.dumps(report, indent=1))
    elif not args.quiet:
        for sentence in conclusions(report):
            print(sentence)
        print("reports: " + ", ".join(str(p) for p in paths))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("audit", help="fine-tune each protection variant and the reference rows, run every "
                                               "attack, write the decision page")
    finetune_command.add_config_flags(parser, AuditConfig)
    add_executor_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.set_defaults(handler=run)
