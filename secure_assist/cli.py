"""The `secure-assist` command line.

Every user mistake ends as one `error:` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from protocol.errors import SecureAssistError
from secure_assist.commands import attack, audit, compare, device, finetune, keys, predict, serve

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# The one list of subcommands: each module has `register(subparsers)`.
COMMANDS = (finetune, predict, attack, audit, compare, keys, serve, device)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="secure-assist",
                                     description="Run, secure and audit server-assisted side-tuning of LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `secure-assist` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (SecureAssistError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
