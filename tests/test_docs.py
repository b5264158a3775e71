"""Documentation that cannot drift from the code: the CLI reference page is what the parsers say,
every ``bench ...`` command shown in README.md and docs/ parses with bench's own parser, every
figure names the run it came from, and the MkDocs site builds with ``--strict``."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.cli import build_parser
from bench.clidoc import render, subcommands
from bench.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Fenced blocks in these languages are commands a user may paste; a ```text block is a synopsis
# with placeholders such as [--seed 0 | --seeds 0,1,2] and is not parsed.
SHELL_FENCES = {"bash", "sh", "console", "shell"}
PROGRAM = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\$\s+)?(?:\.venv/bin/)?(?:bench|python -m bench)\s")


def fenced(text: str, shell: bool) -> list[str]:
    """The ``bench ...`` lines of shell code blocks (``shell``) or of the other blocks
    (synopses), with continuation lines (after a backslash, or indented) joined. A block may be
    indented (inside a list item): its fence's indent is removed from its lines."""
    commands: list[str] = []
    lang, indent = None, 0
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            opening = lang is None
            indent = len(line) - len(line.lstrip())
            lang = (line.strip()[3:].strip() or "text") if opening else None
        elif lang is not None and (lang in SHELL_FENCES) == shell:
            line = line[indent:]
            if commands and (commands[-1].endswith("\\") or line[:1].isspace()):
                commands[-1] = commands[-1].rstrip("\\") + " " + line.strip()
            else:
                commands.append(line.strip())
    return [c for c in commands if PROGRAM.match(c + " ")]


def fenced_commands(text: str) -> list[str]:
    """The ``bench ...`` commands of shell code blocks: a user may paste them."""
    return fenced(text, shell=True)


def synopses(text: str) -> list[str]:
    """The ``bench ...`` lines of the other code blocks (placeholders, brackets) and of inline
    code: they are checked for real commands and flags, not parsed."""
    return fenced(text, shell=False) + inline_commands(text)


def inline_commands(text: str) -> list[str]:
    """``bench ...`` commands written in inline code in the prose."""
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    return [s for s in spans if PROGRAM.match(s + " ")]


def argv_of(command: str, synopsis: bool = False) -> list[str]:
    """The arguments after ``bench``, a trailing ``# comment`` removed; in a command (not a
    ``synopsis``, where ``|`` separates alternatives) also what follows a pipe or redirection."""
    words = shlex.split(command, comments=True)
    start = next(i for i, w in enumerate(words) if w == "bench" or w.endswith("/bench"))
    words = words[start + 1 :]
    cut = [i for i, w in enumerate(words) if w in {"|", ">", "2>", "&&", ";", "&"}]
    return words[: cut[0]] if cut and not synopsis else words


def flags_of(argv: list[str]) -> list[str]:
    """The ``--flag`` words of a command or synopsis, brackets and ``=value`` removed."""
    words = [w.strip("[]") for w in argv]
    return [w.split("=")[0] for w in words if w.startswith("--")]


def mention_errors(argv: list[str]) -> list[str]:
    """What is wrong with a command mentioned in the prose: an unknown command or flag. A mention
    (`bench report --rank-eps`) names a flag without its value, so it is checked, not parsed."""
    subs = subcommands(build_parser())
    if not argv or argv[0] in {"...", "COMMAND"}:  # "bench ...", "bench COMMAND --help"
        return []
    if argv[0] not in subs:
        return [f"no command {argv[0]!r}"]
    known = subs[argv[0]]._option_string_actions
    return [f"{argv[0]} has no {flag}" for flag in flags_of(argv[1:]) if flag not in known]


def shown(extract) -> list[tuple[str, str]]:
    """(page, command) for every command ``extract`` finds in the README and docs."""
    return [(p.name, c) for p in PAGES for c in extract(p.read_text(encoding="utf-8"))]


def test_the_cli_reference_page_is_what_the_parsers_say():
    page = ROOT / "docs" / "cli.md"
    assert page.read_text(encoding="utf-8") == render(build_parser()), (
        "docs/cli.md is stale: run python scripts/cli_reference.py"
    )


