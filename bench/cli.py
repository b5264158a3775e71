"""The ``bench`` command line: ``bench train | eval | report | quick | sweep | perf | list``.

Every command module in :mod:`bench.commands` has ``add_parser(subparsers)``, which registers its
sub-parser with ``func=run``, and ``run(args) -> int``. Bad input of any kind (a
:class:`~bench.errors.UsageError`, or an argparse error) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from bench import __version__
from bench.commands import command_modules
from bench.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``bench: error: ...``, exit 2) and no abbreviated flags
    (``--ep`` would be ambiguous between ``--epochs`` and ``--eps``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog.split()[-1]}: {message}" if " " in self.prog else message)


def build_parser() -> Parser:
    """The full parser, with every command registered."""
    parser = Parser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in command_modules():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A command may say what it left and how to continue (bench train: the run to resume).
        detail = str(exc)
        print(f"bench: interrupted{'; ' + detail if detail else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
