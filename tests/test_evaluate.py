"""The evaluator: budget checks, the monotone grid walk, AutoAttack parity, the store and the CLI."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, make_attack
from conftest import tiny_problem

from bench.errors import BudgetViolation, UsageError
from bench.evaluate import check_budget, evaluate_checkpoint, grid_walk, predict
from bench.store import ANY, Store

GRID = [i / 255 for i in range(9)]


def _importable() -> bool:
    """bench.data and models.create_model exist (they are written alongside this module)."""
    try:
        if importlib.util.find_spec("bench.data") is None:
            return False
        import bench.data  # noqa: F401
        from models import create_model  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means: not there yet
        return False
    return True


needs_registries = pytest.mark.skipif(not _importable(), reason="bench.data / models not importable yet")


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Every test here runs with one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return tiny_problem(flip=(1, 7, 13, 22))


def _fixed_attack(name: str, perturb: Any) -> Attack:
    return Attack(name, "bounded", {}, lambda eps: {"eps": eps}, perturb)


@pytest.fixture
def broken_attacks() -> Iterator[None]:
    """Deliberately broken attacks, registered for the test and removed afterwards."""
    bad = {
        "too-far": lambda m, x, y, kw, seed: (x + 2 * kw["eps"]).clamp(0, 1),
        "out-of-range": lambda m, x, y, kw, seed: x + kw["eps"] * (x > 0.5).float() * 100,
        "nan": lambda m, x, y, kw, seed: x * float("nan"),
    }
    for name, fn in bad.items():
        ATTACKS.add(name, lambda params=None, n=name, f=fn: _fixed_attack(n, f), "broken", {}, kind="bounded")
    yield
    for name in bad:
        ATTACKS.remove(name)


# ------------------------------------------------------------------------- check_budget


def test_check_budget() -> None:
    x = torch.full((2, 1, 4, 4), 0.5)
    eps = 4 / 255
    check_budget(x, x + eps, eps)  # on the boundary
    check_budget(x, x - eps + 5e-7, eps)  # float rounding is tolerated
    with pytest.raises(BudgetViolation, match=r"pgd .*eps 4/255.*max\|x_adv - x\| = 0.0313"):
        check_budget(x, x + 2 * eps, eps, attack="pgd")
    x0 = torch.zeros(1, 1, 2, 2)
    with pytest.raises(BudgetViolation, match=r"x_adv in \[-0.01"):
        check_budget(x0, x0 - 0.01, 8 / 255)
    with pytest.raises(BudgetViolation, match="1.01"):
        check_budget(x0 + 1, x0 + 1.01, 8 / 255)
    with pytest.raises(BudgetViolation, match="shape"):
        check_budget(x, x[:1], eps)
    with pytest.raises(BudgetViolation, match="NaN"):
        check_budget(x, x * float("nan"), eps)


# ---------------------------------------------------------------------------- grid walk


@pytest.mark.parametrize(("name", "params"), [("fgsm", {}), ("pgd", {"steps": "3"}), ("autoattack", {"version": "custom", "attacks": "apgd-ce"})])
def test_grid_walk_is_monotone_and_starts_clean(
    name: str, params: dict[str, str], problem: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, x, y = problem
    r = grid_walk(model, make_attack(name, params), x, y, list(reversed(GRID)), batch_size=16, seed=0)
    assert r.eps == GRID  # sorted ascending
    clean = predict(model, x) == y
    assert torch.equal(r.flags[0], clean) and r.seconds[0] == 0.0
    assert 0 < int(clean.sum()) < len(y)
    for a, b in zip(r.flags, r.flags[1:]):
        assert not bool((b & ~a).any())  # a broken point stays broken
    acc = r.robust_acc()
    assert acc == sorted(acc, reverse=True) and acc[-1] < acc[0]  # and something breaks


@pytest.mark.parametrize(("name", "params"), [("fgsm", {}), ("pgd", {"steps": "4", "random_start": "false"})])
def test_grid_equals_intersection_of_single_eps_runs(
    name: str, params: dict[str, str], problem: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    """For a deterministic attack the grid's robust set at eps_k is the AND of separate
    single-eps runs at eps_0..eps_k: attacking only the survivors loses nothing."""
    model, x, y = problem
    attack = make_attack(name, params)
    grid = grid_walk(model, attack, x, y, GRID, batch_size=64, seed=0)
    running = torch.ones(len(y), dtype=torch.bool)
    for k, eps in enumerate(GRID):
        single = grid_walk(model, attack, x, y, [eps], batch_size=64, seed=0).flags[0]
        running &= single
        assert torch.equal(grid.flags[k], running), f"eps {eps * 255:.0f}/255"


def test_nothing_robust_skips_the_attack(problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = problem
    calls: list[int] = []

    def perturb(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, kw: dict[str, Any], seed: int) -> torch.Tensor:
        calls.append(len(xb))
        return xb

    wrong = (y + 1) % 10  # no point is correct: nothing to attack
    r = grid_walk(model, _fixed_attack("spy", perturb), x, wrong, GRID, batch_size=8, seed=0)
    assert calls == [] and all(not f.any() for f in r.flags)
    r = grid_walk(model, _fixed_attack("spy", perturb), x, y, [0.0, 1 / 255], batch_size=8, seed=0)
    clean = int((predict(model, x) == y).sum())
    assert sum(calls) == clean and max(calls) <= 8  # only clean-correct points, in batches


@pytest.mark.parametrize("name", ["too-far", "out-of-range", "nan"])
def test_budget_violation_is_an_error(
    name: str, broken_attacks: None, problem: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, x, y = problem
    with pytest.raises(BudgetViolation, match=name):
        grid_walk(model, make_attack(name), x, y, GRID, batch_size=16, seed=0)


# -------------------------------------------------------------------- AutoAttack parity


def _direct_autoattack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str, attacks: list[str] | None
) -> torch.Tensor:
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm="Linf", eps=eps, version=version, attacks=attacks, seed=0, device="cpu")
    aa.verbose = False
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    check_budget(x, x_adv, eps)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize(
    ("version", "attacks", "eps"),
    [("custom", ["apgd-ce", "apgd-t"], 4 / 255), ("standard", None, 5 / 255)],
)
def test_autoattack_matches_the_official_run(
    version: str, attacks: list[str] | None, eps: float,
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = problem
    x, y = x[:30], y[:30]
    params = {"version": version} | ({"attacks": ",".join(attacks)} if attacks else {})
    ours = grid_walk(model, make_attack("autoattack", params), x, y, [eps], batch_size=64, seed=0)
    direct = _direct_autoattack(model, x, y, eps, version, attacks)
    assert torch.equal(ours.flags[0], direct)
    assert 0 < int(direct.sum()) < int((predict(model, x) == y).sum())  # a meaningful eps


# ---------------------------------------------------------- checkpoints, store and CLI


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file: magic 0x0800 + ndim, big-endian dims, then the bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grey images whose class is a faint +-8/255 pattern (so eps matters)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 28, 28, generator=torch.Generator().manual_seed(99)).sign()
    y = torch.arange(n) % 10
    x = (128 + 8 * protos[y] + 8 * torch.randn(n, 28, 28, generator=g)).round().clamp(0, 255)
    return x.to(torch.uint8).numpy(), y.numpy().astype(np.uint8)


N_TEST = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small Fashion-MNIST files, a CNN checkpoint trained on them, another of MNIST, and a db."""
    if not _importable():
        pytest.skip("bench.data / models not importable yet")
    from bench.data import dataset_info
    from models import create_model

    root = tmp_path_factory.mktemp("eval")
    data = root / "data" / "fashion-mnist"
    data.mkdir(parents=True)
    x_test, y_test = _images(N_TEST, seed=1)
    labels = y_test.copy()
    labels[[2, 11, 25]] = (labels[[2, 11, 25]] + 1) % 10  # a few wrong labels: clean acc < 1
    for prefix, (xs, ys) in (("train", _images(20, seed=2)), ("t10k", (x_test, labels))):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", xs)
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", ys)

    info = dataset_info("fashion-mnist")
    torch.manual_seed(0)
    model = create_model("cnn", channels=1, num_classes=10, image_size=28, mean=list(info.mean), std=list(info.std))
    xf = torch.from_numpy(x_test).float().unsqueeze(1) / 255
    yt = torch.from_numpy(y_test).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(xf), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ckpts = root / "checkpoints"
    for run_id, dataset in (("cnn-fmnist", "fashion-mnist"), ("cnn-mnist", "mnist")):
        d = ckpts / run_id
        d.mkdir(parents=True)
        config = {
            "run_id": run_id, "dataset": dataset, "model": "cnn", "defense": "standard",
            "defense_params": {}, "dataset_info": asdict(dataset_info(dataset)), "epochs": 1,
            "train_limit": None, "seed": 0,
        }
        (d / "config.json").write_text(json.dumps(config))
        (d / "run.json").write_text(json.dumps({"train_seconds": 1.5}))
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, d / "weights.pt")
    only = root / "only-fmnist"
    only.mkdir()
    (only / "cnn-fmnist").symlink_to(ckpts / "cnn-fmnist")
    return {"root": root, "data": root / "data", "ckpts": ckpts, "fmnist": ckpts / "cnn-fmnist",
            "mnist": ckpts / "cnn-mnist", "only": only}


