"""Evaluation: each attack walks an L-infinity eps grid over fixed, seeded batches of points.

The grid walk for one attack on the first n test points. A point misclassified when clean is
broken at every eps (eps 0 needs no attack). The L-infinity balls are nested, so an adversarial
example found at eps e is proof that the point is broken at every larger eps: every walk carries
"broken" upwards as a fact. Each walk attacks each eps of the grid at most once, in a fixed order,
and only the points whose outcome there is not yet known; each point's flags are monotone
(robust up to its breaking eps, broken from there).

* ``up`` (the walk of layout-2 stores): eps ascending; at each eps the points still robust are
  attacked. Every robust flag is a measurement at that eps; the flag at an eps is the attack's
  raw outcome there AND the carry from smaller eps, so the number at the largest eps can be
  lower than a single run there (a point broken at 2/255 may survive a run at 8/255). Cost: a
  robust point is attacked at every eps (about as many single runs as the grid has eps > 0 on
  a robust model).
* ``down``: the largest eps first, on every clean-correct point (exactly a single run there);
  a point robust there is counted robust at every smaller eps (an INFERENCE, not a
  measurement); a broken point is attacked at the next smaller eps, and so on until it
  survives one. Each point is measured robust at most once: cheap when most points are robust,
  costly when most break early.
* ``bisect`` (default): the largest eps first, as ``down``; then each broken point's breaking
  eps is found by bisection over the smaller eps, on a fixed binary-search tree of grid indices
  (at most 1 + ceil(log2(#eps > 0)) attacks per point: 4 on a 9-point grid). Robust flags below
  a measured robust eps are inferences; broken flags are proofs.

For ``down`` and ``bisect`` the number at the largest eps is a single run of the attack there,
bit for bit; at smaller eps it counts as robust the points measured robust at a larger eps
(``bench perf`` reports how far that is from a direct run at two smaller eps). Whatever the
walk, every eps is tested in exactly one step, so:

* Batches are fixed by point index: batch k holds points k*B .. (k+1)*B-1 of the evaluated set
  (B = ``--batch-size``, recorded). Within batch k only the points the walk tests at that eps are
  attacked, with torch seeded from (seed, eps, k) (:func:`batch_seed`); bench's own PGD seeds each
  point's random start from (seed, eps, point index). So a batch's outcome depends only on the
  weights, its points, the grid, the walk, B and the seed: a sharded or resumed run gives the
  same flags.
* Every output is checked against the eps-ball and [0, 1] (:func:`check_budget`); a violation is
  an error, never a result.
* Each finished batch is kept in the store and each finished (attack, eps) step becomes a result
  row at once, so a killed evaluation rerun with the same arguments continues where it stopped.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch
from torch import nn
from tqdm import tqdm

from bench import audit
from bench.diagnostics import model_device
from bench.attacks import Attack, collect_warnings, derive_seed
from bench.errors import BudgetViolation, UsageError
from bench.io import device_label, library_versions
from bench.params import MAX_GRID_POINTS, eps_in_255, format_eps
from bench.results import Estimate, WorstPoint, estimate, worst_case
from bench.store import ANY, WALKS, DiagnosticRow, ResultRow, RunRow, Store, canonical, eps_key

PREDICT_BATCH = 1000  # points per forward pass for clean predictions
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
DEFAULT_WALK = "bisect"  # see the module docstring; up is the walk of layout-2 stores
MAX_BATCH = 1_000_000  # points per attacked batch: far above any memory, below overflow
MAX_N = 100_000_000  # evaluated points


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


def batch_seed(seed: int, eps: float, batch: int) -> int:
    """The torch seed of batch ``batch`` at ``eps``: depends on nothing else."""
    return derive_seed(seed, eps_key(eps), batch)


def flag_text(flags: torch.Tensor) -> str:
    """Bool flags as '0'/'1' text."""
    return "".join("1" if f else "0" for f in flags.tolist())


def text_flags(text: str) -> torch.Tensor:
    """'0'/'1' text as bool flags."""
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


@dataclass
class GridResult:
    """One attack's walk over the eps grid: per-eps robust flags (bool [n], CPU) and seconds."""

    attack: Attack
    eps: list[float]
    flags: list[torch.Tensor]
    seconds: list[float]
    reused: int = 0  # steps taken from the store instead of being run (resumed)
    walk: str = DEFAULT_WALK  # how the grid was walked: up, down or bisect
    attacked: list[int] = field(default_factory=list)  # points attacked at each eps (0: none)

    def robust_acc(self) -> list[float]:
        """Robust accuracy (fraction) at each eps."""
        return [int(f.sum()) / len(f) if len(f) else 0.0 for f in self.flags]


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Predicted labels (CPU) of images ``x``, in eval mode and without gradients."""
    model.eval()
    device = model_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class Recorder:
    """Where a grid walk keeps its progress: nowhere (plain walk) or a store (resumable).

    ``done(eps)`` gives the flags of a finished step or None; ``batches(eps)`` the finished batches
    of a step in progress; ``batch(...)`` and ``finish(...)`` record them."""

    def done(self, eps: float) -> torch.Tensor | None:
        return None

    def batches(self, eps: float) -> dict[int, torch.Tensor]:
        return {}

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        pass

    def finish(self, eps: float, flags: torch.Tensor, seconds: float) -> None:
        pass


def _attack_batch(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
    eps: float, seed: int, offset: int = 0,
) -> torch.Tensor:
    """Still-robust flags (CPU) of the points ``idx`` after ``attack`` at ``eps``; ``offset``: the
    whole set's index of x[0] (a shard), so that per-point seeds match an unsharded run."""
    device = model_device(model)
    xb, yb = x[idx].to(device), y[idx].to(device)
    x_adv = attack.run(model, xb, yb, eps, seed, index=idx + offset)
    check_budget(xb, x_adv, eps, attack=attack.display)
    model.eval()  # whatever the attack did to the mode
    with torch.no_grad():
        return (model(x_adv.to(device)).argmax(dim=1) == yb).cpu()


