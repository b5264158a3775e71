"""``bench perf``: its parts on tiny inputs (seconds), and the whole ``bench perf --quick``
(marked slow: about 20 s on 2 busy cores, 40 s before --quick narrowed the cnn), which must write
every ratio the issue asks for, each sane. No timing thresholds: the figures depend on the
machine; their structure and consistency do not."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_problem

from bench import perf as bp
from bench.attacks import make_attack
from bench.cli import main
from bench.defenses import DEFENSES, build_defense
from bench.evaluation.walk import DEFAULT_WALK, WALKS


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Every test here runs with one intra-op thread (see conftest.one_thread)."""


# ------------------------------------------------------------------ parts, tiny inputs


def test_passes_count_the_forward_backward_passes() -> None:
    limits = {name: bp.passes(build_defense(name)) for name in DEFENSES.names()}
    assert limits == {
        "standard": 1,
        "batchout": 1,
        "mixup": 1,
        "fgsm-at": 3,
        "fgsm-rs": 2,
        "pgd-at": 11,
        "trades": 12,
    }
    assert bp.passes(build_defense("pgd-at", {"steps": "7"})) == 8


def _forwards(model: torch.nn.Module, step: Any) -> int:
    """How many forward passes of ``model`` with autograd on (each followed by a backward) one
    call of ``step`` makes; forward-only passes (TRADES' clean target) are not counted."""
    calls: list[int] = []
    handle = model.register_forward_hook(
        lambda *_: calls.append(1) if torch.is_grad_enabled() else None
    )
    try:
        step()
    finally:
        handle.remove()
    return len(calls)


def _cnn_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The registry's cnn (Fashion-MNIST's shape) and a random batch of 16."""
    from bench.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn", channels=1, num_classes=10, image_size=28, mean=(0.5,), std=(0.5,))
    return model, torch.rand(16, 1, 28, 28), torch.arange(16) % 10


@pytest.mark.parametrize("name", DEFENSES.names())
def test_training_step_passes_stay_within_the_limit(name: str) -> None:
    """The guard of the CPU targets that does not depend on the machine's load: each defense's
    step runs at most its limit of forward passes (PGD-AT: K + 1), so its cost over the clean
    step can only exceed the limit through slower passes, not more of them."""
    model, x, y = _cnn_batch()
    defense = build_defense(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    defense.attach(model)
    try:
        n = _forwards(model, lambda: bp.sgd_step(defense, model.train(), opt, x, y))
    finally:
        defense.detach()
    assert n <= bp.passes(defense), (name, n)


def test_bench_pgd_at_makes_no_more_passes_than_the_torchattacks_loop() -> None:
    """bench's PGD-AT step and the loop written with torchattacks.PGD make the same K + 1 forward
    passes on the same batch (the perf table measures the seconds)."""
    import torch.nn.functional as F
    import torchattacks

    model, x, y = _cnn_batch()
    defense, opt = build_defense("pgd-at"), torch.optim.SGD(model.parameters(), lr=0.01)
    atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)

    def torchattacks_step() -> None:
        loss = F.cross_entropy(model(atk(x, y)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    defense.attach(model)
    try:
        ours = _forwards(model, lambda: bp.sgd_step(defense, model.train(), opt, x, y))
    finally:
        defense.detach()
    assert ours == 11 <= _forwards(model, torchattacks_step)


def test_interleave_runs_sides_in_turn() -> None:
    order: list[str] = []
    sides = {k: (lambda k=k: order.append(k) or len(order)) for k in ("a", "b")}
    median, last = bp.interleave(sides, 3, torch.device("cpu"), warmup=1)
    assert order == ["a", "b"] * 4  # the warm-ups, then three rounds of a, b
    assert last == {"a": 7, "b": 8} and all(v >= 0 for v in median.values())


def test_grid_against_single_on_a_tiny_model() -> None:
    model, x, y = tiny_problem(flip=(1, 7))
    entry = bp.grid_against_single(
        model, make_attack("pgd", {"steps": "3"}), x, y, WALKS, 1, torch.device("cpu")
    )
    results = entry.pop("_results")
    assert entry["clean"] == 38 and entry["points"] == 40
    for w, e in entry["walks"].items():
        assert e["over_single"] == pytest.approx(e["seconds"] / entry["single_seconds"])
        assert e["robust_by_eps"] == [int(f.sum()) for f in results[w].flags]
        assert e["top_equals_single"] == (
            w != "up" or torch.equal(results[w].flags[-1], results["single"].flags[0])
        )
    assert entry["walks"]["up"]["point_attacks"] > entry["walks"]["bisect"]["point_attacks"]
    checks = bp.inferred_against_direct(
        model, make_attack("pgd", {"steps": "3"}), x, y, results[DEFAULT_WALK]
    )
    assert set(checks) == {"4/255", "6/255"}
    for c in checks.values():
        assert (
            c["difference_points"]
            == c["robust_in_walk_broken_direct"] - c["broken_in_walk_robust_direct"]
        )


def test_targets_say_what_holds() -> None:
    def result(step: float, ta: float, grid: float, inside: bool) -> dict[str, Any]:
        check = {"difference_points": 1, "walk_inside_direct_ci95": inside}
        return {
            "training": {
                "defenses": {"pgd-at": {"over_clean": step}},
                "torchattacks": {"torchattacks_over_bench": ta},
            },
            "grid": {
                "robust": {
                    "autoattack": {
                        "walks": {DEFAULT_WALK: {"over_single": grid}},
                        "inferred_against_direct": {"4/255": check, "6/255": check},
                    }
                }
            },
        }

    good = bp.targets(result(8.8, 1.03, 1.3, True))
    assert len(good) == 5 and all(v["holds"] for v in good.values())
    assert not any(v["holds"] for v in bp.targets(result(10.5, 0.8, 3.2, False)).values())


# ------------------------------------------------------------------- --quick, cheaply


def test_quick_narrows_the_cnn_on_the_cpu(fmnist_dir: Path) -> None:
    """--quick trains and attacks a narrower cnn (the attacks' hundreds of passes are then
    cheap); without it, the registry's cnn."""
    quick = bp.make_setup(bp.quick_config(bp.PerfConfig(quick=True, data_dir=str(fmnist_dir))), 8)
    full = bp.make_setup(bp.PerfConfig(data_dir=str(fmnist_dir), train_limit=128), 8)
    assert quick.model_options == bp.QUICK_CNN and full.model_options == {}
    assert bp.arch_label(quick.model_name, quick.model_options) == "cnn[widths=8-16,hidden=32]"
    assert bp.arch_label(full.model_name, full.model_options) == "cnn"
    sizes = [sum(p.numel() for p in bp.fresh_model(s).parameters()) for s in (quick, full)]
    assert sizes[0] * 10 < sizes[1]


