"""``bench perf``: what adversarial training and evaluation cost, measured side by side.

Every ratio compares two sides measured in the same process, interleaved (A, B, A, B, ...), each
side's figure the median of its repeats, so that a change of machine load hits both sides alike.

* **Training steps**: one SGD step of each defense's loss on the same batch, against the clean
  (``standard``) step, beside the step's limit by the count of forward+backward passes
  (PGD-AT: steps + 1; TRADES: steps + 2; FGSM-AT: 3; FGSM-RS: 2). Images/s = batch / step time.
* **bench against torchattacks**: bench's PGD-AT step against the loop a user would write with
  torchattacks (``torchattacks.PGD(model, eps, alpha, steps, random_start=True)(x, y)``, then
  cross-entropy and an SGD step), same model, batch and budget, the model in training mode
  during the attack on both sides; a comparison of its own, three times the repeats.
* **bf16**: bench's PGD-AT step under bfloat16 autocast (``bench train --amp bf16``) against
  the same step in float32.
* **Grid against a single run**: each walk of the 9-point grid 0..8/255 against one run of the
  same attack at 8/255, for PGD-10 and for AutoAttack (standard unless told), on a robust
  (PGD-AT) and a standard model. Images/s of an attack: clean-correct points / single-run time.
* **Inferred against measured**: on the robust model, the walk's robust accuracy at two smaller
  eps (4/255 and 6/255) against a direct run there, with 95% Wilson intervals.
* **Memory**: the peak resident memory (CPU) or CUDA allocation of a whole evaluation of
  ``memory_n`` points (FGSM and PGD-2, the costly diagnostics with transfer on, a store), in a
  fresh process, beside that process's peak before the evaluation.

On the CPU: the registry's ``cnn`` on Fashion-MNIST. On CUDA: ``preact-resnet18`` on CIFAR-10
when the data directory has it, else on synthetic tensors of CIFAR-10's shape (the JSON says
which). The robust and standard models are trained here, briefly, unless checkpoints are given.

``--quick`` (a smoke test of every figure, not a measurement to keep): 8 test points, one
repeat (PGD's walks too), 128 training images, AutoAttack's APGD-CE alone, 16 points for the
memory, and on the CPU the ``cnn`` narrowed to :data:`QUICK_CNN` (the JSON's ``model`` says so).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench import paths
from bench.attacks import Attack, make_attack
from bench.data import DatasetInfo, dataset_info, load_dataset
from bench.defenses import DEFENSES, build_defense
from bench.defenses.adversarial import FGSMAT, FGSMRS, PGDAT, TRADES
from bench.defenses.base import Defense
from bench.errors import UsageError
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.results import Estimate
from bench.evaluation.targets import Target
from bench.evaluation.walk import DEFAULT_WALK, WALKS, GridResult, check_walk, grid_walk, predict
from bench.io import atomic_write_json, device_label, library_versions, pick_device
from bench.models import create_model
from bench.sources import from_checkpoint, from_module
from bench.store import Store
from bench.train import optimizer_step

GRID = [i / 255 for i in range(9)]  # the default grid of bench eval: 0..8/255
SMALLER = (4 / 255, 6 / 255)  # where the walk's inferred numbers are checked against direct runs
EVAL_BATCH = 500  # points per attack call, as bench eval's default
LR = 0.05  # SGD of the quick training here (bench train's default)
#: --quick on the CPU: the registry's cnn with narrower layers (a sixteenth of the convolution
#: work), so that the attacks' hundreds of passes take seconds.
QUICK_CNN: dict[str, Any] = {"widths": [8, 16], "hidden": 32}

#: A model with how it was built: the model, its registry name, the options given its factory.
Built = tuple[nn.Module, str, dict[str, Any]]


@dataclass
class PerfConfig:
    """What ``bench perf`` measures and on how much."""

    device: str | None = None
    data_dir: str | None = None
    n: int = 40  # test points of the grid comparisons
    repeats: int = 5  # training-step repeats (medians)
    grid_repeats: int = 1  # repeats of each grid-against-single comparison
    batch_size: int = 128  # training batch
    train_limit: int = 10000  # training images of the models trained here
    epochs: int = 2  # epochs of the models trained here
    memory_n: int = 10000  # points of the memory measurement (0: skip it)
    epoch_images: int = (
        0  # images of the whole-epoch timings (0: skip them; the GPU script: 50,000)
    )
    epoch_defenses: tuple[str, ...] = ("pgd-at", "fgsm-rs")  # defenses of the whole-epoch timings
    epoch_batch: int = 512  # batch of the whole-epoch timings
    aa_attacks: str | None = None  # None: standard AutoAttack; else a custom component list
    walks: tuple[str, ...] = (DEFAULT_WALK,)  # walks timed with AutoAttack (PGD: every walk)
    robust: str | None = None  # a PGD-AT checkpoint instead of training one here
    standard: str | None = None  # a standard checkpoint instead of training one here
    quick: bool = False  # a tiny run for the tests
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def quick_config(cfg: PerfConfig) -> PerfConfig:
    """The tiny version of ``cfg`` (``--quick``): every figure, on almost nothing."""
    return replace(
        cfg,
        n=min(cfg.n, 8),
        repeats=1,
        grid_repeats=1,
        batch_size=32,
        train_limit=min(cfg.train_limit, 128),
        epochs=1,
        memory_n=min(cfg.memory_n, 16),
        epoch_images=min(cfg.epoch_images, 64),
        epoch_batch=min(cfg.epoch_batch, 32),
        aa_attacks=cfg.aa_attacks or "apgd-ce",
        threads=1 if cfg.threads is None else cfg.threads,
    )


def check_config(cfg: PerfConfig) -> None:
    """Whole numbers in range and known walks (UsageError)."""
    for flag, value, low in (
        ("--n", cfg.n, 1),
        ("--repeats", cfg.repeats, 1),
        ("--grid-repeats", cfg.grid_repeats, 1),
        ("--batch-size", cfg.batch_size, 1),
        ("--train-limit", cfg.train_limit, 1),
        ("--epochs", cfg.epochs, 1),
        ("--memory-n", cfg.memory_n, 0),
        ("--epoch-images", cfg.epoch_images, 0),
        ("--epoch-batch", cfg.epoch_batch, 1),
        ("--threads", 1 if cfg.threads is None else cfg.threads, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**8:
            raise UsageError(f"{flag} must be a whole number in {low}..10**8, got {value!r}")
    if not cfg.walks:
        raise UsageError("--walks names no walk")
    for name in cfg.epoch_defenses:
        build_defense(name)  # UsageError naming the valid ones
    for w in cfg.walks:
        check_walk(w)


# ----------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """Device, model, data: a training subset and the first test points, on the device."""

    device: torch.device
    model_name: str
    info: DatasetInfo
    data: str  # which data, in words (real or synthetic)
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor  # float in [0, 1], CPU
    test_y: torch.Tensor
    model_options: dict[str, Any] = field(default_factory=dict)  # --quick's narrower cnn


def arch_label(name: str, options: dict[str, Any]) -> str:
    """``cnn``, or ``cnn[widths=8-16,hidden=32]`` when built with options."""
    if not options:
        return name
    words = ["-".join(map(str, v)) if isinstance(v, list) else str(v) for v in options.values()]
    return f"{name}[{','.join(f'{k}={w}' for k, w in zip(options, words))}]"


def build_model(name: str, info: DatasetInfo, options: dict[str, Any]) -> nn.Module:
    """Model ``name`` for the data set's shape, its factory given ``options`` (e.g. the cnn's
    widths; none: the registry's model as :func:`bench.models.create_model` builds it)."""
    shape = dict(
        channels=info.channels,
        num_classes=info.num_classes,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )
    return create_model(name, **shape, **options)  # type: ignore[arg-type]


