"""Threat models (bench.norms): every attack in its own ball, refusals in one line, the store's
norm column and its migration, evaluations and sweeps per norm, the cross-norm report table."""

from __future__ import annotations

import argparse
import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_problem, tiny_target
from legacy import legacy_store
from test_attacks import CHEAP
from torch import nn

import bench
from bench import norms
from bench.attacks import ATTACKS, attack_norms, make_attack
from bench.cli import main
from bench.commands import quick
from bench.defenses import build_defense
from bench.errors import BudgetViolation, UsageError
from bench.evaluation import diagnostics as dg
from bench.evaluation.book import aa_warning_rows
from bench.evaluation.local import evaluate_target
from bench.evaluation.outcome import Evaluation
from bench.evaluation.plan import Settings
from bench.evaluation.results import Estimate
from bench.evaluation.walk import check_budget
from bench.norms import L1, L2, LINF, NORMS
from bench.report import markdown, model, robustbench
from bench.store import ResultRow, RunRow, Store
from bench.sweep.spec import load_sweep

#: A budget per norm that breaks some points of tiny_problem's 1x8x8 images but not all.
EPS = {LINF: 8 / 255, L2: 0.5, L1: 3.0}
PAIRS = [(name, norm) for name in ATTACKS.names() for norm in attack_norms(name)]


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Every test here runs with one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return tiny_problem()


def test_norm_names_are_checked() -> None:
    assert [norms.check_norm(s) for s in ("linf", "L2", " l1 ")] == [LINF, L2, L1]
    with pytest.raises(UsageError, match="unknown norm 'L3'; valid: Linf, L2, L1"):
        norms.check_norm("L3")


@pytest.mark.parametrize("norm", NORMS)
def test_the_projection_lands_in_ball_and_box(norm: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 6, 6, generator=g)
    far = x + 3 * torch.randn(16, 3, 6, 6, generator=g)
    eps = EPS[norm]
    p = norms.project(x, far, eps, norm)
    assert float(norms.distance(x, p, norm).max()) <= eps * (1 + 1e-5)
    assert 0 <= float(p.min()) and float(p.max()) <= 1
    near = norms.project(x, p, eps, norm)  # already inside: unchanged
    assert torch.allclose(near, p, atol=1e-6)


