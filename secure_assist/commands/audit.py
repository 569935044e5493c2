"""`secure-assist audit`: fine-tune every protection variant, attack each server view, write reports."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from secure_assist.audit.config import AuditConfig

# Exit code when a DP variant's empirical ε lower bound exceeds its claimed ε.
EXIT_INCONSISTENT = 3

_HELP = {
    "model": "backbone (smollm2-135m, tiny-llama, a local HF directory, ...)",
    "variants": "comma-separated mechanisms to audit (secure_assist.mechanisms.MECHANISMS)",
    "attacks": "comma-separated attacks (default: every registered one; attacks.base.ATTACKS)",
    "epsilon": "target ε of the DP variants (gaussian, label_rr)",
    "dp_releases": "releases per neighbouring input of the distinguishing attack",
    "output": "folder for the variants' runs and report.{json,md,html}",
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The AuditConfig of the explicit flags (defaults otherwise)."""
    return AuditConfig(**{f.name: getattr(args, f.name) for f in fields(AuditConfig) if hasattr(args, f.name)})


def run(args: argparse.Namespace) -> int:
    """Run the audit, write the reports, print where (or the JSON report with --json)."""
    from secure_assist.audit.report import write_reports
    from secure_assist.audit.runner import run_audit

    config = config_from_args(args)
    report = run_audit(config, progress=not args.quiet)
    paths = write_reports(report, config.output)
    if args.json:
        print(json.dumps(report, indent=1))
    elif not args.quiet:
        for variant in report["variants"]:
            print(f"{variant['variant']}: {variant.get('verdict') or 'skipped: ' + variant['reason']}")
        print("reports: " + ", ".join(str(p) for p in paths))
    if not report["consistent"]:
        print("error: a DP variant's empirical ε lower bound exceeds its claimed ε (inconsistent)", file=sys.stderr)
        return EXIT_INCONSISTENT
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the subcommand to the CLI."""
    parser = commands.add_parser("audit", help="fine-tune each protection variant, run every attack, write reports")
    for field in fields(AuditConfig):
        kind = {"variants": _csv, "attacks": _csv, "epsilon": float}.get(field.name, type(field.default))
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind, default=argparse.SUPPRESS,
                            help=f"{_HELP.get(field.name, '')} (default: {field.default!r})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    parser.set_defaults(handler=run)
