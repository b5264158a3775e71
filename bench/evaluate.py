"""Evaluation of checkpoints: each attack walks an L-infinity eps grid, results go to the store.

The grid walk for one attack on n test points: eps ascending; a point starts robust if the
model classifies it correctly (eps 0 needs no attack); at each eps > 0 only the points still
robust are attacked, every output is checked against the eps-ball and [0, 1]
(:func:`check_budget`; a violation is an error, never a result), and a point the attack breaks
stays broken at every larger eps (the balls are nested). So the curve is monotone and the cost
falls as points break.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
from torch import nn
from tqdm import tqdm

from bench.attacks import Attack
from bench.checkpoint import Checkpoint, read_checkpoint
from bench.errors import BudgetViolation, UsageError
from bench.io import device_label, library_versions
from bench.params import eps_in_255, format_eps
from bench.store import ANY, ResultRow, RunRow, Store

PREDICT_BATCH = 1000  # points per forward pass for clean predictions


def check_budget(
    x: torch.Tensor, x_adv: torch.Tensor, eps: float, tol: float = 1e-6, attack: str = "attack"
) -> None:
    """Raise BudgetViolation unless ``x_adv`` has x's shape, no NaN, lies in [0, 1] and within
    ``eps`` of ``x`` in L-infinity (each up to ``tol``, for float rounding)."""
    if tuple(x_adv.shape) != tuple(x.shape):
        raise BudgetViolation(
            f"attack {attack} at eps {format_eps(eps)}: returned shape {tuple(x_adv.shape)}, "
            f"expected {tuple(x.shape)}"
        )
    if x_adv.numel() == 0:
        return
    xa = x_adv.detach().to(device=x.device, dtype=torch.float64)
    if not bool(torch.isfinite(xa).all()):
        raise BudgetViolation(f"attack {attack} at eps {format_eps(eps)}: returned NaN or inf")
    delta = float((xa - x.detach().to(torch.float64)).abs().max())
    lo, hi = float(xa.min()), float(xa.max())
    if delta > eps + tol or lo < -tol or hi > 1.0 + tol:
        raise BudgetViolation(
            f"attack {attack} left the budget at eps {format_eps(eps)} (= {eps:.6g}): "
            f"max|x_adv - x| = {delta:.6g}, x_adv in [{lo:.6g}, {hi:.6g}] (allowed [0, 1])"
        )


@dataclass
class GridResult:
    """One attack's walk over the eps grid: per-eps robust flags (bool [n], CPU) and seconds."""

    attack: Attack
    eps: list[float]
    flags: list[torch.Tensor]
    seconds: list[float]

    def robust_acc(self) -> list[float]:
        """Robust accuracy (fraction) at each eps."""
        return [_fraction(f) for f in self.flags]


