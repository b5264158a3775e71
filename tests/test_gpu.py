"""The CUDA path: training and evaluation on a GPU. Skipped where CUDA is absent (CI has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.attacks import make_attack
from bench.evaluation.local import evaluate_checkpoint
from bench.store import Store
from bench.train import TrainConfig, train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "defense,params",
    [
        ("pgd-at", {"steps": "3"}),
        ("trades", {"steps": "3"}),
        ("batchout", {"pairing": "mutual", "partners": "same-class", "samples": "all"}),
        ("mixup", {}),
    ],
)
def test_train_and_evaluate_on_cuda(defense, params, tmp_path: Path, fmnist_dir: Path) -> None:
    cfg = TrainConfig(
        defense=defense,
        defense_params=params,
        epochs=1,
        train_limit=256,
        eval_n=64,
        batch_size=64,
        data_dir=str(fmnist_dir),
        download=False,
        device="cuda",
        out_dir=str(tmp_path),
        run_id=defense,
    )
    run_dir = train(cfg, progress=False, log=lambda s: None)
    ck = checkpoint.read_checkpoint(run_dir)
    assert ck.run["device"].startswith("cuda:")
    weights = ck.load_state()
    assert all(t.device.type == "cpu" for t in weights.values())  # loadable without a GPU
    ev = evaluate_checkpoint(
        run_dir,
        [
            make_attack("pgd"),
            make_attack("autoattack", {"version": "custom", "attacks": "apgd-ce"}),
        ],
        [0.0, 8 / 255],
        n=32,
        batch_size=32,
        seed=0,
        device="cuda",
        data_dir=fmnist_dir,
        store=tmp_path / "r.sqlite",
        progress=False,
        download=False,
    )
    assert [r.attack.name for r in ev.results] == ["pgd", "autoattack"] and len(ev.worst) == 2
    with Store(tmp_path / "r.sqlite") as store:
        assert all(r.device.startswith("cuda:") for r in store.results())


@pytest.mark.parametrize(
    "options", [{"amp": "bf16"}, {"channels_last": True}, {"amp": "bf16", "channels_last": True}]
)
def test_speed_options_train_on_cuda(options, tmp_path: Path, fmnist_dir: Path) -> None:
    """bf16 autocast and channels-last on the GPU: the run finishes, records its options, and its
    weights stay float32 and contiguous on the CPU (loadable anywhere)."""
    cfg = TrainConfig(
        defense="pgd-at",
        defense_params={"steps": "3"},
        epochs=1,
        train_limit=256,
        eval_n=64,
        batch_size=64,
        data_dir=str(fmnist_dir),
        download=False,
        device="cuda",
        out_dir=str(tmp_path),
        run_id="speed",
        **options,
    )
    ck = checkpoint.read_checkpoint(train(cfg, progress=False, log=lambda s: None))
    assert all(ck.config[k] == v for k, v in options.items())
    weights = ck.load_state()
    assert all(t.dtype != torch.bfloat16 and t.device.type == "cpu" for t in weights.values())


def test_perf_quick_on_cuda(tmp_path: Path, fmnist_dir: Path) -> None:
    """``bench perf --quick`` on CUDA: preact-resnet18 on CIFAR-10's shape (synthetic tensors
    without CIFAR-10 on disk), every figure written."""
    from bench.perf import PerfConfig, run_perf

    r = run_perf(PerfConfig(device="cuda", data_dir=str(tmp_path), quick=True, memory_n=32))
    assert r["model"] == "preact-resnet18" and r["device"].startswith("cuda")
    assert "synthetic" in r["data"] and r["memory"]["cuda_peak_mb"] > 0
    assert set(r["targets"]) and r["training"]["bf16"]["fp32_over_bf16"] > 0
