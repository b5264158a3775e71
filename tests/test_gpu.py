"""The CUDA path: training and evaluation on a GPU. Skipped where CUDA is absent (CI has none)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.store import Store

from bench import checkpoint
from bench.attacks import make_attack
from bench.evaluate import evaluate_checkpoint
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
    cfg = TrainConfig(defense=defense, defense_params=params, epochs=1, train_limit=256, eval_n=64,
                      batch_size=64, data_dir=str(fmnist_dir), download=False, device="cuda",
                      out_dir=str(tmp_path), run_id=defense)
    run_dir = train(cfg, progress=False, log=lambda s: None)
    ck = checkpoint.read_checkpoint(run_dir)
    assert ck.run["device"].startswith("cuda:")
    weights = ck.load_state()
    assert all(t.device.type == "cpu" for t in weights.values())  # loadable without a GPU
    ev = evaluate_checkpoint(
        run_dir, [make_attack("pgd"), make_attack("autoattack", {"version": "custom", "attacks": "apgd-ce"})],
        [0.0, 8 / 255], n=32, batch_size=32, seed=0, device="cuda", data_dir=fmnist_dir,
        store=tmp_path / "r.sqlite", progress=False, download=False,
    )
    assert [r.attack.name for r in ev.results] == ["pgd", "autoattack"] and len(ev.worst) == 2
    with Store(tmp_path / "r.sqlite") as store:
        assert all(r.device.startswith("cuda:") for r in store.results())