def _fraction(flags: torch.Tensor) -> float:
    """The share of True flags, exact in float64 (the store's "any" rows use count / n too)."""
    return int(flags.sum()) / len(flags) if len(flags) else 0.0


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Predicted labels (CPU) of images ``x``, in eval mode and without gradients."""
    model.eval()
    device = _device_of(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def grid_walk(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_grid: Sequence[float],
    *,
    batch_size: int,
    seed: int,
    clean: torch.Tensor | None = None,
    bar: Any = None,
) -> GridResult:
    """Walk ``eps_grid`` (sorted here) with ``attack`` on images ``x`` in [0, 1] (any device;
    batches go to the model's device). ``clean``: the clean-correct flags if already known.
    ``bar``: a tqdm bar ticked once per eps > 0."""
    model.eval()
    device = _device_of(model)
    y_cpu = y.detach().cpu()
    if clean is None:
        clean = predict(model, x) == y_cpu
    robust = clean.detach().cpu().clone().bool()
    eps_sorted = sorted(float(e) for e in eps_grid)
    flags: list[torch.Tensor] = []
    seconds: list[float] = []
    for eps in eps_sorted:
        started = time.perf_counter()
        if eps > 0:
            idx = robust.nonzero().flatten()  # only the points still robust: nested balls
            n_batches = math.ceil(len(idx) / batch_size)
            for b in range(n_batches):
                if bar is not None:
                    bar.set_postfix_str(
                        f"{attack.display} eps={format_eps(eps)} batch {b + 1}/{n_batches} "
                        f"robust {int(robust.sum())}/{len(robust)}",
                        refresh=True,
                    )
                bi = idx[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[bi].to(device), y_cpu[bi].to(device)
                x_adv = attack.run(model, xb, yb, eps, seed)
                check_budget(xb, x_adv, eps, attack=attack.display)
                model.eval()  # whatever the attack did to the mode
                with torch.no_grad():
                    still = (model(x_adv.to(device)).argmax(dim=1) == yb).cpu()
                robust[bi] &= still
            if bar is not None:
                bar.update(1)
        flags.append(robust.clone())
        seconds.append(time.perf_counter() - started if eps > 0 else 0.0)
    return GridResult(attack, eps_sorted, flags, seconds)


# ------------------------------------------------------------------------- checkpoints


@dataclass
class Target:
    """A validated checkpoint with its first n test points (float images in [0, 1], CPU)."""

    checkpoint: Checkpoint
    model: nn.Module  # on the CPU
    x: torch.Tensor
    y: torch.Tensor
    test_size: int


def prepare_target(
    ckpt_path: str | Path,
    n: int,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    download: bool = True,
) -> Target:
    """Read and check a checkpoint and its data: readable, of ``dataset`` if given, with at
    least ``n`` test points. Everything is a UsageError; nothing is written."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"--n must be a whole number >= 1, got {n!r}")
    ckpt = read_checkpoint(ckpt_path)
    if dataset is not None and dataset != ckpt.dataset:
        raise UsageError(
            f"checkpoint {ckpt.run_id} was trained on {ckpt.dataset}, not on --dataset {dataset}"
        )
    model = ckpt.load_model("cpu")
    from bench.data import load_dataset  # here: bench.data is only needed to evaluate

    test = load_dataset(ckpt.dataset, "test", data_dir, download=download)
    if n > len(test):
        raise UsageError(
            f"--n {n} is larger than the {ckpt.dataset} test split ({len(test)} points)"
        )
    return Target(ckpt, model, test.images(slice(0, n)).contiguous(), test.y[:n].clone(), len(test))


SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer


def _check_settings(attacks: Sequence[Attack], eps_grid: Sequence[float], batch_size: int, seed: int) -> None:
    if not attacks:
        raise UsageError("no attack given")
    seen: set[tuple[str, str]] = set()
    for a in attacks:
        key = (a.label, repr(sorted(a.params.items())))
        if key in seen:
            raise UsageError(f"attack {a.display} is listed twice")
        seen.add(key)
    if not eps_grid:
        raise UsageError("the eps grid is empty")
    for e in eps_grid:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and 0.0 <= e <= 1.0):
            raise UsageError(f"eps {e!r} is outside [0, 1] (pixel scale; write e.g. 8/255)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed must be a whole number in 0..2**63-1, got {seed!r}")


def run_row(ckpt: Checkpoint) -> RunRow:
    """The store's record of a checkpoint, from its config.json and run.json."""
    cfg = ckpt.config
    return RunRow(
        run_id=ckpt.run_id,
        path=str(ckpt.path),
        dataset=ckpt.dataset,
        model=ckpt.model_name,
        defense=ckpt.defense,
        defense_params=dict(cfg.get("defense_params") or {}),
        epochs=cfg.get("epochs"),
        train_limit=cfg.get("train_limit"),
        train_seconds=ckpt.run.get("train_seconds"),
        config=cfg,
    )


