"""RobustBench out and in.

Out: every ``json/<run-id>.json`` of ``bench report`` says whether its numbers could be submitted
to RobustBench's Linf leaderboard, and every reason why not (a data set RobustBench does not
rank, fewer points than the full test set, no standard AutoAttack, another eps, a flagged
evaluation).

In: ``bench eval --robustbench NAME --model-info DIR`` records the authors' published clean and
AutoAttack accuracy; ``bench report`` shows them beside ours in the leaderboard and the JSON, and
says so when no model-info was given. End to end and offline: a real zoo entry (cifar10 Linf
Wong2020Fast) with random weights in robustbench's layout, a CIFAR-10 test file in the official
pickled format, and a model-info file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.report import write_report
from bench.store import DiagnosticRow, ResultRow, RunRow, Store

pytestmark = pytest.mark.usefixtures("one_thread")

E8, E4 = 8 / 255, 4 / 255
STANDARD = {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}
CUSTOM = {"version": "custom", "attacks": ["apgd-ce"]}


def _flags(n: int, robust: int) -> str:
    return "1" * robust + "0" * (n - robust)


def add_model(
    store: Store,
    run_id: str,
    *,
    dataset: str = "cifar10",
    n: int = 10_000,
    eps: float = E8,
    aa: dict[str, Any] = STANDARD,
    kind: str = "checkpoint",
    run: dict[str, Any] | None = None,
    flagged: bool = False,
) -> None:
    """A model with clean and AutoAttack rows at ``eps`` on ``n`` points (60% clean, 40% robust)."""
    fp = f"sha256:{run_id}"
    store.claim_run(
        RunRow(
            run_id,
            f"/m/{run_id}",
            dataset,
            "net",
            "external",
            {},
            None,
            None,
            None,
            {"dataset": dataset, "model": "net"},
            run or {},
            fp,
            kind,
        ),
        "2026-01-01",
    )
    grid = [0.0, eps]
    for e, robust in ((0.0, int(0.6 * n)), (eps, int(0.4 * n))):
        f = _flags(n, robust)
        store.write_result(
            ResultRow(
                run_id,
                "autoattack",
                aa,
                e,
                n,
                0.6,
                f.count("1") / n,
                1.0,
                "cpu",
                {"torch": "2"},
                f,
                0,
                500,
                grid,
                fp,
                "2026-01-01",
            )
        )
    if flagged:
        store.write_diagnostics(
            [
                DiagnosticRow(
                    run_id,
                    fp,
                    n,
                    "gradients",
                    "",
                    True,
                    "test",
                    "zero gradients",
                    {},
                    "adaptive attack",
                    "2026-01-01",
                )
            ]
        )


def _json(out: Path, run_id: str) -> dict[str, Any]:
    return json.loads((out / "json" / f"{run_id}.json").read_text())


def test_submission_says_why_not(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    with Store(db) as s:
        add_model(s, "ready")  # cifar10, 10,000 points, standard AutoAttack at 8/255
        add_model(s, "few-points", n=200)
        add_model(s, "custom-aa", aa=CUSTOM)
        add_model(s, "flagged", flagged=True)
        add_model(s, "c100-ready", dataset="cifar100")
        add_model(s, "fmnist", dataset="fashion-mnist", n=200)
        add_model(s, "svhn", dataset="svhn", eps=E4)
    out = tmp_path / "out"
    write_report(db, out)
    sub = {
        rid: _json(out, rid)["robustbench_submission"]
        for rid in ("ready", "few-points", "custom-aa", "flagged", "c100-ready", "fmnist", "svhn")
    }
    assert sub["ready"] == {"submittable": True, "reasons": []}
    assert sub["c100-ready"] == {"submittable": True, "reasons": []}
    assert sub["few-points"]["submittable"] is False
    assert sub["few-points"]["reasons"] == [
        "n = 200 points, below the full test set RobustBench evaluates (10,000)"
    ]
    assert sub["custom-aa"]["reasons"] == [
        "no standard AutoAttack at eps 8/255 (RobustBench's ranking attack)"
    ]
    assert sub["flagged"]["reasons"] == [
        "unreliable evaluation: flagged by bench's checks (gradients)"
    ]
    assert sub["fmnist"]["reasons"] == [
        "RobustBench does not rank fashion-mnist; its Linf leaderboards "
        "are cifar10, cifar100, imagenet"
    ]
    assert sub["svhn"]["reasons"][0].startswith("RobustBench does not rank svhn")


def test_submission_at_another_eps(tmp_path: Path) -> None:
    """A CIFAR-10 report ranked at 4/255 is not RobustBench's budget; every reason is listed."""
    db = tmp_path / "results.sqlite"
    with Store(db) as s:
        add_model(s, "eps4", eps=E4, n=500, aa=CUSTOM, flagged=True)
    out = tmp_path / "out"
    write_report(db, out)
    reasons = _json(out, "eps4")["robustbench_submission"]["reasons"]
    assert reasons == [
        "eps 4/255 is not RobustBench's Linf budget for cifar10 (8/255)",
        "n = 500 points, below the full test set RobustBench evaluates (10,000)",
        "no standard AutoAttack at eps 4/255 (RobustBench's ranking attack)",
        "unreliable evaluation: flagged by bench's checks (gradients)",
    ]