@dataclass
class Walk:
    """The settings of one grid walk."""

    eps: list[float]
    batch_size: int
    seed: int
    bar: Any = None
    recorder: Recorder = field(default_factory=Recorder)
    on_batch: Callable[[Attack, float, int, float], None] | None = None  # (attack, eps, k, s)
    first_batch: int = 0  # a shard: x[0] is point first_batch * batch_size of the whole set
    walk: str = DEFAULT_WALK  # up | down | bisect (see the module docstring)


def check_walk(walk: str) -> None:
    """``walk`` must be one of :data:`WALKS` (UsageError)."""
    if walk not in WALKS:
        raise UsageError(f"--walk must be one of {', '.join(WALKS)}, got {walk!r}")


def first_attacked(grid: Sequence[float]) -> int:
    """The index of the first eps > 0 of the sorted ``grid`` (len(grid) when there is none)."""
    return next((j for j, e in enumerate(grid) if e > 0), len(grid))


def _tree_levels(lo: int, hi: int, depth: int, out: dict[int, int]) -> None:
    """The binary-search tree over a point's breaking index in lo..hi (broken at hi): the node
    (lo, hi) tests (lo + hi) // 2; its children are (lo, mid) and (mid + 1, hi)."""
    if lo >= hi:
        return
    mid = (lo + hi) // 2
    out[mid] = depth
    _tree_levels(lo, mid, depth + 1, out)
    _tree_levels(mid + 1, hi, depth + 1, out)


def walk_order(walk: str, grid: Sequence[float]) -> list[int]:
    """The grid indices of the attacked eps (> 0) in the order ``walk`` tests them; each once.

    up: ascending. down: descending. bisect: the largest eps first (a single run there), then
    the fixed binary-search tree over the smaller ones, level by level."""
    check_walk(walk)
    m, a0 = len(grid), first_attacked(grid)
    indices = list(range(a0, m))
    if walk == "up" or not indices:
        return indices
    if walk == "down":
        return indices[::-1]
    levels = {m - 1: 0}
    _tree_levels(a0, m - 1, 1, levels)
    return sorted(levels, key=lambda j: (levels[j], j))


def max_tests(walk: str, grid: Sequence[float]) -> int:
    """The most eps at which one point can be attacked by ``walk`` on ``grid``."""
    attacked = len(grid) - first_attacked(grid)
    if walk != "bisect" or attacked == 0:
        return attacked
    return 1 + math.ceil(math.log2(attacked))


