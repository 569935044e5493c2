"""The `secure-assist` command line.

Every user mistake ends as one `error:` line and exit code 2, never a traceback; a
privacy warning, or a request the data could not fully serve, is one `warning:` line.

Building the parser imports no command's heavy dependencies (torch, transformers,
TenSEAL): each handler imports them when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TextIO

from protocol.errors import CappedRequestWarning, PrivacyWarning, SecureAssistError
from secure_assist.commands import attack, audit, compare, device, finetune, keys, predict, serve

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# The one list of subcommands: each module has `register(subparsers)`.
COMMANDS = (finetune, predict, attack, audit, compare, keys, serve, device)
# The warnings addressed to the CLI's user, each shown as one line.
LINE_WARNINGS = (PrivacyWarning, CappedRequestWarning)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="secure-assist",
                                     description="Run, secure and audit server-assisted side-tuning of LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


@contextmanager
def toolkit_warnings_as_lines() -> Iterator[None]:
    """Within the block, show each of `LINE_WARNINGS` as one line on stderr,
    `warning: mechanism 'none': ... sent to the server unprotected`, instead of Python's
    format with the emitting file, line number and source line (which say nothing to a
    CLI user). Other warnings, and library callers outside the CLI, keep the usual format
    and filters."""
    shown_before = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> Any:
        if not issubclass(category, LINE_WARNINGS):
            return shown_before(message, category, filename, lineno, file, line)
        print(f"warning: {message}", file=sys.stderr if file is None else file)
        return None

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown_before


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `secure-assist` console script."""
    args = build_parser().parse_args(argv)
    try:
        with toolkit_warnings_as_lines():
            return args.handler(args)
    except (SecureAssistError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