def test_zoo_model_without_model_info_gets_a_note(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    note = "no --model-info directory given (the robustbench wheel ships no model_info files)"
    with Store(db) as s:
        add_model(
            s,
            "Zoo2020Bare",
            n=100,
            kind="robustbench",
            run={"published": None, "published_note": note},
        )
    out = tmp_path / "out"
    md = write_report(db, out).leaderboard.read_text()
    assert f"- `Zoo2020Bare`: no published numbers ({note})." in md
    info = _json(out, "Zoo2020Bare")
    assert info["published"] is None and info["published_note"] == note
    assert info["ours_vs_published"]["clean_acc"] == {"ours": 60.0, "published": None}


# ----------------------------------------------------------------------------- end to end

ZOO = "Wong2020Fast"  # cifar10 Linf: a PreAct-ResNet-18 that normalises inside itself


def _zoo_world(root: Path) -> None:
    """Random weights in robustbench's layout, a 16-point CIFAR-10 test batch in the official
    format, and a model-info file with the paper's numbers."""
    from bench.sources import zoo_entries

    torch.manual_seed(0)
    net = zoo_entries("cifar10", "Linf")[ZOO]["model"]()
    folder = root / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(
        {"state_dict": {f"module.{k}": v.clone() for k, v in net.state_dict().items()}},
        folder / f"{ZOO}.pt",
    )
    batches = root / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 16
    with open(batches / "test_batch", "wb") as fh:
        pickle.dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                b"filenames": [f"t{i}.png".encode() for i in range(n)],
            },
            fh,
            protocol=2,
        )
    info = root / "model_info" / "cifar10" / "Linf"
    info.mkdir(parents=True)
    (info / f"{ZOO}.json").write_text(
        json.dumps(
            {
                "link": "https://arxiv.org/abs/2001.03994",
                "name": "Fast is better than free",
                "dataset": "cifar10",
                "architecture": "PreActResNet-18",
                "eps": "8/255",
                "clean_acc": "83.34",
                "reported": "46.06",
                "autoattack_acc": "43.21",
            }
        )
    )


@pytest.mark.slow
def test_robustbench_eval_then_report_show_published_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _zoo_world(tmp_path)
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    db, out = tmp_path / "results.sqlite", tmp_path / "reports"
    assert (
        main(
            [
                "eval",
                "--robustbench",
                ZOO,
                "--threat-model",
                "Linf",
                "--dataset",
                "cifar10",
                "--model-dir",
                str(tmp_path / "models"),
                "--model-info",
                str(tmp_path / "model_info"),
                "--data-dir",
                str(tmp_path / "data"),
                "--no-download",
                "--attack",
                "autoattack",
                "--eps",
                "8/255",
                "--n",
                "8",
                "--batch-size",
                "8",
                "--db",
                str(db),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    capsys.readouterr()

    md = (out / "leaderboard.md").read_text()
    assert "published clean / AutoAttack accuracy (%) beside ours" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| `{ZOO}` | 8/255 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "83.34" and cells[5] == "43.21" and cells[6] == "8"

    info = _json(out, ZOO)
    assert info["published"]["clean_acc"] == 83.34 and info["published"]["autoattack_acc"] == 43.21
    vs = info["ours_vs_published"]
    assert vs["eps"] == "8/255"
    assert vs["clean_acc"]["published"] == 83.34 and vs["autoattack_acc"]["published"] == 43.21
    assert vs["clean_acc"]["ours"] == float(info["clean_acc"])
    assert vs["autoattack_acc"]["ours"] == float(info["autoattack_acc"])
    sub = info["robustbench_submission"]
    assert sub["submittable"] is False
    assert "n = 8 points, below the full test set RobustBench evaluates (10,000)" in sub["reasons"]
