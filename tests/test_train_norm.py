"""Adversarial training per threat model: PGD-AT, TRADES, FGSM-RS and FGSM-AT under L2 and L1,
``bench train --norm``, and the catastrophic-overfitting monitor in the training norm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import checkpoint, norms
from bench.cli import main
from bench.defenses import build_defense, defense_params
from bench.defenses.adversarial import TRADES, pgd_linf
from bench.defenses.overfitting import Monitor
from bench.errors import UsageError
from bench.train import _check_same

ADVERSARIAL = ["pgd-at", "trades", "fgsm-rs", "fgsm-at"]
EPS = {"L2": 0.5, "L1": 2.0}  # on 1x8x8 images: a few pixels' worth, well inside the box
RULES = {"pgd-at": "2.5*eps/steps", "trades": "2.5*eps/steps", "fgsm-rs": "1.25*eps"}


def _perturb(defense, model, x, y):
    if isinstance(defense, TRADES):
        return defense.perturb(model, x)
    return defense.perturb(model, x, y)


@pytest.mark.parametrize("norm", ["L2", "L1"])
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_inner_examples_lie_in_the_ball_and_box(name, norm, tiny_model, tiny_data):
    x, y = tiny_data
    x = x.clone()
    x[:4] = 1.0  # saturated images: the box must cut the step
    torch.manual_seed(0)
    defense = build_defense(name, {"eps": str(EPS[norm]), "norm": norm.lower()})
    x_adv = _perturb(defense, tiny_model, x, y)
    assert x_adv.shape == x.shape
    assert float(norms.distance(x, x_adv, norm).max()) <= EPS[norm] + 1e-5
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # Every unsaturated point moved. (A saturated one may not under L1: its step is the top 1%
    # of |gradient|, which can point out of the box, where the clip undoes it.)
    assert (x_adv != x)[4:].any(dim=(1, 2, 3)).all()
    assert all(p.grad is None for p in tiny_model.parameters())  # input gradients only


@pytest.mark.parametrize("norm", ["L2", "L1"])
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_the_config_records_the_norm_and_the_step_rule(name, norm):
    eps = EPS[norm]
    defense = build_defense(name, {"eps": str(eps), "norm": norm})
    assert defense_params(defense)["norm"] == norm
    resolved = defense.resolved()
    if name in ("pgd-at", "trades"):
        assert resolved == {"alpha": 2.5 * eps / 10, "alpha_rule": RULES[name]}
    elif name == "fgsm-rs":
        assert resolved == {"alpha": 1.25 * eps, "alpha_rule": "1.25*eps"}
    else:
        assert resolved == {"alpha": eps, "alpha_rule": "eps"}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_linf_is_the_default_with_its_rules(name):
    defense = build_defense(name, {})
    assert defense.norm == "Linf" and defense_params(defense)["norm"] == "Linf"
    if name in ("pgd-at", "trades"):
        assert defense.resolved() == {"alpha": 2 / 255, "alpha_rule": "eps/4"}


def test_linf_pgd_at_is_bit_identical_to_pgd_linf(tiny_model, tiny_data):
    x, y = tiny_data
    defense = build_defense("pgd-at", {"steps": "3"})
    torch.manual_seed(3)
    ours = defense.perturb(tiny_model, x, y)
    torch.manual_seed(3)
    reference = pgd_linf(tiny_model, x, y, 8 / 255, 2 / 255, 3, random_start=True)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize(
    "values,needle",
    [
        ({"norm": "L3"}, "unknown norm 'L3'; valid: Linf, L2, L1"),
        ({"norm": "L2", "eps": "-1"}, "eps must be in [0, 1e+07] under L2"),
        ({"eps": "2"}, "eps must be in [0, 1]"),  # Linf keeps the pixel scale's bound
        ({"norm": "L2", "eps": "0.5", "alpha": "0.01"}, "can't reach the edge of the ball"),
    ],
)
def test_bad_norms_and_budgets_are_one_line_usage_errors(values, needle):
    with pytest.raises(UsageError) as info:
        build_defense("pgd-at", values)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_lp_budgets_above_one_are_accepted():
    assert build_defense("trades", {"eps": "12", "norm": "L1"}).eps == 12.0


# --- the monitor ----------------------------------------------------------------------------


def test_the_overfitting_monitor_measures_under_l2(tiny_model, tiny_data):
    x, y = tiny_data
    torch.manual_seed(5)
    before = torch.get_rng_state()
    mon = Monitor(0.5, x, y, "L2")
    assert float(norms.distance(x, mon.start, "L2").max()) <= 0.5 + 1e-5
    fgsm, pgd = mon.measure(tiny_model)
    assert torch.equal(torch.get_rng_state(), before)  # its own generator only
    assert 0.0 <= pgd <= 1.0 and 0.0 <= fgsm <= 1.0
    assert (fgsm, pgd) == Monitor(0.5, x, y, "L2").measure(tiny_model)
    tiny_model.eval()
    clean = float((tiny_model(x).argmax(1) == y).float().mean())
    assert Monitor(0.0, x, y, "L2").measure(tiny_model) == (clean, clean)


# --- bench train --norm ---------------------------------------------------------------------


def _argv(tmp_path: Path, data_dir: Path, defense: str, *extra: str) -> list[str]:
    return [
        "train",
        *("--defense", defense, "--dataset", "fashion-mnist", "--model", "cnn"),
        *("--epochs", "1", "--train-limit", "64", "--eval-n", "32", "--batch-size", "32"),
        *("--data-dir", str(data_dir), "--no-download", "--no-progress"),
        *("--out", str(tmp_path / "ckpt"), *extra),
    ]


def _config(tmp_path: Path, run_id: str) -> dict:
    return json.loads((tmp_path / "ckpt" / run_id / checkpoint.CONFIG).read_text())


def test_bench_train_norm_l2_records_the_threat_model(tmp_path, fmnist_dir, capsys):
    argv = _argv(tmp_path, fmnist_dir, "pgd-at", "--norm", "l2", "--eps", "1", "--steps", "2")
    assert main([*argv, "--run-id", "l2"]) == 0
    config = _config(tmp_path, "l2")
    assert config["defense_params"]["norm"] == "L2" and config["defense_params"]["eps"] == 1.0
    assert config["defense_resolved"] == {"alpha": 1.25, "alpha_rule": "2.5*eps/steps"}


def test_set_norm_trains_fgsm_rs_under_l1_with_the_monitor(tmp_path, fmnist_dir, capsys):
    argv = _argv(tmp_path, fmnist_dir, "fgsm-rs", "--set", "norm=L1", "--set", "eps=4")
    assert main([*argv, "--run-id", "l1"]) == 0
    assert _config(tmp_path, "l1")["defense_params"]["norm"] == "L1"
    record = checkpoint.read_checkpoint(tmp_path / "ckpt" / "l1").run["catastrophic_overfitting"]
    assert len(record["pgd_acc"]) == 1 and 0.0 <= record["pgd_acc"][0] <= 1.0


def test_norm_linf_is_accepted_for_a_defense_without_one(tmp_path, fmnist_dir, capsys):
    assert main([*_argv(tmp_path, fmnist_dir, "standard", "--norm", "Linf"), "--run-id", "s"]) == 0
    assert "norm" not in _config(tmp_path, "s")["defense_params"]


@pytest.mark.parametrize(
    "defense,extra,needles",
    [
        ("standard", ["--norm", "L2"], ["defense standard has no norm", "pgd-at, trades"]),
        ("mixup", ["--norm", "L1"], ["defense mixup has no norm", "fgsm-rs"]),
        ("pgd-at", ["--norm", "L3"], ["unknown norm 'L3'; valid: Linf, L2, L1"]),
        ("standard", ["--norm", "L3"], ["unknown norm 'L3'; valid: Linf, L2, L1"]),
        ("pgd-at", ["--set", "norm=L3"], ["unknown norm 'L3'; valid: Linf, L2, L1"]),
        ("pgd-at", ["--norm", "L2", "--set", "norm=L1"], ["--norm and --set norm= disagree"]),
        ("trades", ["--norm", "L2", "--eps", "-1"], ["eps must be in [0, 1e+07] under L2"]),
    ],
)
def test_bad_norms_are_refused_with_one_line(defense, extra, needles, tmp_path, fmnist_dir, capsys):
    status = main(_argv(tmp_path, fmnist_dir, defense, *extra))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("bench: error: ")
    assert all(n in err for n in needles), err
    assert not (tmp_path / "ckpt").exists()


def test_a_run_saved_before_norms_still_resumes(tmp_path):
    """An interrupted run from before defenses had a norm trained under Linf: it resumes."""
    now = {
        "defense_params": {"eps": 8 / 255, "a": 0.5, "norm": "Linf"},
        "defense_resolved": {"alpha": 8 / 255, "alpha_rule": "eps"},
    }
    _check_same({"defense_params": {"eps": 8 / 255, "a": 0.5}}, now, tmp_path)
    with pytest.raises(UsageError, match="defense_params"):
        _check_same({"defense_params": {"eps": 4 / 255, "a": 0.5}}, now, tmp_path)
