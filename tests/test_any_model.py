"""A model bench did not train: through the Python API and through ``bench eval --model-factory``,
onto the leaderboard; bad factories are one line, exit 2, nothing written."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import factories
import pytest
import torch

from bench.cli import main

FACTORY = str(Path(factories.__file__).resolve()) + ":tiny_fmnist"


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Tiny models: one intra-op thread."""


def documented_as_dict_keys() -> set[str]:
    """The keys that docs/any-model.md's table of ``as_dict()`` names (its first column)."""
    lines = (Path(__file__).resolve().parents[1] / "docs" / "any-model.md").read_text().splitlines()
    start = lines.index("| key | type | what |") + 2  # the header, then its --- line
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    return {key for row in rows for key in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}


def test_python_api_with_tensors_and_with_the_test_split(fmnist_dir: Path, tmp_path: Path) -> None:
    import bench

    model = factories.tiny_fmnist()
    x = torch.rand(12, 1, 28, 28)
    y = torch.arange(12) % 10
    ev = bench.evaluate_model(
        model, x=x, y=y, attacks=["fgsm", "pgd"], eps=[0, 4 / 255], params={"pgd": {"steps": 2}}
    )
    d = ev.as_dict()
    assert d["n"] == 12 and set(d["robust"]) == {"fgsm", "pgd[steps=2]", "any"}
    assert set(d) == documented_as_dict_keys()  # docs/any-model.md's table of as_dict()
    head = ev.table().splitlines()
    assert head[0].startswith("model (") and ", device cpu" in head[0]  # the device, named
    assert head[1].startswith("points: the caller's x, y (n=12; not a data set's test points)")
    assert "fashion-mnist" not in ev.table() and "first 12 test points" not in ev.table()
    cell = d["robust"]["any"]["4/255"]
    assert cell["n"] == 12 and cell["ci95"][0] <= cell["acc"] <= cell["ci95"][1]
    assert {f["check"] for f in d["findings"]} >= {"randomized", "probabilities", "gradients"}
    db = tmp_path / "api.sqlite"
    ev = bench.evaluate_model(
        model,
        dataset="fashion-mnist",
        n=20,
        attacks="fgsm",
        eps="0,2/255",
        store=db,
        name="my-net",
        data_dir=fmnist_dir,
    )
    from bench.report import write_report

    assert "points: the first 20 test points of fashion-mnist" in ev.table()
    md = write_report(db, tmp_path / "r").leaderboard.read_text()
    assert "`my-net`" in md and "external" in md
    with pytest.raises(Exception, match="x and y"):
        bench.evaluate_model(model, x=x)


def test_model_factory_cli_to_leaderboard(
    fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, weights = tmp_path / "f.sqlite", tmp_path / "w.pt"
    torch.save(factories.tiny_fmnist().state_dict(), weights)
    argv = [
        "eval",
        "--model-factory",
        FACTORY,
        "--weights",
        str(weights),
        "--dataset",
        "fashion-mnist",
        "--attack",
        "fgsm,autoattack",
        "--aa-version",
        "standard",
        "--eps",
        "0,8/255",
        "--n",
        "16",
        "--db",
        str(db),
        "--data-dir",
        str(fmnist_dir),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "`tiny_fmnist-w`" in md
    info = json.loads((tmp_path / "r" / "json" / "tiny_fmnist-w.json").read_text())
    assert info["source_kind"] == "factory" and info["fingerprint"].startswith("sha256:")


@pytest.mark.parametrize(
    "spec, weights, error",
    [
        ("no_such_module_xyz:f", None, "can't be imported|cannot be imported|No module"),
        ("FACTORIES:missing_fn", None, "missing_fn"),
        ("FACTORIES:not_a_module", None, "not an nn.Module|nn.Module"),
        ("FACTORIES:wrong_shape", None, "shape"),
        ("FACTORIES:raises", None, "raise"),
        ("FACTORIES:tiny_fmnist", "BAD", "weights|state dict|read"),
    ],
)
def test_bad_factories(
    spec: str,
    weights: str | None,
    error: str,
    fmnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    spec = spec.replace("FACTORIES", str(Path(factories.__file__).resolve()))
    db = tmp_path / "never.sqlite"
    argv = [
        "eval",
        "--model-factory",
        spec,
        "--dataset",
        "fashion-mnist",
        "--attack",
        "fgsm",
        "--n",
        "8",
        "--db",
        str(db),
        "--data-dir",
        str(fmnist_dir),
        "--no-progress",
    ]
    if weights:
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a checkpoint")
        argv += ["--weights", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error:") and re.search(error, err[0]), err
    assert not db.exists()


def test_dir_of_the_package_lists_its_api() -> None:
    """Tab completion: ``dir(bench)`` names the API without importing torch for it."""
    import bench

    assert "evaluate_model" in dir(bench) and "__version__" in dir(bench)