@dataclass
class _State:
    """Each point's breaking index b over the sorted grid (robust at index j exactly when j < b),
    as far as it is known: lo <= b <= hi. A point is robust at every index below lo (measured,
    or inferred from a measurement at a larger eps) and broken at every index from hi (proved by
    an adversarial example at index hi; hi = len(grid): none found). Settled when lo == hi."""

    lo: torch.Tensor  # int64 [n]
    hi: torch.Tensor  # int64 [n]
    m: int  # grid size

    @classmethod
    def start(cls, clean: torch.Tensor, grid: Sequence[float]) -> "_State":
        """Clean-correct points: b anywhere in first_attacked..m; the others: broken at eps 0."""
        m, a0 = len(grid), first_attacked(grid)
        lo = torch.where(clean, a0, 0).long()
        return cls(lo, torch.where(clean, m, 0).long(), m)

    def flags_at(self, j: int) -> torch.Tensor:
        """Robust at grid index j (final once j is decided for every point)."""
        return self.lo > j

    def due(self, walk: str, j: int) -> torch.Tensor:
        """The points that ``walk`` attacks at grid index j now."""
        if walk == "up":
            nxt = self.lo
        elif walk == "down":
            nxt = self.hi - 1
        else:  # bisect: the largest eps first, then the middle of what is left
            nxt = torch.where(self.hi == self.m, self.m - 1, (self.lo + self.hi) // 2)
        return (self.lo < self.hi) & (nxt == j)

    def settle(self, idx: torch.Tensor, j: int, robust: torch.Tensor) -> None:
        """Points ``idx`` found robust (``robust``) or broken at index j; points already decided
        at j keep what they have."""
        lo, hi = self.lo[idx], self.hi[idx]
        open_ = (lo <= j) & (j < hi)
        self.lo[idx] = torch.where(open_ & robust, j + 1, lo)
        self.hi[idx] = torch.where(open_ & ~robust, j, hi)


def _walk_eps(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, state: _State, j: int, w: Walk,
) -> int:
    """Attack, batch by fixed batch, the points the walk tests at grid index j; updates
    ``state`` and returns how many points were attacked."""
    eps, n, B, k0 = w.eps[j], len(state.lo), w.batch_size, w.first_batch
    kept = w.recorder.batches(eps)
    due = state.due(w.walk, j)
    n_batches, attacked = math.ceil(n / B), 0
    for k in range(n_batches):
        lo, hi = k * B, min((k + 1) * B, n)
        if k + k0 in kept:  # finished before an interruption: same seed, same result
            state.settle(torch.arange(lo, hi), j, kept[k + k0])
            continue
        started = time.perf_counter()
        idx = due[lo:hi].nonzero().flatten() + lo  # only the points this eps decides
        if w.bar is not None:
            w.bar.set_postfix_str(f"{attack.display} eps={format_eps(eps)} batch {k + 1}/{n_batches} "
                                  f"attacking {len(idx)}", refresh=True)
        if len(idx):
            state.settle(idx, j, _attack_batch(model, attack, x, y, idx, eps, batch_seed(w.seed, eps, k + k0),
                                               offset=k0 * B))
        seconds = time.perf_counter() - started
        w.recorder.batch(eps, k + k0, state.flags_at(j)[lo:hi].clone(), seconds)
        if w.on_batch is not None and len(idx):
            w.on_batch(attack, eps, k + k0, seconds)
        attacked += len(idx)
    return attacked


def _run_steps(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, state: _State, w: Walk,
               result: GridResult) -> None:
    """Every attacked eps in the walk's order: taken from the recorder when finished before,
    else attacked; each finished step is recorded at once (eps 0 with the first of them)."""
    zeros = [j for j, e in enumerate(w.eps) if e == 0]
    for j in walk_order(w.walk, w.eps):
        started = time.perf_counter()
        stored = w.recorder.done(w.eps[j])
        if stored is not None:  # this step finished in an earlier, interrupted run
            state.settle(torch.arange(len(stored)), j, stored)
            result.reused += 1
        else:
            result.attacked[j] = _walk_eps(model, attack, x, y, state, j, w)
            result.seconds[j] = time.perf_counter() - started
            for z in zeros:  # the eps-0 rows, stored with the first attacked step (not before an error)
                w.recorder.finish(w.eps[z], state.flags_at(z), 0.0)
            zeros = []
            w.recorder.finish(w.eps[j], state.flags_at(j), result.seconds[j])
        if w.bar is not None:
            w.bar.update(1)
    for z in zeros:  # a grid of eps 0 alone, or every step taken from the store
        w.recorder.finish(w.eps[z], state.flags_at(z), 0.0)


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
    recorder: Recorder | None = None,
    on_batch: Callable[[Attack, float, int, float], None] | None = None,
    first_batch: int = 0,
    walk: str = DEFAULT_WALK,
) -> GridResult:
    """Walk ``eps_grid`` (sorted here) with ``attack`` on images ``x`` in [0, 1] (any device;
    batches go to the model's device). ``clean``: the clean-correct flags if already known.
    ``bar``: a tqdm bar ticked once per eps > 0; ``recorder``: where progress is kept.
    ``first_batch``: x is a shard that starts at batch ``first_batch`` of the whole set (its
    first point is point first_batch * batch_size); the shards' flags, concatenated in order,
    equal the unsharded walk's, since batch seeds and per-point seeds use whole-set indices and
    every walk decides a point from its own batch's outcomes only.
    ``walk``: up, down or bisect (the default; see the module docstring)."""
    check_walk(walk)
    model.eval()
    y_cpu = y.detach().cpu()
    if clean is None:
        clean = predict(model, x) == y_cpu
    w = Walk(sorted(float(e) for e in eps_grid), batch_size, seed, bar, recorder or Recorder(), on_batch,
             first_batch, walk)
    m = len(w.eps)
    state = _State.start(clean.detach().cpu().bool(), w.eps)
    result = GridResult(attack, w.eps, [], [0.0] * m, walk=walk, attacked=[0] * m)
    _run_steps(model, attack, x, y_cpu, state, w, result)
    result.flags = [state.flags_at(j).clone() for j in range(m)]
    return result


