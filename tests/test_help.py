"""What a newcomer reads first: the help of every command tells the truth (issue 21)."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.commands import command_modules


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv + ["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_bench_help_names_the_commands_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help([], capsys).split())
    names = [m.__name__.rsplit(".", 1)[-1] for m in command_modules()]
    assert "export" not in text
    for name in ("train", "eval", "report", "quick", "sweep", "perf", "list"):
        assert name in names and name in text


def test_eval_help_names_the_weights_file_and_the_factory_forms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(_help(["eval"], capsys).split())
    assert "weights.safetensors" in text and "weights.pt" not in text
    assert "path/file.py:function" in text and "--norm" in text


def test_quick_and_list_help_say_their_defaults_and_purpose(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quick = " ".join(_help(["quick"], capsys).split())
    for default in ("(default fashion-mnist)", "(default cnn)", "(default 3)", "(default 10000)"):
        assert default in quick
    assert "list data sets, models, defenses and attacks" in _help(["list"], capsys)


def test_bench_list_gives_each_attacks_threat_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = {
        line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line[:2] == "  "
    }
    assert "norms Linf, L2, L1" in lines["autoattack"] and "norms Linf  " in lines["mifgsm"] + "  "
