"""The `mzsr` command: degrade, import-tf, estimate-kernel, upscale, evaluate. The parser
(`mzsr.cli.parser`) says what each takes; `mzsr.cli.commands` runs them, thin over the package."""

from __future__ import annotations

import sys
import warnings

from mzsr import MZSRError, error_line
from mzsr.cli.commands import COMMANDS
from mzsr.cli.parser import build_parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. a kernel normalised to sum 1) as one line, like errors."""
    print(f"mzsr: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.scale < 2:
            raise MZSRError(f"--scale must be an integer >= 2, got {args.scale}")
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except MZSRError as e:
        if args.debug:
            raise
        print(error_line(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mzsr: interrupted", file=sys.stderr)
        return 130