def _synthetic(info: DatasetInfo, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random images of the data set's shape with random labels (fixed by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, info.channels, info.image_size, info.image_size, generator=g)
    return x, torch.randint(0, info.num_classes, (n,), generator=g)


def _real(name: str, split: str, n: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n points of a split (never downloaded here: UsageError when missing)."""
    s = load_dataset(name, split, data_dir, download=False)
    n = min(n, len(s))
    return s.images(slice(0, n)).contiguous(), s.y[:n].clone()


def points(
    dataset: str, split: str, n: int, data_dir: str | None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images and labels of ``dataset`` (real; on CUDA CIFAR-10 falls back to synthetic tensors
    of its shape when the data directory lacks it) and which they are, in words."""
    info = dataset_info(dataset)
    if dataset != "cifar10":
        return (*_real(dataset, split, n, data_dir), f"{dataset} (real)")
    try:
        return (*_real(dataset, split, n, data_dir), "cifar10 (real)")
    except UsageError:
        seed = 1 if split == "train" else 2
        return (
            *_synthetic(info, n, seed),
            "synthetic tensors of CIFAR-10's shape (no CIFAR-10 in the data directory)",
        )


def make_setup(cfg: PerfConfig, test_n: int) -> Setup:
    """cnn on Fashion-MNIST on the CPU; preact-resnet18 on CIFAR-10's shape on CUDA."""
    device = pick_device(cfg.device)
    dataset, model = (
        ("cifar10", "preact-resnet18") if device.type == "cuda" else ("fashion-mnist", "cnn")
    )
    tx, ty, what = points(dataset, "train", cfg.train_limit, cfg.data_dir)
    ex, ey, _ = points(dataset, "test", test_n, cfg.data_dir)
    if len(ex) < test_n:
        raise UsageError(f"--n/--memory-n ask for {test_n} test points; {dataset} has {len(ex)}")
    if len(tx) < cfg.batch_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} is larger than the {len(tx)} training images"
        )
    options = QUICK_CNN if cfg.quick and model == "cnn" else {}
    info = dataset_info(dataset)
    return Setup(device, model, info, what, tx.to(device), ty.to(device), ex, ey, options)