def test_the_memory_process_rebuilds_the_narrow_cnn(fmnist_dir: Path) -> None:
    """The fresh process of the memory figure gets each model's build options with its weights."""
    setup = bp.make_setup(bp.quick_config(bp.PerfConfig(quick=True, data_dir=str(fmnist_dir))), 8)
    model = bp.fresh_model(setup, seed=3).eval()
    spec = {
        "dataset": "fashion-mnist",
        "robust": model.state_dict(),
        "robust_model": "cnn",
        "robust_options": setup.model_options,
    }
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(bp._rebuild(spec, "robust")(x), model(x))


def test_quick_help_says_what_it_costs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["perf", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "about 20 s on 2 CPU cores" in text and "(seconds)" not in text


# -------------------------------------------------------------- the whole quick run


@pytest.fixture(scope="module")
def perf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One ``bench perf --quick`` on conftest's small Fashion-MNIST: its JSON and its table."""
    from conftest import write_small_fmnist

    root = tmp_path_factory.mktemp("perf")
    write_small_fmnist(root / "data")
    out = root / "perf.json"
    buffer = io.StringIO()  # capsys is per test; the run is once per module
    with contextlib.redirect_stdout(buffer):
        assert (
            main(
                [
                    "perf",
                    "--quick",
                    "--data-dir",
                    str(root / "data"),
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                    "--epoch-images",
                    "64",
                ]
            )
            == 0
        )
    return json.loads(out.read_text()), buffer.getvalue()


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_training_ratios(perf_run: tuple[dict[str, Any], str]) -> None:
    r, _ = perf_run
    t = r["training"]
    assert set(t["defenses"]) == set(DEFENSES.names())
    for name, d in t["defenses"].items():
        assert _finite(d["step_ms"]) and _finite(d["images_per_s"]) and _finite(d["over_clean"]), (
            name
        )
        assert d["images_per_s"] == pytest.approx(1000 * t["batch"] / d["step_ms"])
        assert d["over_clean"] == pytest.approx(d["step_ms"] / t["clean_step_ms"])
    assert t["defenses"]["standard"]["over_clean"] == 1.0
    assert [
        t["defenses"][n]["limit"] for n in ("standard", "fgsm-rs", "fgsm-at", "pgd-at", "trades")
    ] == [1, 2, 3, 11, 12]
    ta = t["torchattacks"]
    assert ta["torchattacks_over_bench"] == pytest.approx(ta["torchattacks_ms"] / ta["bench_ms"])
    assert ta["repeats"] == 3 * t["repeats"] and _finite(ta["bench_ms"])  # a comparison of its own
    assert t["bf16"]["fp32_over_bf16"] == pytest.approx(
        ta["bench_ms"] / t["bf16"]["pgd_at_bf16_ms"]
    )


@pytest.mark.slow
def test_whole_epochs_fp32_and_bf16(perf_run: tuple[dict[str, Any], str]) -> None:
    r, table = perf_run
    got = [(e["defense"], e["bf16"], e["channels_last"]) for e in r["epochs"]]
    assert got == [
        ("pgd-at", False, False),
        ("pgd-at", True, True),
        ("fgsm-rs", False, False),
        ("fgsm-rs", True, True),
    ]
    for e in r["epochs"]:
        assert e["images"] == 64 and e["images_per_s"] == pytest.approx(64 / e["seconds"])
    assert "epoch of pgd-at, 64 images" in table


@pytest.mark.slow
def test_grid_ratios_and_meanings(perf_run: tuple[dict[str, Any], str]) -> None:
    r, _ = perf_run
    assert set(r["grid"]) == {"robust", "standard"}
    for role, by in r["grid"].items():
        assert set(by) == {"pgd", "autoattack"}
        for key, g in by.items():
            walks = set(WALKS) if key == "pgd" else {DEFAULT_WALK}
            assert (
                set(g["walks"]) == walks
                and _finite(g["single_seconds"])
                and _finite(g["points_per_s"])
            )
            for w, e in g["walks"].items():
                assert e["over_single"] == pytest.approx(e["seconds"] / g["single_seconds"])
                assert len(e["attacked_per_eps"]) == 9 and e["attacked_per_eps"][0] == 0
                if w != "up":  # top-down first step: the largest eps is the single run itself
                    assert e["top_equals_single"] and e["top"] == g["single_top"]
                    assert e["attacked_per_eps"][8] == g["clean"]
                else:
                    assert e["top"]["k"] <= g["single_top"]["k"] or not e["top_equals_single"]
                robust = e["robust_by_eps"]
                assert (
                    robust == sorted(robust, reverse=True) and robust[0] == g["clean"]
                )  # monotone
    for key in ("pgd", "autoattack"):
        checks = r["grid"]["robust"][key]["inferred_against_direct"]
        assert set(checks) == {"4/255", "6/255"}
        for c in checks.values():
            assert c["difference_points"] == c["walk"]["k"] - c["direct"]["k"]
            assert (
                c["difference_points"]
                == c["robust_in_walk_broken_direct"] - c["broken_in_walk_robust_direct"]
            )
            assert isinstance(c["walk_inside_direct_ci95"], bool)


@pytest.mark.slow
def test_memory_targets_and_machine(perf_run: tuple[dict[str, Any], str]) -> None:
    r, table = perf_run
    m = r["memory"]
    assert m["n"] == 16 and m["peak_rss_mb"] >= m["rss_before_mb"] > 0 and m["python_peak_mb"] > 0
    assert m["added_mb"] == pytest.approx(m["peak_rss_mb"] - m["rss_before_mb"])
    assert set(r["targets"]) == {
        "pgd_at_step_over_clean_at_most_10",
        "torchattacks_over_bench_at_least_1",
        "autoattack_grid_over_single_at_most_3_robust",
        "autoattack_walk_inside_direct_ci95_at_4/255",
        "autoattack_walk_inside_direct_ci95_at_6/255",
    }
    t = r["targets"]
    assert t["pgd_at_step_over_clean_at_most_10"]["holds"] == (
        t["pgd_at_step_over_clean_at_most_10"]["value"] <= 10
    )
    assert (
        r["device"].startswith("cpu")
        and r["data"] == "fashion-mnist (real)"
        and r["model"] == "cnn[widths=8-16,hidden=32]"
    )
    assert r["machine_before"]["cpus"] >= 1 and r["config"]["quick"] is True
    for needle in (
        "training step",
        "torchattacks/bench",
        "fp32/bf16",
        "single runs",
        "walk bisect",
        "inside the direct 95%",
        "memory, evaluation of 16 points",
        "target autoattack_grid_over_single_at_most_3_robust",
    ):
        assert needle in table, needle
    assert "(--quick: a smoke test, no verdict)" in table  # a narrowed model judges nothing
    assert "holds" not in table and "MISSED" not in table


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--n", "0"], "--n must be a whole number"),
        (["--aa-walks", "sideways"], "--walk must be one of"),
        (["--aa-attacks", "apgd-xx"], "apgd-xx"),
        (["--threads", "0"], "--threads"),
        (["--epoch-defenses", "pgd-at,nope"], "nope"),
        (["--epoch-images", "-1"], "--epoch-images"),
        (["--robust", "/nonexistent/ckpt", "--memory-n", "0"], "/nonexistent/ckpt"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    extra: list[str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fmnist_dir: Path,
) -> None:
    out = tmp_path / "perf.json"
    rc = main(
        [
            "perf",
            "--quick",
            "--data-dir",
            str(fmnist_dir),
            "--device",
            "cpu",
            "--out",
            str(out),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("bench: error:") and needle in err[0], (
        err
    )
    assert not out.exists()