# ------------------------------------------------------------------------------ targets


@dataclass
class Target:
    """A model ready to evaluate: where it came from (a :class:`bench.sources.Source`) and its
    first n test points (float images in [0, 1], CPU)."""

    source: Any
    x: torch.Tensor
    y: torch.Tensor
    test_size: int

    @property
    def model(self) -> nn.Module:
        return self.source.model

    @property
    def run_id(self) -> str:
        return str(self.source.run_id)


def check_n(n: int) -> None:
    """``n`` must be a whole number >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise UsageError(f"--n must be a whole number in 1..{MAX_N}, got {n!r}")


def attach_points(source: Any, n: int, data_dir: str | Path | None = None, download: bool = True) -> Target:
    """The first ``n`` test points of the source's data set (UsageError if there are fewer)."""
    check_n(n)
    from bench.data import load_dataset  # here: bench.data is only needed to evaluate

    test = load_dataset(source.dataset, "test", data_dir, download=download)
    if n > len(test):
        raise UsageError(f"--n {n} is larger than the {source.dataset} test split ({len(test)} points)")
    return Target(source, test.images(slice(0, n)).contiguous(), test.y[:n].clone(), len(test))


def prepare_target(
    ckpt_path: str | Path,
    n: int,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    download: bool = True,
) -> Target:
    """Read and check a checkpoint and its data: readable, of ``dataset`` if given, with at
    least ``n`` test points. Everything is a UsageError; nothing is written."""
    check_n(n)
    from bench.sources import from_checkpoint

    source = from_checkpoint(ckpt_path)
    if dataset is not None and dataset != source.dataset:
        raise UsageError(
            f"checkpoint {source.run_id} was trained on {source.dataset}, not on --dataset {dataset}"
        )
    return attach_points(source, n, data_dir, download)


