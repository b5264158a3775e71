"""What a newcomer reads in the first hour (issue 21): the terminal table fits a terminal and
writes its unit once per number; the leaderboard keeps why a row is not ranked out of its flags,
aligns text left and numbers right and names the training-set size; results.csv is in % with
intervals; the Python API names its keywords, not the command line's flags; ``bench list
--runs`` and ``--forget`` show and remove a store's runs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import factories
import pytest
import torch
from conftest import tiny_target
from test_report import STD, add, add_run, section

import bench
from bench.attacks import make_attack
from bench.cli import main
from bench.errors import UsageError
from bench.evaluation.diagnostics import Finding
from bench.evaluation.outcome import Evaluation
from bench.evaluation.plan import Settings, check_settings
from bench.evaluation.results import WorstPoint, wilson
from bench.evaluation.walk import GridResult
from bench.params import API
from bench.report import write_report
from bench.report.export import COLUMNS
from bench.store import DiagnosticRow, Store

GRID = [i / 255 for i in range(9)]  # the default Linf grid: 0, 1/255, ..., 8/255
E8 = 8 / 255
CELL = re.compile(r"^\d{1,3}\.\d% \(\d{1,3}\.\d-\d{1,3}\.\d\)$")  # 72.0% (63.1-79.6)


# ------------------------------------------------------------------ the terminal table (7, 13)


def _flags(n: int, robust: int) -> torch.Tensor:
    return torch.arange(n) < robust


def _text(flags: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in flags.tolist())


def _evaluation(n: int = 1000, device: str = "cpu:2threads", given: bool = False) -> Evaluation:
    """An evaluation of the default grid and attacks, built from flags (no attack runs): the
    widest cells there are (100.0% beside single digits) under the usual attack names."""
    x, y = torch.zeros(n, 1, 28, 28), torch.zeros(n, dtype=torch.long)
    target = tiny_target(factories.tiny_fmnist(), x, y, run_id="cnn-fmnist")
    target.given = given
    attacks = [make_attack("fgsm"), make_attack("pgd"), make_attack("autoattack")]
    results = [
        GridResult(a, GRID, [_flags(n, n - k * k * 5 * (i + 1)) for k in range(9)], [0.0] * 9)
        for i, a in enumerate(attacks)
    ]
    worst = [
        WorstPoint(e, _text(results[-1].flags[k]), [a.name for a in attacks])
        for k, e in enumerate(GRID)
    ]
    settings = Settings(attacks, GRID, 500, 0, progress=False)
    passed = Finding("gradients", False, "cheap", "no zero gradients")
    ev = Evaluation(target, settings, _flags(n, n), results, worst, [passed])
    ev.device = device
    return ev


def _grid_cells(table: str) -> list[list[str]]:
    lines = table.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[rule + 1 : rule + 1 + len(GRID)]]


def test_terminal_table_fits_a_terminal_and_writes_the_unit_after_each_number() -> None:
    table = _evaluation().table()
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert "clean accuracy 100.0% (99.6-100.0), n=1000" in table
    assert "n=1000 per cell" in table  # the n of every cell, stated once
    rows = _grid_cells(table)
    assert [r[0] for r in rows] == [str(k) for k in range(9)]  # one row per eps (x/255)
    for row in rows:
        assert len(row) == 5 and all(CELL.match(c) for c in row[1:]), row
    head = next(line for line in lines if line.startswith("eps/255"))
    assert head.split() == ["eps/255", "fgsm", "pgd", "autoattack", "any"]
    assert not re.search(r"\)%", table)  # never "14.0 (7.0-26.2)%"


def test_terminal_table_always_names_the_device() -> None:
    for given, shown in (("cuda:NVIDIA H200", "device cuda:NVIDIA H200"), ("", "device unknown")):
        first = _evaluation(n=50, device=given).table().splitlines()[0]
        assert first.endswith(shown) and "weights" in first, first


def test_terminal_table_says_the_points_are_the_callers_tensors() -> None:
    ours = _evaluation(n=50, given=True).table().splitlines()
    assert "fashion-mnist" not in "\n".join(ours) and "first 50 test points" not in "\n".join(ours)
    assert ours[1].startswith("points: the caller's x, y (n=50; not a data set's test points)")
    split = _evaluation(n=50).table().splitlines()
    assert "(fashion-mnist," in split[0]
    assert split[1].startswith("points: the first 50 test points of fashion-mnist")


def test_cells_with_another_n_say_it() -> None:
    ev = _evaluation(n=50)
    ev.results[0].flags[3] = _flags(40, 20)  # a cell of 40 points in a table of 50
    cell = _grid_cells(ev.table())[3][1]
    assert cell.startswith("50.0% (") and cell.endswith(" n=40")


# --------------------------------------------------------------------------- the API (13)


def test_api_errors_name_the_python_keywords(tmp_path: Path, fmnist_dir: Path) -> None:
    model = factories.tiny_fmnist()
    bad = {
        "n must be a whole number in 1..": dict(n=0),
        "n=129 is larger than the fashion-mnist test split (128 points)": dict(n=129),
        "batch_size must be a whole number in 1..1000000, got 0": dict(batch_size=0),
        "seed must be a whole number in 0..2**63-1, got -1": dict(seed=-1),
        "device='tpu'": dict(device="tpu"),
        "attacks names no attack": dict(attacks=[]),
        "attack pgd is listed twice in attacks": dict(attacks=["pgd", "pgd"]),
        "params names attack fgsm, not among attacks pgd": dict(
            attacks="pgd", params={"fgsm": {"steps": 3}}
        ),
        "attack pgd has no parameter 'stepz'": dict(attacks="pgd", params={"pgd": {"stepz": 3}}),
        "store= keeps evaluations on a data set's test split": dict(
            store=tmp_path / "s.sqlite", x=torch.rand(2, 1, 28, 28), y=torch.tensor([0, 1])
        ),
    }
    for message, kw in bad.items():
        with pytest.raises(UsageError) as err:
            bench.evaluate_model(model, eps="0,1/255", data_dir=fmnist_dir, **kw)  # type: ignore[arg-type]
        assert message in str(err.value) and "--" not in str(err.value), (kw, str(err.value))
    assert not (tmp_path / "s.sqlite").exists()


def test_shared_checks_keep_the_command_lines_flags() -> None:
    fgsm = [make_attack("fgsm")]
    with pytest.raises(UsageError, match="^--batch-size must be"):
        check_settings(fgsm, GRID, 0, 0)
    with pytest.raises(UsageError, match="^batch_size must be"):
        check_settings(fgsm, GRID, 0, 0, API)
    with pytest.raises(UsageError, match="^--seed must be"):
        check_settings(fgsm, GRID, 1, -1)


# ------------------------------------------------------------------------ the leaderboard (8)


def _store(db: Path, tmp_path: Path) -> None:
    """``small`` (500 training images, ranked), ``noaa`` (no AutoAttack: not ranked, nothing
    flagged) and ``zoo`` (a model bench did not train: size unknown)."""
    with Store(db) as s:
        add_run(s, "small", fp="sha256:s", train_size=500, path=str(tmp_path / "small"))
        add(
            s, "small", "autoattack", STD, [0.0, E8], {0.0: range(18), E8: range(9)}, 20, "sha256:s"
        )
        add_run(s, "noaa", fp="sha256:n", defense="pgd-at", train_size=60000)
        add(
            s,
            "noaa",
            "pgd",
            {"steps": 10},
            [0.0, E8],
            {0.0: range(19), E8: range(12)},
            20,
            "sha256:n",
        )
        add_run(s, "zoo", fp="sha256:z", defense="external")
        add(s, "zoo", "autoattack", STD, [0.0, E8], {0.0: range(17), E8: range(3)}, 20, "sha256:z")


def test_leaderboard_keeps_not_ranked_out_of_flags_and_names_the_training_size(
    tmp_path: Path,
) -> None:
    db = tmp_path / "r.sqlite"
    _store(db, tmp_path)
    md = write_report(db, tmp_path / "out", images=False).leaderboard.read_text()
    rows = {r["run id"]: r for r in section(md, "fashion-mnist")}
    noaa = rows["`noaa`"]
    assert noaa["rank"] == "not ranked: no standard AutoAttack at the ranking eps"
    assert noaa["flags"] == "none" and noaa["intervals overlap with rank"] == "n/a (not ranked)"
    assert rows["`small`"]["rank"] == "1" and rows["`zoo`"]["rank"] == "2"
    assert rows["`small`"]["intervals overlap with rank"] == "2"
    assert rows["`small`"]["training images"] == "500"
    assert noaa["training images"] == "60000" and rows["`zoo`"]["training images"] == "–"
    assert "- Training images: 500, 60000" in md


def test_leaderboard_aligns_text_left_and_numbers_right(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _store(db, tmp_path)
    md = write_report(db, tmp_path / "out", images=False).leaderboard.read_text()
    lines = md.splitlines()
    start = lines.index("## fashion-mnist")
    head_at = next(i for i in range(start, len(lines)) if lines[i].startswith("| rank"))
    head = [c.strip() for c in lines[head_at].strip("|").split(" | ")]
    align = dict(zip(head, (c.strip() for c in lines[head_at + 1].strip("|").split(" | "))))
    for text in ("rank", "defense", "model", "run id", "intervals overlap with rank", "flags"):
        assert align[text] == ":---", text
    for number in ("clean", "worst case", "n", "training images", "epochs", "training time"):
        assert align[number] == "---:", number


# ------------------------------------------------------------------------- results.csv (10)


def test_results_csv_is_in_percent_with_intervals_and_n(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _store(db, tmp_path)
    files = write_report(db, tmp_path / "out", images=False)
    with files.csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert "robust_acc" not in COLUMNS and "clean_acc" not in COLUMNS
    row = next(r for r in rows if r["run_id"] == "small" and r["eps_255"] == "8.0")
    lo, hi = wilson(9, 20)
    assert float(row["robust_accuracy_pct"]) == 45.0 and row["robust_count"] == "9"
    assert float(row["robust_ci95_lower_pct"]) == round(100 * lo, 2)
    assert float(row["robust_ci95_upper_pct"]) == round(100 * hi, 2)
    assert row["n"] == "20" and float(row["clean_accuracy_pct"]) == 90.0
    assert float(row["clean_ci95_lower_pct"]) < 90.0 < float(row["clean_ci95_upper_pct"])
    doc = json.loads(files.results_json.read_text())
    same = next(r for r in doc["results"] if r["run_id"] == "small" and r["eps_255"] == 8.0)
    assert same["robust_accuracy_pct"] == 45.0 and same["robust_ci95_lower_pct"] == round(
        100 * lo, 2
    )


# ------------------------------------------------------------ bench list --runs / --forget (22)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_list_runs_shows_missing_checkpoints_and_forget_removes_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "r.sqlite"
    (tmp_path / "small").mkdir()
    _store(db, tmp_path)
    with Store(db) as s:  # a finding and a kept batch of the run to forget
        s.write_diagnostics(
            [DiagnosticRow("noaa", "sha256:n", 20, "gradients", "", False, "cheap", "ok", {}, "")]
        )
        s.write_batch("noaa", "step", 0, "1" * 20, 0.1)
    rc, out, err = _cli(["list", "--runs", "--db", str(db)], capsys)
    assert rc == 0, err
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    assert lines["small"][1:4] == ["checkpoint", "2", "exists"]
    assert lines["noaa"][1:4] == ["checkpoint", "2", "MISSING"]  # /ckpt/noaa is gone
    assert "bench list --forget RUN_ID" in out

    rc, out, err = _cli(["list", "--forget", "noaa", "--db", str(db)], capsys)
    assert rc == 0, err
    assert "2 result rows, 1 finding, 1 batch row and 1 run record deleted" in out
    with Store(db, readonly=True) as s:
        assert s.run_ids() == ["small", "zoo"] and "noaa" not in s.result_counts()
    md = write_report(db, tmp_path / "out", images=False).leaderboard.read_text()
    assert "`noaa`" not in md

    before = db.read_bytes()
    rc, out, err = _cli(["list", "--forget", "nope", "--db", str(db)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "small, zoo" in err and "'nope'" in err
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--db", "{db}"], "--db goes with --runs or --forget"),
        (["list", "--runs", "--forget", "x"], "not allowed with argument"),
        (["list", "--runs", "--db", "{missing}"], "does not exist"),
        (["list", "--forget", "x", "--db", "{missing}"], "does not exist"),
    ],
)
def test_list_runs_bad_input_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.sqlite"
    argv = [a.format(db=tmp_path / "r.sqlite", missing=missing) for a in argv]
    rc, _, err = _cli(argv, capsys)
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not missing.exists()


def test_forget_on_an_empty_store_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "empty.sqlite"
    Store(db).close()
    rc, _, err = _cli(["list", "--forget", "x", "--db", str(db)], capsys)
    assert rc == 2 and "holds no runs" in err
