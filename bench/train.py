"""The one training loop, shared by every defense.

SGD with momentum and weight decay, a piecewise or cosine learning-rate schedule stepped every
iteration, a seed, a progress bar and a per-epoch log. The defense only supplies the loss. On a
GPU the whole training set lives on the device (as uint8) and augmentation runs there.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bench import checkpoint, paths
from bench.data import DatasetInfo, ImageSet, dataset_info, load_dataset
from bench.defenses import Defense, build_defense, defense_params
from bench.errors import UsageError
from bench.io import device_label, library_versions, pick_device
from models import create_model

SCHEDULES = ("piecewise", "cosine")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved, fully resolved, as the checkpoint's config.json."""

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    defense: str = "standard"
    defense_params: dict[str, str] = field(default_factory=dict)  # strings as typed by the user
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"  # lr x0.1 at 50% and 75% of the iterations; or "cosine"
    seed: int = 0
    train_limit: int | None = None
    eval_n: int = 1000  # test points used for the per-epoch clean accuracy
    augment: bool = True  # the data set's standard augmentation (none for the MNISTs)
    data_dir: str | None = None
    download: bool = True
    device: str | None = None
    out_dir: str | None = None
    run_id: str | None = None


@dataclass
class Prepared:
    """A validated run: everything built, nothing written yet."""

    cfg: TrainConfig
    info: DatasetInfo
    train_set: ImageSet
    test_set: ImageSet
    model: nn.Module
    defense: Defense
    device: torch.device
    run_dir: Path


def lr_at(cfg: TrainConfig, it: int, total: int) -> float:
    """Learning rate at iteration ``it`` of ``total`` (stepped per iteration, not per epoch)."""
    frac = it / max(total, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (0.1 if frac >= 0.5 else 1.0) * (0.1 if frac >= 0.75 else 1.0)


def augment_batch(x: torch.Tensor, mode: str, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding, and random horizontal flip for
    ``crop-flip``; on whatever device ``x`` is on. ``none`` returns ``x`` unchanged."""
    if mode == "none":
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # One random offset per image; gather its h x w window with index arithmetic (no loop).
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    if mode == "crop-flip":
        flip = torch.rand(n, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500) -> float:
    """Clean accuracy in eval mode (BatchOut and dropout off, batch-norm running statistics)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)), device=data.x.device)
        correct += int((model(data.images(idx)).argmax(1) == data.y[idx]).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def default_run_id(cfg: TrainConfig) -> str:
    """``<defense>-<model>-<dataset>-s<seed>-<UTC time>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.defense}-{cfg.model}-{cfg.dataset}-s{cfg.seed}-{stamp}"


def prepare(cfg: TrainConfig) -> Prepared:
    """Check every input and build data, model and defense; raises UsageError, writes nothing."""
    if cfg.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}")
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
    info = dataset_info(cfg.dataset)  # unknown data set -> UsageError with the valid names
    defense = build_defense(cfg.defense, cfg.defense_params)  # unknown defense / key -> UsageError
    torch.manual_seed(cfg.seed)  # the weights' initialisation; seeds CUDA too
    model = create_model(  # unknown model, or one that can't take this data set -> UsageError
        cfg.model, channels=info.channels, num_classes=info.num_classes,
        image_size=info.image_size, mean=info.mean, std=info.std,
    )
    run_dir = Path(cfg.out_dir or paths.checkpoints_dir()).expanduser().resolve() / (
        cfg.run_id or default_run_id(cfg)
    )
    if cfg.run_id is not None and (not cfg.run_id or "/" in cfg.run_id or cfg.run_id.startswith(".")):
        raise UsageError(f"--run-id {cfg.run_id!r} must be a plain directory name")
    if run_dir.exists():
        raise UsageError(f"checkpoint directory {run_dir} already exists; choose another --run-id")
    device = pick_device(cfg.device)
    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, limit=cfg.train_limit, download=cfg.download)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
    test_set = test_set.subset(min(cfg.eval_n, len(test_set)))
    # Hooks are checked against the model before anything is written (BatchOut's layer names).
    defense.attach(model)
    defense.detach()
    return Prepared(cfg, info, train_set, test_set, model, defense, device, run_dir)


def resolved_config(p: Prepared) -> dict[str, Any]:
    """The configuration as saved: user settings plus every resolved default."""
    cfg = asdict(p.cfg)
    cfg.pop("out_dir")
    cfg.pop("device")
    cfg["run_id"] = p.run_dir.name
    cfg["defense_params"] = defense_params(p.defense)
    cfg["dataset_info"] = asdict(p.info)
    cfg["train_size"] = len(p.train_set)
    cfg["augment_mode"] = p.info.augment if p.cfg.augment else "none"
    return cfg


def train(
    cfg: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """Train ``cfg`` and write its checkpoint; returns the checkpoint directory."""
    p = prepare(cfg)  # seeds torch's global generators, which the defenses draw from
    model, defense, device = p.model.to(p.device), p.defense, p.device
    train_set, test_set = p.train_set.to(device), p.test_set.to(device)
    augment = p.info.augment if cfg.augment else "none"
    config = resolved_config(p)
    p.run_dir.mkdir(parents=True)
    checkpoint.write_config(p.run_dir, config)

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    n = len(train_set)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    shuffle = torch.Generator().manual_seed(cfg.seed)  # on the CPU: same order on every device
    epoch_log: list[dict[str, Any]] = []
    defense.attach(model)
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"train {cfg.defense}", unit="batch", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            defense.reset_stats()
            epoch_start = time.perf_counter()
            loss_sum, seen = 0.0, 0
            order = torch.randperm(n, generator=shuffle).to(device)
            for step in range(steps_per_epoch):
                it = (epoch - 1) * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, it, total_steps)
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = augment_batch(train_set.images(idx), augment)
                y = train_set.y[idx]
                loss = defense.loss(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}")
            seconds = time.perf_counter() - epoch_start
            entry: dict[str, Any] = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": loss_sum / seen,
                "clean_acc": accuracy(model, test_set),  # on the first eval_n test points
                "seconds": seconds,
                "images_per_s": seen / seconds,
            }
            robust = defense.robust_accuracy()
            if robust is not None:
                entry["train_robust_acc"] = robust  # on this epoch's adversarial training inputs
            epoch_log.append(entry)
            checkpoint.write_log(p.run_dir, epoch_log)
            log(
                f"epoch {epoch}/{cfg.epochs}  loss {entry['loss']:.4f}  clean acc {entry['clean_acc']:.2%}"
                + (f"  train robust acc {robust:.2%}" if robust is not None else "")
                + f"  {seconds:.1f} s ({entry['images_per_s']:.0f} images/s)"
            )
    finally:
        bar.close()
        defense.detach()
    train_seconds = time.perf_counter() - started
    run = {
        "versions": library_versions(),
        "device": device_label(device),
        "train_seconds": train_seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "final": epoch_log[-1],
    }
    return checkpoint.write_final(p.run_dir, model, run)