def fresh_model(setup: Setup, seed: int = 0) -> nn.Module:
    """The set-up's model, initialised from ``seed``, on its device, in training mode."""
    torch.manual_seed(seed)
    model = build_model(setup.model_name, setup.info, setup.model_options)
    return model.to(setup.device).train()


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)


def sgd_step(
    defense: Defense, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    """One training step as bench's loop takes it, in float32
    (:func:`bench.train.optimizer_step`)."""
    optimizer_step(defense, model, opt, x, y)


def train_quick(setup: Setup, defense_name: str, epochs: int, batch: int, seed: int) -> nn.Module:
    """A model trained here with ``defense_name`` on the set-up's training images (the shuffle
    and the initialisation from ``seed``); returned in eval mode."""
    model, defense = fresh_model(setup, seed), build_defense(defense_name)
    opt, n = _sgd(model), len(setup.train_x)
    g = torch.Generator().manual_seed(seed)
    defense.attach(model)
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=g).to(setup.device)
            for start in range(0, n - batch + 1, batch):  # whole batches only
                idx = order[start : start + batch]
                sgd_step(defense, model, opt, setup.train_x[idx], setup.train_y[idx])
    finally:
        defense.detach()
    return model.eval()


def load_model(path: str, setup: Setup) -> Built:
    """A checkpoint's model (of the set-up's data set) on the device, in eval mode, with the
    name of its architecture."""
    src = from_checkpoint(paths.resolve(path, "checkpoint"))
    if src.dataset != setup.info.name:
        raise UsageError(
            f"checkpoint {path} is of {src.dataset}; bench perf here runs on {setup.info.name}"
        )
    return src.model.to(setup.device).eval(), str(src.config.get("model")), {}


# ------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    """Wait for the device (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    sides: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each side run ``warmup`` times untimed, then ``repeats`` rounds of every side in turn;
    returns each side's median seconds and its last result."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in sides}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            _sync(device)
            started = time.perf_counter()
            last[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - started)  # seconds
    return {k: statistics.median(v) for k, v in times.items()}, last


# ---------------------------------------------------------------- training steps


def passes(defense: Defense) -> int:
    """Forward+backward passes of one training step by the count: the limit of its cost in
    clean steps (a backward to the input alone is cheaper, so the cost can be below it)."""
    if isinstance(defense, PGDAT):
        return defense.steps + 1  # K attack passes + the training pass
    if isinstance(defense, TRADES):
        return defense.steps + 2  # K KL passes + clean and adversarial training passes
    if isinstance(defense, FGSMAT):
        return 3  # the FGSM pass + clean and adversarial training passes
    if isinstance(defense, FGSMRS):
        return 2
    return 1


def _defense_side(
    setup: Setup, name: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[[], None], Defense]:
    """A training step of defense ``name`` on its own model (same initialisation for all)."""
    defense, model = build_defense(name), fresh_model(setup)
    opt = _sgd(model)
    defense.attach(model)
    return (lambda: sgd_step(defense, model, opt, x, y)), defense