def test_the_l1_projection_is_the_nearest_point_of_the_ball() -> None:
    v = torch.tensor([[3.0, -1.0, 0.5, 0.0]])
    # Duchi et al.: shrink every entry by theta = 1.25 (3 - 1.25 = 1.75, 1 - 1.25 < 0): norm 1.75
    shrunk = norms._l1_ball(v, 1.75)
    assert torch.allclose(shrunk, torch.tensor([[1.75, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize(("name", "norm"), PAIRS, ids=[f"{a}-{n}" for a, n in PAIRS])
def test_every_attack_stays_in_its_own_ball(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, norm: str
) -> None:
    model, x, y = problem
    eps = EPS[norm]
    attack = make_attack(name, CHEAP[name], norm)
    x_adv = attack.run(model, x, y, eps, seed=0)
    check_budget(x, x_adv, eps, attack=name, norm=norm)
    assert float(norms.distance(x, x_adv, norm).max()) <= eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("norm", [L2, L1])
def test_bounded_attacks_break_points_in_each_norm(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str
) -> None:
    """PGD, APGD and AutoAttack find adversarial examples under L2 and L1 (not a no-op)."""
    model, x, y = problem
    for name in ("pgd", "apgd", "autoattack"):
        x_adv = make_attack(name, CHEAP[name], norm).run(model, x, y, EPS[norm], seed=0)
        assert int((model(x_adv).argmax(1) != y).sum()) > 0, name


def test_an_attack_without_the_norm_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError) as err:
        make_attack("mifgsm", norm=L2)
    text = str(err.value)
    assert "\n" not in text and "has no L2 version" in text and "pgd" in text
    assert "mifgsm" not in text.split("attacks with L2:")[1]
    with pytest.raises(UsageError, match="attack fgsm has no L1 version"):
        make_attack("fgsm", norm=L1)


def test_minimum_norm_attacks_are_scored_in_their_own_norm(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """CW's raw L2 output leaves a small L2 ball; it is projected onto that ball, not a cube."""
    model, x, y = problem
    eps = 0.05
    cw = make_attack("cw", CHEAP["cw"], L2)
    torch.manual_seed(0)
    raw = cw.perturb(model, x, y, cw.concrete(eps), 0, torch.arange(len(x)))
    assert float(norms.distance(x, raw, L2).max()) > eps
    out = cw.run(model, x, y, eps, seed=0)
    assert torch.equal(out, norms.project(x, raw, eps, L2))
    assert float(norms.distance(x, out, LINF).max()) > 0  # not clipped to a tiny cube


def test_the_budget_check_measures_in_the_norm() -> None:
    x = torch.full((1, 1, 8, 8), 0.5)
    spread = x + 0.02  # Linf 0.02, L2 0.16, L1 1.28
    check_budget(x, spread, 0.02, norm=LINF)
    check_budget(x, spread, 0.2, norm=L2)
    with pytest.raises(BudgetViolation, match="L2 eps 0.1 .*max \\|\\|x_adv - x\\|\\|_2 = 0.16"):
        check_budget(x, spread, 0.1, norm=L2)
    with pytest.raises(BudgetViolation, match="L1"):
        check_budget(x, spread, 1.0, norm=L1)


@pytest.mark.parametrize("norm", [L2, L1])
def test_the_large_budget_check_reaches_every_image_in_each_norm(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str
) -> None:
    model, x, y = problem
    f = dg.check_large_budget(model, x, y, norm=norm)
    assert not f.flagged and f.details["acc"] == 0.0
    assert f.details["eps"] == norms.reach(norm, (1, 8, 8)) and f.details["norm"] == norm


# ------------------------------------------------------------------------------ the store


def _row(norm: str, flags: str) -> ResultRow:
    return ResultRow(
        "m", "pgd", {"steps": 3}, 0.5, len(flags), 1.0, flags.count("1") / len(flags), 1.0,
        "cpu", {}, flags, 0, 8, [0.0, 0.5], "sha256:x", "2024", norm=norm,
    )  # fmt: skip


def test_one_model_keeps_its_rows_of_two_norms(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as s:
        s.write_result(_row(LINF, "110"))
        s.write_result(_row(L2, "100"))
        assert {r.norm: r.flags for r in s.results()} == {LINF: "110", L2: "100"}
        assert s.result("m", "pgd", {"steps": 3}, 0.5, 3, L2).flags == "100"  # type: ignore[union-attr]


@pytest.mark.parametrize("layout", [2, 3])
def test_an_older_store_is_read_as_linf_and_migrated_by_a_writer(
    tmp_path: Path, layout: int
) -> None:
    db = tmp_path / "old.sqlite"
    legacy_store(db, layout)
    before = db.read_bytes()
    with Store(db, readonly=True) as reader:
        (row,) = reader.results()
        (finding,) = reader.diagnostics()
        assert (row.norm, finding.norm, reader.version) == (LINF, LINF, str(layout))
    assert db.read_bytes() == before  # reading never writes
    with Store(db) as writer:
        assert writer.version == "4"
        (row,) = writer.results()
        assert (row.norm, row.walk, row.flags) == (LINF, "up", "110")
        writer.write_result(_row(L2, "111"))  # the migrated key holds the norm
        assert len(writer.results()) == 2 and writer.diagnostics()[0].norm == LINF
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "4"


# ------------------------------------------------------------------------- evaluations


def _evaluate(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: list[float], db: Path
) -> Evaluation:
    """FGSM and PGD-5 on tiny_problem's points under ``norm``, into the store ``db``."""
    net, x, y = problem
    attacks = [make_attack("fgsm", {}, norm), make_attack("pgd", {"steps": "5"}, norm)]
    settings = Settings(attacks, eps, 50, 0, progress=False, norm=norm)
    with Store(db) as store:
        return evaluate_target(tiny_target(net, x, y), settings, "cpu", store)


def test_one_model_evaluated_under_two_norms_keeps_both(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    db = tmp_path / "e.sqlite"
    linf = _evaluate(problem, LINF, [0, 8 / 255], db)
    l2 = _evaluate(problem, L2, [0, 0.5], db)
    assert l2.settings.norm == L2 and linf.settings.norm == LINF
    with Store(db, readonly=True) as s:
        rows, found = s.results(), s.diagnostics()
    assert {r.norm for r in rows} == {LINF, L2} and len(rows) == 8
    assert {d.norm for d in found} == {LINF, L2}
    probe = [d for d in found if d.norm == L2 and d.check == "black-box-probe"]
    assert probe and probe[0].details["eps"] == 0.5
    sets = model.load(Store(db, readonly=True))
    assert sorted(sets) == ["fashion-mnist", "fashion-mnist L2"]
    text = markdown.render(sets)
    assert "## fashion-mnist: across threat models" in text
    assert "worst case, L2 eps 0.5" in text and "worst case, Linf eps 8/255" in text


def test_bad_norms_and_budgets_are_refused_in_one_line(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    net, x, y = problem
    with pytest.raises(UsageError, match="L2 eps 9.0 is outside \\[0, 8\\]"):
        _evaluate(problem, L2, [0, 9.0], tmp_path / "e.sqlite")
    with pytest.raises(UsageError, match="unknown norm"):
        bench.evaluate_model(net, attacks="pgd", norm="L0", x=x, y=y)
    with pytest.raises(UsageError, match="attack mifgsm has no L1 version"):
        bench.evaluate_model(net, attacks="mifgsm", norm=L1, x=x, y=y)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norm", "L3"], "unknown norm 'L3'; valid: Linf, L2, L1"),
        (["--norm", "L1", "--attack", "fgsm"], "attack fgsm has no L1 version"),
        (["--norm", "L2", "--eps", "0,-1"], "outside [0, 1e+07]"),
        (["--eps", "0,2"], "outside [0, 1] (pixel scale"),
    ],
)
def test_bench_eval_refuses_bad_norms_in_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--checkpoint", str(tmp_path / "none"), "--db", str(tmp_path / "d")]
    code = main(base + ([] if "--attack" in argv else ["--attack", "pgd"]) + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------ sweeps


SWEEP = """
[sweep]
name = "n"
[train]
dataset = "fashion-mnist"
epochs = 1
{train}
[[variant]]
name = "std"
defense = "standard"
{variant}
[[variant]]
name = "at"
defense = "pgd-at"
params = {{ eps = "2" }}
norm = "L2"
[[eval]]
attacks = ["pgd"]
{eval}
"""


def test_a_sweep_carries_the_norm_to_training_and_evaluation(tmp_path: Path) -> None:
    text = SWEEP.format(train='norm = "L2"', variant="", eval='norm = "l2"\neps = "0,2"')
    (tmp_path / "s.toml").write_text(text)
    sweep = load_sweep(tmp_path / "s.toml")
    by = {j.variant: j.cfg.defense_params for j in sweep.trains}
    assert by == {"std": {}, "at": {"eps": "2", "norm": L2}}  # [train]'s norm passes over std
    spec = sweep.evals[0].spec
    assert spec.norm == L2 and spec.identity()["norm"] == L2
    assert all(a.norm == L2 for a in spec.make_attacks())


@pytest.mark.parametrize(
    ("train", "variant", "ev", "message"),
    [
        ("", 'norm = "L2"', 'eps = "0,0.1"', "variant[0].norm: defense standard trains for no"),
        ("", "", 'norm = "L2"', "eval[0].eps: is required under L2"),
        ("", "", 'norm = "L5"\neps = "0,1"', "eval[0].norm: unknown norm 'L5'"),
        ('norm = "L9"', "", 'eps = "0,0.1"', "train.norm: unknown norm 'L9'"),
    ],
)
def test_a_sweep_refuses_bad_norms_in_one_line(
    tmp_path: Path, train: str, variant: str, ev: str, message: str
) -> None:
    (tmp_path / "s.toml").write_text(SWEEP.format(train=train, variant=variant, eval=ev))
    with pytest.raises(UsageError, match=re.escape(message)):
        load_sweep(tmp_path / "s.toml")


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("Linf", ("0.1", "0.1", "0,2/255,4/255,6/255,8/255,0.1", "fgsm,pgd")),
        ("l2", ("2", "2", "0:2:0.25", "fgsm,pgd")),
        ("L1", ("10", "10", "0:10:1.25", "pgd")),
    ],
)
def test_bench_quick_takes_each_norms_budget(norm: str, expected: tuple[str, ...]) -> None:
    """Linf keeps the quick benchmark as it was; L2 and L1 take the data set's budget and grid
    (and L1, which has no FGSM, PGD alone)."""
    args = argparse.Namespace(
        norm=norm, dataset="fashion-mnist", train_eps=None, rank_eps=None, eps=None, attacks=None
    )
    canonical = quick.norm_defaults(args)
    assert canonical == norms.check_norm(norm)
    assert (args.train_eps, args.rank_eps, args.eps, args.attacks) == expected
    assert quick.defense_params(args, "pgd-at") == (
        {"eps": expected[0]} if canonical == LINF else {"eps": expected[0], "norm": canonical}
    )


def test_autoattack_warnings_are_stored_under_the_evaluations_norm() -> None:
    """A warning of an L2 AutoAttack run is a finding of the L2 section, never of Linf's."""
    src = SimpleNamespace(run_id="m", fingerprint="sha256:x")
    (row,) = aa_warning_rows(src, 10, [("Square attack has decreased ...", 2.0, 10)], 1, L2)
    assert row.norm == L2 and "L2 eps 2 on 10 points" in row.summary
    (old,) = aa_warning_rows(src, 10, [("Square attack has decreased ...", 8 / 255, 10)])
    assert old.norm == LINF and "at eps 8/255 on 10 points" in old.summary


def test_published_numbers_of_another_norm_are_not_shown() -> None:
    run = RunRow("zoo", "", "cifar10", "m", "external", {}, None, None, None)
    run.config, run.run = {"threat_model": "Linf"}, {"published": {"eps": "8/255"}}
    linf = model.Model(run, 1, {}, {}, Estimate(1, 1), norm=LINF)
    l2 = model.Model(run, 1, {}, {}, Estimate(1, 1), norm=L2)
    assert robustbench.published(linf) == {"eps": "8/255"} and robustbench.published(l2) is None
    assert "published under Linf, not L2" in str(robustbench.published_note(l2))


def test_training_budgets_are_bounded_and_sweep_defaults_read_in_the_train_norm(
    tmp_path: Path,
) -> None:
    with pytest.raises(UsageError, match="eps must be in \\[0, 1e\\+07\\] under L2"):
        build_defense("pgd-at", {"eps": "1e300", "norm": "L2"})
    text = SWEEP.format(train='norm = "L2"\n[params.pgd-at]\neps = "2"', variant="", eval="")
    (tmp_path / "s.toml").write_text(text)  # [params.pgd-at]'s eps 2 is read under L2
    sweep = load_sweep(tmp_path / "s.toml")
    assert {j.variant: j.cfg.defense_params.get("norm") for j in sweep.trains}["at"] == L2


def test_a_rank_eps_no_section_evaluated_is_one_line_listing_the_grids(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "e.sqlite"
    _evaluate(problem, LINF, [0, 8 / 255], db)
    _evaluate(problem, L2, [0, 0.5], db)
    capsys.readouterr()
    argv = ["report", "--db", str(db), "--out", str(tmp_path / "r"), "--no-images"]
    assert main(argv + ["--rank-eps", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "bench: error: --rank-eps 0.3 was evaluated in no section; evaluated: "
        "fashion-mnist: 0, 8/255; fashion-mnist L2: 0, 0.5"
    )
    assert not (tmp_path / "r").exists()
    assert main(argv + ["--rank-eps", "0.5"]) == 0  # the L2 section has it
    assert "figures, 2 JSON files," in capsys.readouterr().out
    one = tmp_path / "one.sqlite"
    _evaluate(problem, LINF, [0, 8 / 255], one)
    capsys.readouterr()
    assert main(["report", "--db", str(one), "--out", str(tmp_path / "r1"), "--no-images"]) == 0
    assert "figures, 1 JSON file," in capsys.readouterr().out  # not "1 JSON files"