def check_settings(attacks: Sequence[Attack], eps_grid: Sequence[float], batch_size: int, seed: int) -> None:
    """Attacks listed once, eps in [0, 1], batch size >= 1, seed in range (UsageError)."""
    if not attacks:
        raise UsageError("no attack given")
    seen: set[tuple[str, str]] = set()
    for a in attacks:
        key = (a.label, canonical(a.params))
        if key in seen:
            raise UsageError(f"attack {a.display} is listed twice")
        seen.add(key)
    if not eps_grid:
        raise UsageError("the eps grid is empty")
    if len(eps_grid) > MAX_GRID_POINTS:  # the API takes lists that never went through the parser
        raise UsageError(f"the eps grid has {len(eps_grid)} values; at most {MAX_GRID_POINTS}")
    for e in eps_grid:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and 0.0 <= e <= 1.0):
            raise UsageError(f"eps {e!r} is outside [0, 1] (pixel scale; write e.g. 8/255)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise UsageError(f"--batch-size must be a whole number in 1..{MAX_BATCH}, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed must be a whole number in 0..2**63-1, got {seed!r}")


def run_row(source: Any) -> RunRow:
    """The store's record of a model, from its source's configuration and run record."""
    cfg, run = dict(source.config or {}), dict(source.run or {})
    return RunRow(
        run_id=source.run_id, path=str(source.path), dataset=source.dataset,
        model=str(cfg.get("model", "unknown")), defense=str(cfg.get("defense", "external")),
        defense_params=dict(cfg.get("defense_params") or {}), epochs=cfg.get("epochs"),
        train_limit=cfg.get("train_limit"), train_seconds=run.get("train_seconds"),
        config=cfg, run=run, fingerprint=source.fingerprint, kind=source.kind,
    )


# --------------------------------------------------------------------------- the store


@dataclass
class StoreRecorder(Recorder):
    """Keeps one attack's walk in the store: each batch as it finishes, each step as a row."""

    store: Store
    target: Target
    attack: Attack
    settings: "Settings"
    clean_acc: float
    device: str
    versions: dict[str, str]

    def _step(self, eps: float) -> str:
        """The step's identity in the batches table. The walk is part of it; the ascending walk
        keeps the layout-2 identity (no walk), so that a v2 store's step in progress resumes."""
        s = self.settings
        ident: list[Any] = [self.target.source.fingerprint, self.attack.label, self.attack.params,
                            eps_key(eps), len(self.target.y), s.seed, s.batch_size,
                            [eps_key(e) for e in s.eps_grid]]
        return canonical(ident if s.walk == "up" else ident + [s.walk])

    def done(self, eps: float) -> torch.Tensor | None:
        if self.settings.fresh:
            return None
        r = self.store.result(self.target.run_id, self.attack.label, self.attack.params, eps,
                              len(self.target.y))
        same = (r is not None and r.fingerprint == self.target.source.fingerprint
                and r.seed == self.settings.seed and r.batch_size == self.settings.batch_size
                and r.walk == self.settings.walk
                and [eps_key(e) for e in r.grid] == [eps_key(e) for e in self.settings.eps_grid])
        return text_flags(r.flags) if same else None  # type: ignore[union-attr]

    def batches(self, eps: float) -> dict[int, torch.Tensor]:
        kept = self.store.batches(self.target.run_id, self._step(eps))
        return {k: text_flags(f) for k, (f, _) in kept.items()}

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        self.store.write_batch(self.target.run_id, self._step(eps), k, flag_text(flags), seconds)

    def finish(self, eps: float, flags: torch.Tensor, seconds: float) -> None:
        kept = self.store.batches(self.target.run_id, self._step(eps))
        s = self.settings
        row = ResultRow(
            run_id=self.target.run_id, attack=self.attack.label, params=self.attack.params,
            eps=eps, n=len(flags), clean_acc=self.clean_acc,
            robust_acc=int(flags.sum()) / len(flags), seconds=sum(t for _, t in kept.values()) or seconds,
            device=self.device, versions=self.versions, flags=flag_text(flags), seed=s.seed,
            batch_size=s.batch_size, grid=list(s.eps_grid),
            fingerprint=self.target.source.fingerprint, created=_now(), walk=s.walk,
        )
        self.store.write_result(row, self._step(eps))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- evaluation


@dataclass
class Settings:
    """What an evaluation runs: attacks, grid, batch size, seed, walk; ``fresh`` recomputes
    stored steps."""

    attacks: list[Attack]
    eps_grid: list[float]
    batch_size: int = 500
    seed: int = 0
    fresh: bool = False
    progress: bool = True
    diagnose: bool = False  # the costly checks too (large budget, loss trace, transfer)
    transfer_from: Any = None  # an nn.Module whose PGD examples the transfer check replays
    walk: str = DEFAULT_WALK  # how each attack walks the grid: up, down or bisect


@dataclass
class Evaluation:
    """What one model's evaluation produced: per-attack walks, the worst case, the findings."""

    target: Target
    settings: Settings
    clean: torch.Tensor
    results: list[GridResult]
    worst: list[WorstPoint]
    findings: list[Any] = field(default_factory=list)  # bench.diagnostics.Finding
    aa_warnings: list[tuple[str, float, int]] = field(default_factory=list)
    note: str = ""  # how the attacks were adapted to the model, if they were

    @property
    def aa_flagged(self) -> list[str]:
        """AutoAttack warnings that flag the evaluation (see audit.classify_aa_warning)."""
        return [m for m, _, pts in self.aa_warnings if audit.classify_aa_warning(m, pts)[0]]

    @property
    def unreliable(self) -> bool:
        """A flagged finding: the numbers may overstate robustness."""
        return bool(self.aa_flagged) or any(f.flagged for f in self.findings)

    @property
    def clean_estimate(self) -> Estimate:
        return Estimate(int(self.clean.sum()), len(self.clean))

    def as_dict(self) -> dict[str, Any]:
        """Plain data: clean and per-attack (and worst-case) accuracies with 95% intervals by
        eps, the findings, and what the numbers depend on."""
        s = self.settings
        return {
            "run_id": self.target.run_id, "fingerprint": self.target.source.fingerprint,
            "n": len(self.target.y), "seed": s.seed, "batch_size": s.batch_size,
            "eps_grid": list(s.eps_grid), "walk": s.walk, "clean": self.clean_estimate.as_dict(),
            "robust": {name: {format_eps(e): est.as_dict() for e, est in by.items()}
                       for name, by in self.estimates().items()},
            "unreliable": self.unreliable, "note": self.note,
            "findings": [f.as_dict() for f in self.findings],
            "autoattack_warnings": [m for m, _, _ in self.aa_warnings],
        }

    def table(self) -> str:
        """The terminal table (accuracies with 95% intervals, flags)."""
        return format_table(self, "")

    def estimates(self) -> dict[str, dict[float, Estimate]]:
        """Attack display name (and ``any``) -> eps -> estimate with its interval."""
        out = {r.attack.display: {e: Estimate(int(f.sum()), len(f)) for e, f in zip(r.eps, r.flags)}
               for r in self.results}
        out[ANY] = {w.eps: w.estimate for w in self.worst}
        return out


class _Eta:
    """Prints, after the first batch of each attack, an upper bound on that attack's time left."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.target, self.settings, self.seen = target, settings, set()

    def __call__(self, attack: Attack, eps: float, k: int, seconds: float) -> None:
        if attack.display in self.seen:
            return
        self.seen.add(attack.display)
        s = self.settings
        batches = math.ceil(len(self.target.y) / s.batch_size)
        steps = max_tests(s.walk, s.eps_grid)  # the most eps at which one point is attacked
        left = seconds * (steps * batches - 1)
        tqdm.write(
            f"bench: {self.target.run_id}: {attack.display}: first batch {seconds:.1f} s; at most "
            f"about {_duration(left)} left for this attack (walk {s.walk}: each point attacked at "
            f"most {steps} times)",
            file=sys.stderr,
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _walk_all(target: Target, s: Settings, clean: torch.Tensor, store: Store | None,
              device: torch.device) -> tuple[list[GridResult], list[str]]:
    """Every attack's grid walk, with progress kept in ``store`` when given."""
    model = target.model
    label, versions = device_label(device), library_versions()
    attacked = sum(1 for e in s.eps_grid if e > 0)
    bar = tqdm(total=len(s.attacks) * attacked, desc=f"eval {target.run_id}", unit="eps",
               file=sys.stderr, disable=not s.progress, dynamic_ncols=True, leave=False)
    results = []
    eta = _Eta(target, s) if s.progress else None
    try:
        with collect_warnings() as warned:
            for a in s.attacks:
                rec = (StoreRecorder(store, target, a, s, int(clean.sum()) / len(clean), label, versions)
                       if store is not None else None)
                results.append(grid_walk(model, a, target.x, target.y, s.eps_grid,
                                         batch_size=s.batch_size, seed=s.seed, clean=clean, bar=bar,
                                         recorder=rec, on_batch=eta, walk=s.walk))
    finally:
        bar.close()
    return results, list(dict.fromkeys(warned))


def result_rows(target: Target, results: Sequence[GridResult], s: Settings, device: str) -> list[ResultRow]:
    """The result rows of a finished walk (as the store holds them)."""
    n = len(target.y)
    clean_acc = float(results[0].flags[0].sum()) / n if results and results[0].flags else 0.0
    versions, now = library_versions(), _now()
    return [
        ResultRow(run_id=target.run_id, attack=r.attack.label, params=r.attack.params, eps=e, n=n,
                  clean_acc=clean_acc, robust_acc=int(f.sum()) / n, seconds=t, device=device,
                  versions=versions, flags=flag_text(f), seed=s.seed, batch_size=s.batch_size,
                  grid=list(s.eps_grid), fingerprint=target.source.fingerprint, created=now,
                  walk=r.walk)
        for r in results for e, f, t in zip(r.eps, r.flags, r.seconds)
    ]


def aa_warning_rows(target: Target, warnings: Sequence[tuple[str, float, int]]) -> list[DiagnosticRow]:
    """AutoAttack's own ``checks.py`` warnings as findings of this model (see
    :func:`bench.audit.classify_aa_warning` for which of them flag)."""
    out = []
    for msg, eps, points in warnings:
        flag, why = audit.classify_aa_warning(msg, points)
        # Keyed by what was said (not by its place in a list): a shard, a resumed run or a
        # second evaluation that repeats a warning replaces its row, and adds none.
        key = hashlib.sha256(canonical([msg, eps_key(eps), points]).encode()).hexdigest()[:12]
        out.append(DiagnosticRow(
            run_id=target.run_id, fingerprint=target.source.fingerprint, n=len(target.y),
            check="autoattack-checks", key=key, flagged=flag,
            source="AutoAttack checks.py (run by pyautoattack inside each call)",
            summary=f"at eps {format_eps(eps)} on {points} points: {msg}",
            details={"message": msg, "eps": eps, "points": points, "rule": why},
            advice="read AutoAttack's flags_doc.md for this message", created=_now(),
        ))
    return out


def _adapt(s: Settings, findings: Sequence[Any]) -> tuple[Settings, str]:
    """The attacks the findings call for (see bench.audit), and a note saying what changed."""
    attacks, note = audit.adapt(s.attacks, findings)
    return replace(s, attacks=attacks), note


def _save_findings(store: Store | None, target: Target, findings: Sequence[Any]) -> None:
    if store is not None and findings:
        store.write_diagnostics(audit.rows(target.run_id, target.source.fingerprint, len(target.y), findings))


def _drop_stale_inference(store: Store | None, target: Target, results: Sequence[GridResult]) -> None:
    """An up walk replaced the rows of an earlier inferring walk of the same attacks and grid:
    that walk's walk-inference finding no longer describes stored numbers."""
    key = audit.stale_inference_key(results)
    if store is not None and key is not None:
        store.drop_diagnostic(target.run_id, len(target.y), "walk-inference", key)


def _audit_after(target: Target, s: Settings, ev: "Evaluation") -> list[Any]:
    """The comparison checks, and the costly ones with ``diagnose``."""
    no_grad = ev.results[0].attack if ev.results and audit.graph_cut(ev.findings) else None  # Square alone
    found = audit.compare(ev.results) + audit.inference(target.model, target.x, target.y, ev.results, s.seed, no_grad)
    audit.stamp_inference(found, audit.inference_context(ev.results, s.seed, s.batch_size))
    if s.diagnose and ev.worst:
        top = ev.worst[-1]
        transfer = s.transfer_from.to(model_device(target.model)).eval() if s.transfer_from is not None else None
        found += audit.costly(target.model, target.x, target.y,
                              audit.Costly(top.eps, text_flags(top.flags), transfer, s.seed))
    return found


def evaluate_target(
    target: Target, settings: Settings, device: torch.device | str = "cpu",
    store: Store | None = None, out: TextIO | None = None,
) -> Evaluation:
    """Evaluate one model (see the module docstring); rows and findings go to ``store`` as they
    finish. The cheap checks run first (a randomized model gets AutoAttack rand and EOT-PGD).
    Prints a table with 95% intervals and flags on ``out`` when given."""
    s = settings
    check_settings(s.attacks, s.eps_grid, s.batch_size, s.seed)
    check_walk(s.walk)
    s.eps_grid = sorted(float(e) for e in s.eps_grid)
    device = torch.device(device)
    target.source.model = target.model.to(device).eval()
    if store is not None:
        store.claim_run(run_row(target.source), _now())
    clean = predict(target.model, target.x) == target.y
    findings = audit.cheap(target.model, target.x, target.y)
    _save_findings(store, target, findings)
    s, note = _adapt(s, findings)
    if note:
        tqdm.write(f"bench: {target.run_id}: {note}", file=sys.stderr)
    results, warned = _walk_all(target, s, clean, store, device)
    if store is not None and warned:
        store.write_diagnostics(aa_warning_rows(target, warned))
    rows = result_rows(target, results, s, device_label(device))
    ev = Evaluation(target, s, clean, results, worst_case(rows, flag_text(clean)), findings, warned, note)
    after = _audit_after(target, s, ev)
    _save_findings(store, target, after)
    _drop_stale_inference(store, target, results)
    ev.findings += after
    if out is not None:
        print(format_table(ev, device_label(device)), file=out)
    return ev


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
    fresh: bool = False,
    walk: str = DEFAULT_WALK,
) -> Evaluation:
    """Evaluate one checkpoint into ``store`` (a Store or a path). All input is validated before
    the store is opened; a BudgetViolation leaves that step's row unwritten."""
    settings = Settings(list(attacks), list(eps_grid), batch_size, seed, fresh, progress, walk=walk)
    check_settings(settings.attacks, settings.eps_grid, batch_size, seed)
    check_walk(walk)
    target = prepare_target(ckpt_path, n, data_dir, dataset, download)
    own = not isinstance(store, Store)
    db = Store(store) if own else store  # type: ignore[arg-type]
    try:
        return evaluate_target(target, settings, device, db, out or sys.stdout)
    finally:
        if own:
            db.close()