def test_the_docs_show_commands_of_every_kind():
    commands = {argv_of(c)[0] for _, c in shown(fenced_commands)}
    assert {"train", "eval", "report", "quick", "sweep", "perf", "list"} <= commands


@pytest.mark.parametrize("page,command", shown(fenced_commands))
def test_every_command_shown_parses_with_benchs_parser(page, command):
    argv = argv_of(command)
    try:
        build_parser().parse_args(argv)
    except UsageError as exc:
        pytest.fail(f"{page}: `{command}` does not parse: {exc}")
    except SystemExit as exc:  # --help and --version print and exit 0
        assert exc.code == 0, f"{page}: `{command}` exits {exc.code}"


@pytest.mark.parametrize("page,command", shown(synopses))
def test_every_command_mentioned_names_real_flags(page, command):
    assert not mention_errors(argv_of(command, synopsis=True)), f"{page}: `{command}`"


def test_a_wrong_flag_in_a_shown_command_is_caught():
    # the check above can fail: a misspelt flag in a shown command is refused by the parser
    (cmd,) = fenced_commands("```bash\nbench eval --atack pgd --all\n```\n")
    with pytest.raises(UsageError):
        build_parser().parse_args(argv_of(cmd))
    assert mention_errors(["report", "--rank-epss"]) == ["report has no --rank-epss"]
    assert mention_errors(["evaluate"]) == ["no command 'evaluate'"]


def test_extraction_joins_continuations_and_skips_synopses():
    text = "```bash\nbench train --defense pgd-at \\\n  --epochs 3  # note\n```\n"
    text += "```text\nbench train --defense D [--seed 0 | --seeds 0,1,2]\n```\n"
    text += (
        "- a list item:\n\n    ```bash\n    bench eval --attack fgsm \\\n        --n 100\n    ```\n"
    )
    text += "Then `BENCH_HOME=/tmp/x bench report --out r` and `bench`.\n"
    assert [argv_of(c) for c in fenced_commands(text)] == [
        ["train", "--defense", "pgd-at", "--epochs", "3"],
        ["eval", "--attack", "fgsm", "--n", "100"],
    ]
    synopsis, mention, bare = [argv_of(c, synopsis=True) for c in synopses(text)]
    assert flags_of(synopsis) == ["--defense", "--seed", "--seeds"]
    assert mention == ["report", "--out", "r"] and bare == []


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a page."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def api_calls() -> list[tuple[str, ast.Call]]:
    """(page, call) for every ``bench.<function>(...)`` call in the docs' Python blocks."""
    calls = []
    for page in PAGES:
        for block in python_blocks(page.read_text(encoding="utf-8")):
            for node in ast.walk(ast.parse(block)):
                func = getattr(node, "func", None)
                if isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "bench":
                    calls.append((page.name, node))
    return calls


def test_the_docs_call_the_python_api_with_real_keywords():
    calls = api_calls()
    assert calls, "the docs show no call of bench's Python API"
    for page, call in calls:
        function = getattr(bench, call.func.attr, None)
        assert function is not None, f"{page}: bench has no {call.func.attr}"
        known = inspect.signature(function).parameters
        unknown = [k.arg for k in call.keywords if k.arg not in known]
        assert not unknown, f"{page}: bench.{call.func.attr} has no keyword {unknown}"


FIGURE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_figure_names_its_run(page):
    # a figure is evidence: the lines around it say when, on what machine and at which commit
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        for path in FIGURE.findall(line):
            near = " ".join(lines[max(0, i - 6) : i + 6])
            assert re.search(r"20\d\d-\d\d-\d\d", near), f"{page.name}: {path} has no date"
            assert re.search(r"commit [0-9a-f]{7}", near), f"{page.name}: {path} has no commit"
            assert re.search(r"CPU cores|GPU", near), f"{page.name}: {path} names no machine"
            assert (page.parent / path).is_file(), f"{page.name}: {path} is missing"


def test_the_documentation_site_builds_strictly(tmp_path):
    # a broken link, a missing page or a page left out of the nav fails the build
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "cli" / "index.html").is_file()