CHEAP = [make_attack("fgsm"), make_attack("pgd", {"steps": "3"})]


def _evaluate(env: dict[str, Path], store: Store | Path, attacks: list[Attack] = CHEAP, **kw: Any) -> list[Any]:
    args: dict[str, Any] = dict(n=N_TEST, batch_size=16, seed=0, device="cpu", data_dir=env["data"],
                                progress=False, download=False)
    args.update(kw)
    return evaluate_checkpoint(env["fmnist"], attacks, GRID, store=store, **args)


@needs_registries
def test_store_rows_are_replaced_and_any_is_the_worst_case(
    env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "r.sqlite"
    rows = _evaluate(env, db)
    with Store(db) as store:
        first = store.count()
        assert first == len(CHEAP) * len(GRID) + len(GRID)  # attack rows + one "any" row per eps
        _evaluate(env, store)  # the same evaluation again: replaced, not duplicated
        assert store.count() == first
        results = store.results("cnn-fmnist")
        assert len(store.runs()) == 1 and store.runs()[0].train_seconds == 1.5
    out = capsys.readouterr().out
    assert "fgsm" in out and "pgd[steps=3]" in out and "\nany " in out and "clean accuracy" in out

    by = {(r.attack, round(r.eps * 255)): r for r in results}
    assert {r.attack for r in results} == {"fgsm", "pgd", ANY}
    clean = by[("fgsm", 0)].robust_acc
    assert 0 < clean < 1 and by[(ANY, 0)].robust_acc == clean
    for k in range(9):
        f, p, a = by[("fgsm", k)], by[("pgd", k)], by[(ANY, k)]
        assert f.clean_acc == clean and len(a.flags) == N_TEST
        expected = "".join("1" if u == v == "1" else "0" for u, v in zip(f.flags, p.flags))
        assert a.flags == expected
        assert a.robust_acc == pytest.approx(expected.count("1") / N_TEST)
        assert a.robust_acc <= min(f.robust_acc, p.robust_acc)
        assert f.robust_acc == pytest.approx(f.flags.count("1") / N_TEST)
        if k:
            assert a.robust_acc <= by[(ANY, k - 1)].robust_acc
    assert by[(ANY, 8)].robust_acc < clean
    assert {r.attack for r in rows} == {"fgsm", "pgd", ANY}


@needs_registries
def test_any_covers_every_attack_stored(env: dict[str, Path], tmp_path: Path) -> None:
    """A later evaluation with another attack folds into the stored worst case."""
    db = tmp_path / "r.sqlite"
    _evaluate(env, db, [make_attack("fgsm")])
    _evaluate(env, db, [make_attack("mifgsm", {"steps": "3"})])
    with Store(db) as store:
        rows = store.results("cnn-fmnist")
    for k in range(9):
        at = [r for r in rows if round(r.eps * 255) == k]
        worst = next(r for r in at if r.attack == ANY)
        others = [r for r in at if r.attack != ANY]
        assert len(others) == 2
        assert worst.flags == "".join("1" if all(r.flags[i] == "1" for r in others) else "0" for i in range(N_TEST))


@needs_registries
def test_violation_stores_nothing(env: dict[str, Path], tmp_path: Path, broken_attacks: None) -> None:
    db = tmp_path / "r.sqlite"
    _evaluate(env, db, [make_attack("fgsm")])
    before = db.read_bytes()
    with pytest.raises(BudgetViolation):
        _evaluate(env, db, [make_attack("pgd", {"steps": "2"}), make_attack("too-far")])
    assert db.read_bytes() == before


@needs_registries
def test_bad_input_leaves_the_store_alone(env: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "never.sqlite"
    with pytest.raises(UsageError, match="fashion-mnist test split \\(40 points\\)"):
        _evaluate(env, db, n=41)
    with pytest.raises(UsageError, match="trained on fashion-mnist, not on --dataset mnist"):
        _evaluate(env, db, dataset="mnist")
    with pytest.raises(UsageError, match="outside"):
        evaluate_checkpoint(env["fmnist"], CHEAP, [0.0, 1.5], N_TEST, 16, 0, "cpu", env["data"], db, progress=False)
    with pytest.raises(UsageError, match="twice"):
        _evaluate(env, db, [make_attack("fgsm"), make_attack("fgsm")])
    assert not db.exists()


# --------------------------------------------------------------------------------- CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from bench.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@needs_registries
def test_cli_end_to_end(env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.sqlite"
    base = ["eval", "--data-dir", str(env["data"]), "--db", str(db), "--n", "20", "--no-progress",
            "--no-download", "--device", "cpu"]
    rc, out, err = _cli(base + ["--attack", "fgsm,pgd", "--set", "pgd.steps=2", "--eps", "0,4/255,8/255",
                                "--checkpoint", str(env["fmnist"])], capsys)
    assert rc == 0, err
    assert "pgd[steps=2]" in out and "any" in out and "  4  " in out
    with Store(db) as store:
        rows = store.results()
        assert len(rows) == 2 * 3 + 3 and {r.n for r in rows} == {20}
        assert next(r for r in rows if r.attack == "pgd").params["steps"] == 2

    # --all over a directory holding only the Fashion-MNIST checkpoint, AutoAttack shorthands.
    rc, out, err = _cli(base + ["--attack", "autoattack", "--aa-attacks", "apgd-ce", "--eps", "0,8/255",
                                "--all", "--checkpoints-dir", str(env["only"])], capsys)
    assert rc == 0, err
    with Store(db) as store:
        aa = [r for r in store.results() if r.attack == "autoattack"]
        assert {r.params["version"] for r in aa} == {"custom"} and len(aa) == 2
    before = db.read_bytes()

    fresh = tmp_path / "fresh.sqlite"
    bad = {
        "unknown attack": ["--attack", "pgdd", "--checkpoint", str(env["fmnist"])],
        "eps > 1": ["--attack", "fgsm", "--eps", "0,2", "--checkpoint", str(env["fmnist"])],
        "eps junk": ["--attack", "fgsm", "--eps", "0:x:1", "--checkpoint", str(env["fmnist"])],
        "dataset": ["--attack", "fgsm", "--dataset", "fashion-mnist", "--checkpoint", str(env["fmnist"]), str(env["mnist"])],
        "n too big": ["--attack", "fgsm", "--n", "41", "--checkpoint", str(env["fmnist"])],
        "n zero": ["--attack", "fgsm", "--n", "0", "--checkpoint", str(env["fmnist"])],
        "seed": ["--attack", "fgsm", "--seed", "-1", "--checkpoint", str(env["fmnist"])],
        "missing": ["--attack", "fgsm", "--checkpoint", str(tmp_path / "nope")],
        "corrupt": ["--attack", "fgsm", "--checkpoint", str(_corrupt(tmp_path))],
        "no checkpoint": ["--attack", "fgsm"],
        "empty --all": ["--attack", "fgsm", "--all", "--checkpoints-dir", str(tmp_path / "empty")],
        "unknown key": ["--attack", "pgd", "--set", "pgd.stepz=3", "--checkpoint", str(env["fmnist"])],
        "set other": ["--attack", "pgd", "--set", "fgsm.steps=3", "--checkpoint", str(env["fmnist"])],
        "aa without aa": ["--attack", "pgd", "--aa-version", "plus", "--checkpoint", str(env["fmnist"])],
        "aa attacks non-custom": ["--attack", "autoattack", "--aa-version", "standard", "--aa-attacks",
                                  "apgd-ce", "--checkpoint", str(env["fmnist"])],
    }
    (tmp_path / "empty").mkdir()
    for what, extra in bad.items():
        for target in (db, fresh):
            argv = [a if a != str(db) else str(target) for a in base] + extra
            rc, out, err = _cli(argv, capsys)
            assert rc == 2, (what, err)
            assert err.startswith("bench: error: ") and err.count("\n") == 1, (what, err)
        assert db.read_bytes() == before, what
        assert not fresh.exists(), what


def _corrupt(tmp_path: Path) -> Path:
    d = tmp_path / "corrupt"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{not json")
    (d / "weights.pt").write_bytes(b"junk")
    return d


@needs_registries
def test_cli_budget_violation_exits_nonzero(
    env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], broken_attacks: None
) -> None:
    db = tmp_path / "v.sqlite"
    rc, out, err = _cli(["eval", "--attack", "out-of-range", "--checkpoint", str(env["fmnist"]), "--db", str(db),
                         "--data-dir", str(env["data"]), "--n", "10", "--no-progress", "--device", "cpu"], capsys)
    assert rc == 1 and "out-of-range left the budget" in err
    with Store(db) as store:
        assert store.count() == 0 and store.runs() == []