# ------------------------------------------------------------------------------- table


def ci_cell(e: Estimate) -> str:
    """``72.0 (63.1-79.6)``: accuracy and 95% Wilson interval in %."""
    lo, hi = e.interval
    return f"{100 * e.acc:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def format_table(ev: Evaluation, device: str) -> str:
    """Robust accuracy (%) with 95% intervals per attack (rows) and eps in 1/255 (columns)."""
    t, s = ev.target, ev.settings
    src = t.source
    est = ev.estimates()
    names = list(est)
    width = max(len(x) for x in names + ["attack"])
    head = f"{'attack':<{width}}" + "".join(f"{eps_in_255(e, digits=3):>19}" for e in s.eps_grid)
    lines = [
        f"{t.run_id} ({src.dataset}, {src.config.get('model', '?')}, {src.config.get('defense', '?')}, "
        f"weights {str(src.fingerprint)[7:19]}): n={len(t.y)} (first n test points), seed={s.seed}, "
        f"batch={s.batch_size}, walk={s.walk}, {device}",
        f"clean accuracy {ci_cell(ev.clean_estimate)}%; robust accuracy % (95% Wilson interval) "
        "by Linf eps (x/255)",
        head,
        "-" * len(head),
    ]
    for name in names:
        cells = "".join(f"{ci_cell(est[name][e]) if e in est[name] else '-':>19}" for e in s.eps_grid)
        lines.append(f"{name:<{width}}{cells}")
    lines.append(f"{ANY} = per point, robust only if every attack above failed at that eps and at "
                 "every smaller one")
    if s.walk != "up":
        lines.append(f"walk {s.walk}: the largest eps is a single run; a point robust there (or at a larger "
                     "eps) is counted robust below it (inferred); broken is always proved")
    if ev.note:
        lines.append(f"note: {ev.note}")
    for f in ev.findings:
        if f.flagged:
            lines.append(f"FLAG {f.check}: {f.summary} -> {f.advice}")
    for msg, eps, points in ev.aa_warnings:
        flag, why = audit.classify_aa_warning(msg, points)
        lines.append(f"{'FLAG' if flag else 'note'} autoattack-checks at {format_eps(eps)}: {msg} ({why})")
    lines.append("UNRELIABLE: a check flagged this evaluation; it is kept out of the ranking"
                 if ev.unreliable else f"checks passed: {', '.join(f.check for f in ev.findings)}")
    return "\n".join(lines)


__all__ = ["DEFAULT_WALK", "WALKS", "Evaluation", "GridResult", "Settings", "Target", "attach_points",
           "check_budget", "check_walk", "estimate", "evaluate_checkpoint", "evaluate_target",
           "grid_walk", "predict", "prepare_target", "walk_order"]