def _bf16_side(
    setup: Setup, x: torch.Tensor, y: torch.Tensor
) -> tuple[Callable[[], None], Defense]:
    """bench's PGD-AT step under bfloat16 autocast, as ``bench train --amp bf16`` takes it
    (:func:`bench.train.optimizer_step`): the attack and training forward passes in bf16,
    backward and the SGD step outside autocast, weights float32."""
    defense, model = build_defense("pgd-at"), fresh_model(setup)
    opt = _sgd(model)
    defense.attach(model)
    return (lambda: optimizer_step(defense, model, opt, x, y, "bf16")), defense


def _torchattacks_side(setup: Setup, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The PGD-AT step written with torchattacks: PGD-10 at 8/255, step 2/255, random start,
    the model left in training mode during the attack, as bench's PGD-AT and the reference
    implementations do (torchattacks' default switches it to eval mode: other work, cheaper
    batch norm, another result)."""
    import torchattacks  # here: slow to import (about 0.7 s); only for this comparison

    model = fresh_model(setup)
    opt, atk = (
        _sgd(model),
        torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True),
    )
    atk.set_model_training_mode(model_training=True, batchnorm_training=True, dropout_training=True)

    def step() -> None:
        x_adv = atk(x, y)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def training_costs(setup: Setup, cfg: PerfConfig) -> dict[str, Any]:
    """Every defense's step against the clean step (all sides interleaved, medians of
    ``cfg.repeats``), then bench's PGD-AT step against the torchattacks loop and against itself
    under bf16, a comparison of its own (three sides, three times the repeats: a ratio near 1 needs
    the tighter median)."""
    x, y = setup.train_x[: cfg.batch_size], setup.train_y[: cfg.batch_size]
    sides, defenses = {}, {}
    for name in DEFENSES.names():
        sides[name], defenses[name] = _defense_side(setup, name, x, y)
    pair: dict[str, Callable[[], Any]] = {
        "pgd-at": sides["pgd-at"],
        "torchattacks-pgd-at": _torchattacks_side(setup, x, y),
    }
    pair["pgd-at-bf16"], bf16_defense = _bf16_side(setup, x, y)
    try:
        median, _ = interleave(sides, cfg.repeats, setup.device)
        vs, _ = interleave(pair, 3 * cfg.repeats, setup.device)
    finally:
        for d in (*defenses.values(), bf16_defense):
            d.detach()
    clean = median["standard"]
    out = {
        name: {
            "step_ms": 1000 * median[name],
            "over_clean": median[name] / clean,
            "limit": passes(d),
            "adversarial": d.adversarial,
            "images_per_s": cfg.batch_size / median[name],
        }
        for name, d in defenses.items()
    }
    ours, ta, bf16 = vs["pgd-at"], vs["torchattacks-pgd-at"], vs["pgd-at-bf16"]
    return {
        "batch": cfg.batch_size,
        "repeats": cfg.repeats,
        "clean_step_ms": 1000 * clean,
        "defenses": out,
        "torchattacks": {
            "bench_ms": 1000 * ours,
            "torchattacks_ms": 1000 * ta,
            "repeats": 3 * cfg.repeats,
            "torchattacks_over_bench": ta / ours,
        },
        "bf16": {"pgd_at_bf16_ms": 1000 * bf16, "fp32_over_bf16": ours / bf16},
    }


def time_epoch(
    setup: Setup, name: str, images: int, batch: int, options: dict[str, bool]
) -> dict[str, Any]:
    """One training epoch of defense ``name`` over ``images`` images (the set-up's training
    images, cycled), as bench's loop takes it: ``options`` bf16 (autocast) and channels_last.
    The device is waited for once, at the end (the loop never syncs inside an epoch)."""
    defense, model = build_defense(name), fresh_model(setup)
    if options.get("channels_last"):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt, n, steps = _sgd(model), len(setup.train_x), math.ceil(images / batch)
    defense.attach(model)
    try:
        _sync(setup.device)
        started = time.perf_counter()
        for k in range(steps):  # batch k: images k*batch.. of the cycled training set
            idx = torch.arange(k * batch, min((k + 1) * batch, images), device=setup.device) % n
            optimizer_step(
                defense,
                model,
                opt,
                setup.train_x[idx],
                setup.train_y[idx],
                "bf16" if options.get("bf16") else None,
                bool(options.get("channels_last")),
            )
        _sync(setup.device)
        seconds = time.perf_counter() - started
    finally:
        defense.detach()
    return {
        "defense": name,
        "images": images,
        "batch": batch,
        **options,
        "seconds": seconds,
        "images_per_s": images / seconds,
    }


def epoch_timings(setup: Setup, cfg: PerfConfig) -> list[dict[str, Any]]:
    """Whole epochs of each of ``cfg.epoch_defenses`` in float32 and in bf16 with channels-last
    (one warm-up epoch of 2 batches first, untimed)."""
    out = []
    for name in cfg.epoch_defenses:
        for options in (
            {"bf16": False, "channels_last": False},
            {"bf16": True, "channels_last": True},
        ):
            time_epoch(setup, name, 2 * cfg.epoch_batch, cfg.epoch_batch, options)  # warm-up
            out.append(time_epoch(setup, name, cfg.epoch_images, cfg.epoch_batch, options))
    return out


# --------------------------------------------------------------- grid against single


def attacks_for(cfg: PerfConfig) -> dict[str, Attack]:
    """PGD-10 and AutoAttack (standard, or the custom components asked for)."""
    aa = (
        {"version": "standard"}
        if cfg.aa_attacks is None
        else {"version": "custom", "attacks": cfg.aa_attacks}
    )
    return {"pgd": make_attack("pgd"), "autoattack": make_attack("autoattack", aa)}


def _estimate(flags: torch.Tensor) -> dict[str, Any]:
    return Estimate(int(flags.sum()), len(flags)).as_dict()


def _walk_entry(
    r: GridResult, seconds: float, single: GridResult, single_s: float
) -> dict[str, Any]:
    """One walk's figures beside the single run's."""
    return {
        "seconds": seconds,
        "over_single": seconds / single_s,
        "top": _estimate(r.flags[-1]),
        "top_equals_single": bool(torch.equal(r.flags[-1], single.flags[0])),
        "attacked_per_eps": r.attacked,
        "point_attacks": sum(r.attacked),
        "robust_by_eps": [int(f.sum()) for f in r.flags],
    }


def grid_against_single(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    walks: Sequence[str],
    repeats: int,
    device: torch.device,
    warmup: int = 0,
) -> dict[str, Any]:
    """Each walk of :data:`GRID` against one run at its largest eps, interleaved (``warmup``
    untimed rounds first)."""
    clean = predict(model, x) == y
    run = dict(batch_size=EVAL_BATCH, seed=0, clean=clean)
    sides: dict[str, Callable[[], Any]] = {
        "single": lambda: grid_walk(model, attack, x, y, [GRID[-1]], **run)
    }
    for w in walks:
        sides[w] = lambda w=w: grid_walk(model, attack, x, y, GRID, walk=w, **run)  # type: ignore[misc]
    grid_walk(model, attack, x[:2], y[:2], [GRID[-1]], batch_size=2, seed=0)  # imports, first calls
    median, last = interleave(sides, repeats, device, warmup=warmup)
    single, s = last["single"], median["single"]
    return {
        "points": len(y),
        "clean": int(clean.sum()),
        "single_seconds": s,
        "single_top": _estimate(single.flags[0]),
        "points_per_s": int(clean.sum()) / s,
        "walks": {w: _walk_entry(last[w], median[w], single, s) for w in walks},
        "_results": last,
    }


def inferred_against_direct(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, walked: GridResult
) -> dict[str, Any]:
    """At each eps of :data:`SMALLER`: the walk's number (robust flags partly inferred from
    larger eps) against a direct single run there, with intervals and per-point differences."""
    out = {}
    for eps in SMALLER:
        j = min(range(len(GRID)), key=lambda i: abs(GRID[i] - eps))
        direct = grid_walk(model, attack, x, y, [GRID[j]], batch_size=EVAL_BATCH, seed=0).flags[0]
        w = walked.flags[j]
        lo, hi = Estimate(int(direct.sum()), len(direct)).interval
        out[f"{j}/255"] = {
            "walk": _estimate(w),
            "direct": _estimate(direct),
            "difference_points": int(w.sum()) - int(direct.sum()),
            "robust_in_walk_broken_direct": int((w & ~direct).sum()),
            "broken_in_walk_robust_direct": int((~w & direct).sum()),
            "walk_inside_direct_ci95": lo <= int(w.sum()) / len(w) <= hi,
        }
    return out


def _model_grids(
    model: nn.Module, setup: Setup, cfg: PerfConfig, inference: bool
) -> dict[str, Any]:
    """PGD with every walk, AutoAttack with ``cfg.walks``; with ``inference`` the check of
    inferred numbers at smaller eps for the default walk."""
    x, y = setup.test_x[: cfg.n], setup.test_y[: cfg.n]
    out = {}
    for key, attack in attacks_for(cfg).items():
        walks = WALKS if key == "pgd" else tuple(dict.fromkeys((DEFAULT_WALK, *cfg.walks)))
        # PGD's walks take a fraction of a second: five times the repeats and a warm-up round,
        # or the first call's costs decide the ratio (--quick: once, it decides nothing)
        cheap = key == "pgd" and not cfg.quick
        entry = grid_against_single(
            model,
            attack,
            x,
            y,
            walks,
            cfg.grid_repeats * (5 if cheap else 1),
            setup.device,
            warmup=1 if cheap else 0,
        )
        results = entry.pop("_results")
        if inference:
            entry["inferred_against_direct"] = inferred_against_direct(
                model, attack, x, y, results[DEFAULT_WALK]
            )
        entry["attack"] = attack.display
        out[key] = entry
    return out


# ------------------------------------------------------------------------- memory


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # the file says kB
    return None


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """The resident high-water mark in MiB: VmHWM (reset by :func:`_reset_peak`), else
    ru_maxrss (which on Linux also counts the parent's memory from before the exec)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rebuild(spec: dict[str, Any], role: str) -> nn.Module:
    """The model of ``role`` from the spec: architecture, options and weights."""
    model = build_model(
        spec[f"{role}_model"], dataset_info(spec["dataset"]), spec.get(f"{role}_options") or {}
    )
    model.load_state_dict(spec[role])
    return model.eval()


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: evaluate ``spec['n']`` points (FGSM and PGD-2 over 0, 4/255, 8/255,
    the costly diagnostics with transfer, a store) and report peak memory before and after."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    x, y, _ = points(spec["dataset"], "test", spec["n"], spec["data_dir"])
    robust, transfer = _rebuild(spec, "robust"), _rebuild(spec, "standard")
    attacks = [make_attack("fgsm"), make_attack("pgd", {"steps": "2"})]
    settings = Settings(
        attacks,
        [0.0, 4 / 255, 8 / 255],
        EVAL_BATCH,
        0,
        progress=False,
        diagnose=True,
        transfer_from=transfer,
    )
    before = _status_mb("VmRSS") or _peak_rss_mb()
    reset = _reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tracemalloc.start()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "memory.sqlite") as store:
        evaluate_target(
            Target(from_module(robust, spec["dataset"], "memory"), x, y, len(y)),
            settings,
            device,
            store,
        )
    python_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "n": len(y),
        "seconds": time.perf_counter() - started,
        "rss_before_mb": before,
        "peak_rss_mb": _peak_rss_mb(),
        "peak_reset": reset,
        "python_peak_mb": python_peak,
        "cuda_peak_mb": cuda,
        "what": (
            "fgsm + pgd[steps=2] over 0, 4/255, 8/255; "
            "cheap and costly diagnostics (transfer on); store"
        ),
    }


