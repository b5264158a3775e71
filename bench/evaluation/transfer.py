"""The cross-model transfer matrix: adversarial examples crafted on each model, evaluated on
every model of the same data set (the "cross-model generalization" table of Szegedy et al.
2014, for our defenses).

For each source model, bench's PGD (default parameters: 10 steps of 2.5*eps/10, random start,
CE loss; batches and per-point starts seeded as in the grid walk) crafts examples at one eps
on the first ``min(n, MAX_POINTS)`` test points; each target model is robust on a point if it
classifies both the clean point and the source's example correctly. The diagonal is the
white-box PGD of each model on itself.

Stored in the diagnostics table (its layout unchanged): one row per (target, source, eps),
check ``transfer-matrix`` (:data:`CHECK`), ``run_id`` the target, ``key`` the source's weights
fingerprint and the eps (:func:`cell_key`: recomputing replaces the same rows, matrices at other
eps are kept), ``details`` the source run id and fingerprint, eps, the attack and its parameters,
the points used, the robust count, its 95% interval and the per-point flags. Where the store holds
the target's white-box evaluation at that eps, each off-diagonal cell also feeds the ``transfer``
diagnostic (:func:`bench.evaluation.diagnostics.check_transfer`, same key). The diagonal repeats
the grid walk's PGD at that eps: where the store holds that PGD row (same parameters, seed, batch
size, and eps the grid's largest, where the walk runs it on every point), :func:`diagonal_check`
says whether they agree.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timezone
from typing import Any, Sequence, TextIO

import torch

from bench.attacks import make_attack
from bench.errors import UsageError
from bench.evaluation import diagnostics as dg
from bench.evaluation import stats
from bench.evaluation.results import estimate, worst_case
from bench.evaluation.targets import Target
from bench.evaluation.walk import batch_seed, check_budget, flag_text, predict, text_flags
from bench.norms import LINF
from bench.params import eps_words
from bench.store import DiagnosticRow, ResultRow, Store, canonical, eps_key
from bench.vocab import Check, Walk

CHECK = Check.TRANSFER_MATRIX  # the diagnostics rows of the matrix: measurements, not findings
MAX_POINTS = 500  # points of each matrix, at most (the first of the evaluated n)
ATTACK = "pgd"
CORNER = "crafted on / evaluated on"
SOURCE = (
    "cross-model transfer: PGD examples crafted on one model evaluated on another "
    "(Szegedy et al. 2014, cross-model generalization)"
)


def points(targets: Sequence[Target]) -> int:
    """The points a matrix uses: the first min(n, MAX_POINTS) of the evaluated ones."""
    return min(MAX_POINTS, *(len(t.y) for t in targets))


def groups(targets: Sequence[Target]) -> dict[str, list[Target]]:
    """Targets by data set, in the order given."""
    out: dict[str, list[Target]] = {}
    for t in targets:
        out.setdefault(t.source.dataset, []).append(t)
    return out


def check_request(targets: Sequence[Target], eps: float, norm: str = LINF) -> None:
    """A matrix needs two models of one data set and an eps > 0 (at most 1 under Linf)."""
    if not 0 < eps <= (1 if norm == LINF else math.inf):
        bound = "(0, 1]" if norm == LINF else "(0, inf)"
        raise UsageError(f"--transfer-eps must be in {bound}, got {eps!r}")
    if not any(len(g) >= 2 for g in groups(targets).values()):
        raise UsageError("--transfer-matrix needs at least two models of one data set")


def craft(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int,
    batch_size: int,
    norm: str = LINF,
) -> torch.Tensor:
    """PGD examples (CPU) for ``x`` at ``eps`` in ``norm`` on ``model``, in the grid walk's
    fixed batches."""
    pgd = make_attack(ATTACK, norm=norm)
    out = []
    for k, lo in enumerate(range(0, len(x), batch_size)):
        idx = torch.arange(lo, min(lo + batch_size, len(x)))
        out.append(pgd.run(model, x[idx], y[idx], eps, batch_seed(seed, eps, k), index=idx).cpu())
    x_adv = torch.cat(out)
    check_budget(x, x_adv, eps, attack="pgd (transfer matrix)", norm=norm)
    return x_adv


def robust_flags(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
) -> torch.Tensor:
    """Per point: the model classifies both x and its transferred example correctly."""
    return (predict(model, x) == y) & (predict(model, x_adv) == y)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_key(source_fingerprint: str, eps: float) -> str:
    """The diagnostics key of a cell (and of the transfer finding it feeds)."""
    return f"{source_fingerprint}@{eps_key(eps)}"


def cell_row(
    source: Target,
    target: Target,
    eps: float,
    flags: torch.Tensor,
    seed: int,
    batch_size: int,
    norm: str = LINF,
) -> DiagnosticRow:
    """One cell of the matrix as a diagnostics row (never flagged: it is a measurement)."""
    text = flag_text(flags)
    est = estimate(text)
    lo, hi = est.interval
    details: dict[str, Any] = {
        "source_run_id": source.run_id,
        "source_fingerprint": source.source.fingerprint,
        "eps": eps,
        "attack": ATTACK,
        "params": make_attack(ATTACK).params,
        "seed": seed,
        "batch_size": batch_size,
        "n": est.n,
        "robust": est.k,
        "ci95": [lo, hi],
        "max_points": MAX_POINTS,
        "flags": text,
    }
    summary = (
        f"PGD at {eps_words(eps, norm)} crafted on {source.run_id}: "
        f"{est.k}/{est.n} robust "
        f"({100 * est.acc:.1f}%, 95% interval {100 * lo:.1f}-{100 * hi:.1f})"
    )
    return DiagnosticRow(
        target.run_id,
        target.source.fingerprint,
        len(target.y),
        CHECK,
        cell_key(source.source.fingerprint, eps),
        False,
        SOURCE,
        summary,
        details,
        "",
        _now(),
        norm,
    )


def whitebox_flags(
    store: Store, target: Target, eps: float, norm: str = LINF
) -> torch.Tensor | None:
    """The target's stored white-box worst case at ``eps`` in ``norm`` (its weights, its n), if
    evaluated."""
    fp, n = target.source.fingerprint, len(target.y)
    rows = [
        r
        for r in store.results(target.run_id)
        if r.fingerprint == fp and r.n == n and r.norm == norm
    ]
    clean = flag_text(predict(target.model, target.x) == target.y)
    for w in worst_case(rows, clean) if rows else []:
        if eps_key(w.eps) == eps_key(eps):
            return text_flags(w.flags)
    return None


def transfer_row(
    target: Target,
    source: Target,
    x_adv: torch.Tensor,
    whitebox: torch.Tensor,
    eps: float,
    sources: int = 1,
    norm: str = LINF,
) -> DiagnosticRow:
    """The ``transfer`` diagnostic of ``target`` fed by the source's examples. ``sources``: how
    many other models' examples test this target; each test runs at the transfer check's
    level split between the transfer probe and the matrix's ``sources`` tests (Bonferroni), so
    that a checkpoint is flagged by chance with probability at most that level however many
    models the matrix has."""
    m = len(x_adv)
    f = dg.check_transfer(
        target.model,
        target.x[:m],
        target.y[:m],
        x_adv,
        whitebox[:m],
        alpha=stats.level(Check.TRANSFER, 2 * max(1, sources)),
        eps=eps,
    )
    details = dict(f.as_dict()["details"])
    details.update(
        {
            "source_run_id": source.run_id,
            "source_fingerprint": source.source.fingerprint,
            "eps": eps,
            "points": m,
            "from": CHECK,
        }
    )
    summary = (
        f"from {source.run_id} (transfer matrix, {eps_words(eps, norm)}, {m} points): {f.summary}"
    )
    return DiagnosticRow(
        target.run_id,
        target.source.fingerprint,
        len(target.y),
        Check.TRANSFER,
        cell_key(source.source.fingerprint, eps),
        f.flagged,
        f.source,
        summary,
        details,
        f.advice,
        _now(),
        norm,
    )


def matrix(
    group: Sequence[Target],
    eps: float,
    seed: int,
    batch_size: int,
    store: Store | None = None,
    norm: str = LINF,
) -> list[DiagnosticRow]:
    """Every cell of one data set's matrix in ``norm``, and the transfer findings the store
    allows."""
    m = points(group)
    x, y = group[0].x[:m], group[0].y[:m]
    for t in group[1:]:  # the same first points of the same test split
        if not torch.equal(t.y[:m], y):
            raise UsageError(f"{t.run_id} was evaluated on other points than {group[0].run_id}")
    wb = {t.run_id: whitebox_flags(store, t, eps, norm) for t in group} if store else {}
    rows = []
    for source in group:  # one source's examples at a time: memory of m images
        x_adv = craft(source.model, x, y, eps, seed, batch_size, norm)
        for target in group:
            flags = robust_flags(target.model, x, y, x_adv)
            rows.append(cell_row(source, target, eps, flags, seed, batch_size, norm))
            if target is not source and wb.get(target.run_id) is not None:
                found = wb[target.run_id]
                rows.append(transfer_row(target, source, x_adv, found, eps, len(group) - 1, norm))
    return rows


def _repeats(r: ResultRow, cell: DiagnosticRow) -> bool:
    """Whether stored row ``r`` is the white-box PGD run the diagonal ``cell`` repeats: same
    weights, parameters, seed and batch size, at the grid's largest eps, walked bisect or down
    (which attack every clean-correct point there in one run)."""
    det = cell.details
    return (
        r.attack == ATTACK
        and r.norm == cell.norm
        and r.fingerprint == cell.fingerprint
        and r.walk in (Walk.BISECT, Walk.DOWN)
        and canonical(r.params) == canonical(make_attack(ATTACK).params)
        and eps_key(r.eps) == eps_key(det["eps"]) == eps_key(max(r.grid))
        and r.seed == det["seed"]
        and r.batch_size == det["batch_size"]
        and r.n >= det["n"]
    )


def diagonal_check(store: Store, rows: Sequence[DiagnosticRow]) -> list[str]:
    """Diagonal cells whose flags differ from the stored white-box PGD row they repeat, one line
    each; cells without such a row are not compared."""
    out = []
    for d in rows:
        det = d.details
        if d.check != CHECK or det["source_run_id"] != d.run_id:
            continue
        for r in store.results(d.run_id):
            if _repeats(r, d) and r.flags[: det["n"]] != det["flags"]:
                out.append(
                    f"{d.run_id}: the matrix's diagonal ({det['robust']}/{det['n']}) differs from "
                    f"its stored PGD row at {eps_words(det['eps'], d.norm)} "
                    f"({r.flags[: det['n']].count('1')}/{det['n']})"
                )
    return out


def table(rows: Sequence[DiagnosticRow]) -> str:
    """The matrix as text: rows crafted on, columns evaluated on, accuracy in %."""
    cells = [r for r in rows if r.check == CHECK]
    names = list(dict.fromkeys(r.run_id for r in cells))
    acc = {
        (r.details["source_run_id"], r.run_id): 100 * r.details["robust"] / r.details["n"]
        for r in cells
    }
    width = max(len(s) for s in names + [CORNER])
    cols = [max(len(s), 6) + 2 for s in names]
    lines = [f"{CORNER:<{width}}" + "".join(f"{s:>{w}}" for s, w in zip(names, cols))]
    for src in names:
        lines.append(
            f"{src:<{width}}"
            + "".join(f"{acc.get((src, t), float('nan')):>{w}.1f}" for t, w in zip(names, cols))
        )
    return "\n".join(lines)


def write_matrix(
    db: Any,
    targets: Sequence[Target],
    eps: float,
    seed: int,
    batch_size: int,
    out: TextIO | None = None,
    norm: str = LINF,
) -> list[DiagnosticRow]:
    """Compute each data set's matrix (data sets with one model are skipped, with a line) and
    store it in ``db``; prints each matrix on ``out`` (None: the ``sys.stdout`` of the call,
    not of the import, which a test's capture may have closed since)."""
    every: list[DiagnosticRow] = []
    with Store(db) as store:
        for name, group in groups(targets).items():
            if len(group) < 2:
                print(f"bench: transfer matrix: {name} has one model; skipped", file=sys.stderr)
                continue
            started = time.perf_counter()
            rows = matrix(group, eps, seed, batch_size, store, norm)
            store.write_diagnostics(rows)
            for line in diagonal_check(store, rows):
                print(f"bench: warning: transfer matrix: {line}", file=sys.stderr)
            every += rows
            print(
                f"transfer matrix, {name}: PGD at {eps_words(eps, norm)}, first "
                f"{points(group)} test points (at most {MAX_POINTS}), accuracy %, "
                f"{time.perf_counter() - started:.1f} s\n{table(rows)}",
                file=out or sys.stdout,
            )
    return every


__all__ = [
    "CHECK",
    "MAX_POINTS",
    "cell_key",
    "check_request",
    "craft",
    "diagonal_check",
    "matrix",
    "points",
    "write_matrix",
]
