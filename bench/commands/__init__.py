"""The command modules; each has ``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

from types import ModuleType


def command_modules() -> list[ModuleType]:
    """The commands in the order ``bench --help`` lists them (imported on first use)."""
    # here: importing the package (for bench.commands.common, say) must not import every command
    from bench.commands import eval as eval_cmd
    from bench.commands import list as list_cmd
    from bench.commands import perf, quick, report, sweep, train

    return [train, eval_cmd, report, quick, sweep, perf, list_cmd]