def memory_main(spec_path: str) -> None:
    """The fresh process's entry point: the spec (a weights-only torch file) in, the result
    as JSON beside it."""
    spec = torch.load(spec_path, weights_only=True)
    Path(spec_path).with_suffix(".json").write_text(json.dumps(memory_child(spec)))


def measure_memory(setup: Setup, cfg: PerfConfig, models: dict[str, Built]) -> dict[str, Any]:
    """:func:`memory_child` in a fresh Python process (no memory of this one's in its peak);
    ``models``: role (robust, standard) -> the model and how it was built."""
    spec: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "device": str(setup.device),
        "dataset": setup.info.name,
        "n": cfg.memory_n,
        "data_dir": cfg.data_dir,
    }
    for role, (model, name, options) in models.items():
        spec[role] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        spec[f"{role}_model"], spec[f"{role}_options"] = name, options
    root = str(Path(__file__).resolve().parent.parent)  # where bench and models are importable
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.pt"
        torch.save(spec, spec_path)
        code = "import sys; from bench.perf import memory_main; memory_main(sys.argv[1])"
        done = subprocess.run(
            [sys.executable, "-c", code, str(spec_path)], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"the memory measurement failed: {done.stderr.strip().splitlines()[-1:]}"
            )
        out: dict[str, Any] = json.loads(spec_path.with_suffix(".json").read_text())
    out["added_mb"] = out["peak_rss_mb"] - out["rss_before_mb"]
    return out