def _flag_text(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def evaluate_checkpoint(
    ckpt_path: str | Path,
    attacks: Sequence[Attack],
    eps_grid: Sequence[float],
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    data_dir: str | Path | None,
    store: Store | str | Path,
    dataset: str | None = None,
    progress: bool = True,
    *,
    download: bool = True,
    out: TextIO | None = None,
) -> list[ResultRow]:
    """Evaluate one checkpoint with every attack over ``eps_grid`` on its first ``n`` test points.

    Writes one row per (attack, eps) and recomputes the worst case over every attack stored for
    this checkpoint and n ("any"); returns the attack rows followed by the "any" rows. All input
    is validated first: bad input raises UsageError with the store untouched (a store given as a
    path is not even opened). A BudgetViolation also leaves this checkpoint's rows unwritten.
    Prints a table on ``out`` (stdout) and a progress bar on stderr.
    """
    _check_settings(attacks, eps_grid, batch_size, seed)
    target = prepare_target(ckpt_path, n, data_dir, dataset, download)
    device = torch.device(device)
    ckpt = target.checkpoint
    model = target.model.to(device).eval()
    eps_sorted = sorted(float(e) for e in eps_grid)

    clean = predict(model, target.x) == target.y
    clean_acc = _fraction(clean)
    attacked = sum(1 for e in eps_sorted if e > 0)
    bar = tqdm(
        total=len(attacks) * attacked, desc=f"eval {ckpt.run_id}", unit="eps", file=sys.stderr,
        disable=not progress, dynamic_ncols=True, leave=False,
    )
    try:
        results = [
            grid_walk(model, a, target.x, target.y, eps_sorted, batch_size=batch_size, seed=seed,
                      clean=clean, bar=bar)
            for a in attacks
        ]
    finally:
        bar.close()

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    label, versions = device_label(device), library_versions()
    rows = [
        ResultRow(
            run_id=ckpt.run_id, attack=r.attack.label, params=r.attack.params, eps=eps, n=n,
            clean_acc=clean_acc, robust_acc=_fraction(f), seconds=s, device=label,
            versions=versions, flags=_flag_text(f), seed=seed, created=now,
        )
        for r in results
        for eps, f, s in zip(r.eps, r.flags, r.seconds)
    ]

    own = not isinstance(store, Store)
    db = Store(store) if own else store  # type: ignore[arg-type]
    try:
        db.upsert_run(run_row(ckpt), now)
        db.replace_results(rows)
        any_rows = db.recompute_any(ckpt.run_id, n, now)
    finally:
        if own:
            db.close()

    print(format_table(ckpt, results, any_rows, n, seed, label, clean_acc), file=out or sys.stdout)
    return rows + any_rows


# ------------------------------------------------------------------------------- table


def format_table(
    ckpt: Checkpoint,
    results: Sequence[GridResult],
    any_rows: Sequence[ResultRow],
    n: int,
    seed: int,
    device: str,
    clean_acc: float,
) -> str:
    """Robust accuracy (%) per attack (rows) and eps in units of 1/255 (columns)."""
    eps = results[0].eps if results else []
    any_by_eps = {round(r.eps * 1e9): r.robust_acc for r in any_rows}
    names = [r.attack.display for r in results] + [ANY]
    width = max(len(s) for s in names + ["attack"])
    head = f"{'attack':<{width}}" + "".join(f"{eps_in_255(e, digits=3):>7}" for e in eps) + f"{'seconds':>10}"
    lines = [
        f"{ckpt.run_id} ({ckpt.dataset}, {ckpt.model_name}, {ckpt.defense}): n={n}, seed={seed}, "
        f"{device}",
        f"clean accuracy {100 * clean_acc:.2f}%; robust accuracy (%) by Linf eps (x/255)",
        head,
        "-" * len(head),
    ]
    for r in results:
        cells = "".join(f"{100 * a:7.2f}" for a in r.robust_acc())
        lines.append(f"{r.attack.display:<{width}}{cells}{sum(r.seconds):10.1f}")
    cells = "".join(
        f"{100 * any_by_eps[round(e * 1e9)]:7.2f}" if round(e * 1e9) in any_by_eps else f"{'-':>7}"
        for e in eps
    )
    lines.append(f"{ANY:<{width}}{cells}")
    covered = sorted({a for r in any_rows for a in r.params.get("attacks", [])})
    lines.append(
        f"any = per point, robust only if every attack stored for this checkpoint at n={n} left it "
        f"robust ({len(covered)} attack configuration{'s' if len(covered) != 1 else ''})"
    )
    return "\n".join(lines)
