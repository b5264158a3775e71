"""The command-line reference page (``docs/cli.md``), rendered from bench's argparse parsers.

The page is generated, never written by hand: ``python scripts/cli_reference.py`` rewrites it, and
``tests/test_docs.py`` fails when the checked-in page differs from what the parsers say. The
rendering reads the parsers' actions directly rather than argparse's help formatter, whose layout
depends on the terminal's width and on the Python version, and writes the home folder that
defaults are resolved against as ``<home>``.
"""

from __future__ import annotations

import argparse
import re

from bench import paths

HEADER = """# Command-line reference

Generated from bench's own argparse parsers by `python scripts/cli_reference.py`; a test fails
when this page and the parsers disagree. `bench COMMAND --help` prints the same.
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each sub-command's parser, by name, in the order ``bench --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each sub-command's one-line help, as ``bench --help`` shows it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def escape(text: str) -> str:
    """Text safe inside a markdown table cell: no HTML, emphasis or column breaks."""
    text = re.sub(r"\s+", " ", text).strip()
    for ch in "\\*_|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def metavar(action: argparse.Action) -> str:
    """What follows the flag: nothing for a switch, else its metavar or choices."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper()


def expanded_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's ``%(default)s``-style fields filled in."""
    if not action.help:
        return ""
    fields = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    fields["prog"] = prog
    if action.choices is not None:
        fields["choices"] = ", ".join(map(str, action.choices))
    return portable(action.help % fields)


def portable(text: str) -> str:
    """``text`` with this checkout's home folder written ``<home>``: ``--help`` shows the real
    path, the page holds what is true for every checkout."""
    return text.replace(str(paths.home()), "<home>")


def option_row(action: argparse.Action, prog: str) -> str:
    """One table row: the flag (or positional), its argument and its help (defaults in it)."""
    names = ", ".join(action.option_strings) or action.dest
    arg = metavar(action)
    flag = f"`{names} {arg}`" if arg else f"`{names}`"
    return f"| {flag} | {escape(expanded_help(action, prog))} |"


def command_section(name: str, summary: str, sub: argparse.ArgumentParser) -> list[str]:
    """The section of one sub-command: its summary, description and options table."""
    lines = [f"## `bench {name}`", "", escape(summary), ""]
    if sub.description:
        lines += [sub.description.strip(), ""]
    actions = [a for a in sub._actions if a.help is not argparse.SUPPRESS]
    lines += ["| option | what it does |", "| --- | --- |"]
    lines += [option_row(a, sub.prog) for a in actions]
    if sub.epilog:
        lines += ["", sub.epilog.strip()]
    return lines + [""]


def render(parser: argparse.ArgumentParser) -> str:
    """The whole reference page for ``parser`` (bench's top-level parser)."""
    lines = [HEADER]
    helps = summaries(parser)
    for name, sub in subcommands(parser).items():
        lines += command_section(name, helps.get(name, ""), sub)
    return "\n".join(lines).rstrip() + "\n"