# --------------------------------------------------------------------------- the run


def _models(setup: Setup, cfg: PerfConfig) -> tuple[dict[str, Built], dict[str, Any]]:
    """The robust (PGD-AT) and standard models with their architectures: the checkpoints given,
    else trained here; and what they are, in words."""
    info: dict[str, Any] = {}
    models = {}
    for role, path, defense in (
        ("robust", cfg.robust, "pgd-at"),
        ("standard", cfg.standard, "standard"),
    ):
        started = time.perf_counter()
        if path:
            models[role] = load_model(path, setup)
            info[role] = {"checkpoint": str(path)}
        else:
            models[role] = (
                train_quick(setup, defense, cfg.epochs, cfg.batch_size, cfg.seed),
                setup.model_name,
                setup.model_options,
            )
            info[role] = {
                "trained_here": f"{defense}, {cfg.epochs} epochs on {len(setup.train_x)} images, "
                f"batch {cfg.batch_size}, lr {LR}",
                "seconds": time.perf_counter() - started,
            }
    return models, info


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": load,
        "versions": library_versions(),
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's CPU targets, each with its measured value and whether it holds: the PGD-AT
    step at most 10 clean steps, bench at least as fast as the torchattacks loop, the standard
    AutoAttack grid (default walk) at most 3 single runs on the robust model, and its inferred
    numbers at the two smaller eps inside the direct runs' 95% intervals."""
    t, aa = result["training"], result["grid"]["robust"]["autoattack"]
    checks: dict[str, tuple[float, bool]] = {}
    v = t["defenses"]["pgd-at"]["over_clean"]
    checks["pgd_at_step_over_clean_at_most_10"] = (v, v <= 10)
    v = t["torchattacks"]["torchattacks_over_bench"]
    checks["torchattacks_over_bench_at_least_1"] = (v, v >= 1)
    v = aa["walks"][DEFAULT_WALK]["over_single"]
    checks["autoattack_grid_over_single_at_most_3_robust"] = (v, v <= 3)
    for eps, c in aa.get("inferred_against_direct", {}).items():
        checks[f"autoattack_walk_inside_direct_ci95_at_{eps}"] = (
            float(c["difference_points"]),
            c["walk_inside_direct_ci95"],
        )
    return {k: {"value": v, "holds": bool(ok)} for k, (v, ok) in checks.items()}


def run_perf(cfg: PerfConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every measurement of the module docstring, with ``cfg.threads`` intra-op threads (torch's
    setting restored afterwards); returns the JSON document."""
    cfg = quick_config(cfg) if cfg.quick else cfg
    check_config(cfg)
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _measure(cfg, log)
    finally:
        torch.set_num_threads(before)


def _measure(cfg: PerfConfig, log: Callable[[str], None]) -> dict[str, Any]:
    setup = make_setup(cfg, max(cfg.n, cfg.memory_n))
    out: dict[str, Any] = {
        "config": asdict(cfg),
        "machine_before": _machine(),
        "device": device_label(setup.device),
        "model": arch_label(setup.model_name, setup.model_options),
        "dataset": setup.info.name,
        "data": setup.data,
        "grid": {},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    log("robust and standard models ...")
    models, out["models"] = _models(setup, cfg)
    log("training steps (every defense, and torchattacks' PGD-AT loop) ...")
    out["training"] = training_costs(setup, cfg)
    if cfg.epoch_images:
        log(f"whole epochs of {cfg.epoch_images} images ...")
        out["epochs"] = epoch_timings(setup, cfg)
    for role, (model, _, _) in models.items():
        log(f"grid against single run, {role} model ...")
        out["grid"][role] = _model_grids(model, setup, cfg, inference=role == "robust")
    if cfg.memory_n:
        log(f"memory of an evaluation of {cfg.memory_n} points (fresh process) ...")
        out["memory"] = measure_memory(setup, cfg, models)
    out["targets"] = targets(out)
    out["machine_after"] = _machine()
    return out


# --------------------------------------------------------------------------- output


def _pct(e: dict[str, Any]) -> str:
    lo, hi = e["ci95"]
    return f"{e['acc']:.1f}% ({lo:.1f}-{hi:.1f})"


def _training_lines(t: dict[str, Any]) -> list[str]:
    lines = [
        f"training step, batch {t['batch']} (median of {t['repeats']}); "
        f"clean step {t['clean_step_ms']:.1f} ms",
        f"  {'defense':<10}{'step ms':>10}{'x clean':>9}{'limit':>7}{'images/s':>10}",
    ]
    for name, d in t["defenses"].items():
        lines.append(
            f"  {name:<10}{d['step_ms']:>10.1f}{d['over_clean']:>9.2f}{d['limit']:>7}"
            f"{d['images_per_s']:>10.0f}"
        )
    ta = t["torchattacks"]
    lines.append(
        f"  torchattacks PGD-AT loop {ta['torchattacks_ms']:.1f} ms "
        f"against bench {ta['bench_ms']:.1f} ms: "
        f"torchattacks/bench = {ta['torchattacks_over_bench']:.2f}"
    )
    if "bf16" in t:
        lines.append(
            f"  PGD-AT under bf16 autocast (--amp bf16) {t['bf16']['pgd_at_bf16_ms']:.1f} ms: "
            f"fp32/bf16 = {t['bf16']['fp32_over_bf16']:.2f}"
        )
    return lines


def _grid_lines(role: str, key: str, g: dict[str, Any]) -> list[str]:
    lines = [
        f"  {role} model, {g['attack']}: {g['points']} points ({g['clean']} clean-correct); "
        f"single run at 8/255 {g['single_seconds']:.2f} s, {g['points_per_s']:.1f} points/s, "
        f"robust {_pct(g['single_top'])}"
    ]
    for w, e in g["walks"].items():
        same = "= single run" if e["top_equals_single"] else "differs from the single run"
        lines.append(
            f"    walk {w:<7}{e['seconds']:>8.2f} s = {e['over_single']:5.2f} single runs; "
            "at 8/255 "
            f"{_pct(e['top'])} ({same}); {e['point_attacks']} point-attacks"
        )
    for eps, c in g.get("inferred_against_direct", {}).items():
        lines.append(
            f"    at {eps}: walk {_pct(c['walk'])} vs direct {_pct(c['direct'])}: "
            f"{c['difference_points']:+d} points "
            f"({c['robust_in_walk_broken_direct']} robust in the walk but "
            f"broken directly); inside the direct 95% interval: {c['walk_inside_direct_ci95']}"
        )
    return lines


def format_report(r: dict[str, Any]) -> str:
    """The terminal table of a :func:`run_perf` result."""
    m = r["machine_before"]
    lines = [
        f"bench perf: {r['model']} on {r['data']}, {r['device']}, {m['cpus']} CPUs, "
        "load average before "
        f"{m['load_average_1_5_15']}, after {r['machine_after']['load_average_1_5_15']}"
    ]
    lines += _training_lines(r["training"])
    lines.append(f"grid 0..8/255 (9 eps) against one run at 8/255 (default walk {DEFAULT_WALK}):")
    for role, by in r["grid"].items():
        for key, g in by.items():
            lines += _grid_lines(role, key, g)
    for e in r.get("epochs", []):
        lines.append(
            f"epoch of {e['defense']}, {e['images']} images, batch {e['batch']}, "
            f"bf16 {e['bf16']}, channels-last "
            f"{e['channels_last']}: {e['seconds']:.1f} s ({e['images_per_s']:.0f} images/s)"
        )
    mem = r.get("memory")
    if mem:
        cuda = (
            f", CUDA peak {mem['cuda_peak_mb']:.0f} MiB" if mem["cuda_peak_mb"] is not None else ""
        )
        lines.append(
            f"memory, evaluation of {mem['n']} points ({mem['what']}): "
            f"peak RSS {mem['peak_rss_mb']:.0f} MiB "
            f"(process before it {mem['rss_before_mb']:.0f} MiB, "
            f"added {mem['added_mb']:.0f} MiB), Python "
            f"objects peak {mem['python_peak_mb']:.1f} MiB{cuda}; {mem['seconds']:.1f} s"
        )
    return "\n".join(lines + _target_lines(r))


def _target_lines(r: dict[str, Any]) -> list[str]:
    """Each target with its verdict; under --quick (one repeat of a narrowed model) the values
    only show that every figure is computed, so no verdict is given."""
    if r["config"].get("quick"):
        return [
            f"target {k}: {v['value']:.2f} (--quick: a smoke test, no verdict)"
            for k, v in r["targets"].items()
        ]
    return [
        f"target {k}: {v['value']:.2f} -> {'holds' if v['holds'] else 'MISSED'}"
        for k, v in r["targets"].items()
    ]


def write_json(path: Path, result: dict[str, Any]) -> None:
    """The result as indented JSON, written atomically."""
    atomic_write_json(path, json.loads(json.dumps(result, default=_plain)))


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


__all__ = ["GRID", "PerfConfig", "format_report", "run_perf", "write_json"]
