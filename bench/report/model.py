"""What the report shows, computed from the store alone: one section per data set and threat
model, one evaluation per model in it, entries (seeds grouped), the ranking eps and basis, flags.

Sections: rows of different threat models (:mod:`bench.norms`) never mix. A section holds the
evaluations of one data set under one norm, named by the data set alone under Linf (as before
bench knew other norms, so Linf files keep their names) and ``<data set> <norm>`` otherwise
(``fashion-mnist L2``); a model evaluated under two norms is a model of two sections, each with
its own worst case, findings and corrections.

One evaluation per leaderboard row: every number of a model's row (clean, each attack, the worst
case) comes from the same weights and the same n points. Where a model was evaluated at several
n, the row uses the largest n whose rows include the ranking basis (else the largest n); the
others appear in the curves section under their own n.

Ranking (``--rank-by``, default ``worst-case``): the worst case at the ranking eps, counted only
for models whose worst case there includes standard AutoAttack (or AutoAttack's ``rand`` version
for a model found randomized, as RobustBench does). Models without that basis, and models with a
flag that makes the evaluation unreliable, are listed but not ranked.

The ranking eps is chosen per section: the largest eps with standard (or rand) AutoAttack, else
the largest eps. ``--rank-eps`` applies to the sections with rows at that eps; the others (a
Linf 8/255 means nothing under L2) keep their default, and the report says so.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from bench import checkpoint
from bench.errors import UsageError
from bench.evaluation.results import (
    Estimate,
    WorstPoint,
    corrected,
    corrections,
    estimate,
    group_rows,
    worst_case,
)
from bench.norms import LINF, NORMS
from bench.params import format_eps
from bench.store import ANY, DiagnosticRow, ResultRow, RunRow, Store, canonical, eps_key
from bench.vocab import Check

AUTOATTACK = "autoattack"
RANK_BY = ("worst-case", "autoattack", "clean")  # or any attack name
#: Config keys that do not change what a checkpoint is (seeds are grouped over the rest).
NOT_IDENTITY = ("seed", "run_id", "data_dir", "download", "device", "out_dir", "resume")
#: Diagnostics rows of :mod:`bench.evaluation.transfer`'s matrix: measurements, not findings.
TRANSFER_MATRIX = Check.TRANSFER_MATRIX


@dataclass(frozen=True, order=True)
class Variant:
    """An attack with its parameters (canonical JSON); the worst case is ``any`` with ``""``."""

    attack: str
    params: str

    @property
    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.params) if self.params else {}

    @property
    def sort_key(self) -> tuple[int, str, str]:
        """Plain attacks by name, then AutoAttack, then the worst case."""
        group = 2 if self.attack == ANY else 1 if self.attack == AUTOATTACK else 0
        return (group, self.attack, self.params)

    @property
    def aa_version(self) -> str | None:
        return self.params_dict.get("version") if self.attack == AUTOATTACK else None


WORST = Variant(ANY, "")


def variant_of(row: ResultRow) -> Variant:
    return Variant(row.attack, canonical(row.params))


@dataclass
class Model:
    """One model's chosen evaluation: its run row, n, rows by variant and eps, the worst case."""

    run: RunRow
    n: int
    curves: dict[Variant, dict[int, ResultRow]]
    worst: dict[int, WorstPoint]
    clean: Estimate
    findings: list[DiagnosticRow] = field(default_factory=list)
    other_ns: list[int] = field(default_factory=list)
    norm: str = LINF  # the threat model of every row and finding above

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def eps_keys(self) -> list[int]:
        return sorted(self.worst)

    def at(self, variant: Variant, key: int) -> Estimate | None:
        """The estimate of a variant (or the worst case) at an eps key, if evaluated there."""
        if variant == WORST:
            w = self.worst.get(key)
            return w.estimate if w else None
        row = self.curves.get(variant, {}).get(key)
        return estimate(row.flags) if row else None

    @property
    def randomized(self) -> bool:
        return any(f.flagged and f.check == Check.RANDOMIZED for f in self.findings)

    def basis_variant(self, key: int) -> Variant | None:
        """The AutoAttack variant that may rank this model at ``key``: standard, or rand for a
        randomized model."""
        wanted = "rand" if self.randomized else "standard"
        for v, curve in sorted(self.curves.items()):
            if v.aa_version == wanted and key in curve:
                return v
        return None

    @property
    def flags(self) -> list[str]:
        """Names of the flagged findings, plus ``catastrophic-overfitting`` from training."""
        out = sorted({f.check for f in self.findings if f.flagged})
        co = (self.run.run or {}).get("catastrophic_overfitting") or {}
        if isinstance(co, dict) and co.get("detected"):
            out.append("catastrophic-overfitting")
        return out

    @property
    def unreliable(self) -> bool:
        """A flagged finding of the evaluation (not of training) marks the numbers unreliable."""
        return any(f.flagged for f in self.findings)

    @property
    def seed(self) -> Any:
        return (self.run.config or {}).get("seed")

    @property
    def train_images(self) -> int | None:
        """The number of images the model was trained on, as its run config records it
        (``train_size`` in a checkpoint's config.json); None where unknown (zoo, factory and
        Python API models, older checkpoints)."""
        size = (self.run.config or {}).get("train_size")
        return size if isinstance(size, int) and not isinstance(size, bool) else None


def _choose(groups: list[list[ResultRow]], basis_key: int | None) -> list[ResultRow]:
    """The evaluation of a model shown in its row: the largest n with standard AutoAttack at the
    basis eps, else the largest n."""

    def has_basis(rows: list[ResultRow]) -> bool:
        return any(
            r.attack == AUTOATTACK
            and r.params.get("version") in ("standard", "rand")
            and eps_key(r.eps) == basis_key
            for r in rows
        )

    with_basis = [g for g in groups if basis_key is not None and has_basis(g)]
    return max(with_basis or groups, key=lambda g: g[0].n)


def _clean_flags(rows: list[ResultRow]) -> str:
    """Clean-correct flags: any attack's row at eps 0, else inferred as all ones (each attack's
    flags at eps > 0 already start from the clean-correct points)."""
    for r in rows:
        if eps_key(r.eps) == 0:
            return r.flags
    return "1" * rows[0].n


def build_model(
    run: RunRow, rows: list[ResultRow], findings: list[DiagnosticRow], basis_key: int | None
) -> Model:
    """One run's evaluation under one norm (``rows`` all of it); only that norm's findings count
    (their corrections included)."""
    norm = rows[0].norm
    groups = list(group_rows(rows).values())
    chosen = _choose(groups, basis_key)
    n = chosen[0].n
    curves: dict[Variant, dict[int, ResultRow]] = {}
    for r in chosen:
        curves.setdefault(variant_of(r), {})[eps_key(r.eps)] = r
    clean = _clean_flags(chosen)
    mine = [f for f in findings if f.n == n and f.norm == norm]
    fixes = corrections([f for f in mine if f.fingerprint == chosen[0].fingerprint])
    worst = {eps_key(w.eps): w for w in corrected(worst_case(chosen, clean), fixes)}
    return Model(
        run,
        n,
        curves,
        worst,
        _clean_estimate(chosen, clean),
        mine,
        sorted({g[0].n for g in groups} - {n}),
        norm,
    )


def _clean_estimate(rows: list[ResultRow], clean: str) -> Estimate:
    """Clean accuracy: from the eps-0 flags, else from the clean accuracy every row records
    (a grid without eps 0 has no clean flags; all ones would read as 100%)."""
    if any(eps_key(r.eps) == 0 for r in rows):
        return estimate(clean)
    return Estimate(rows[0].clean_count, rows[0].n)


def _stub(run_id: str, dataset: str = "unknown") -> RunRow:
    return RunRow(run_id, "", dataset, "unknown", "unknown", {}, None, None, None)


def _run(runs: dict[str, RunRow], run_id: str, dataset: str) -> RunRow:
    """The run row of ``run_id``, or a stub in ``dataset`` for rows without one."""
    return runs.get(run_id) or _stub(run_id, dataset)


def rank_eps_key(rows: Iterable[ResultRow]) -> int | None:
    """Default ranking eps of a section: the largest eps with standard (or rand) AutoAttack,
    else the largest eps evaluated."""
    rows = list(rows)
    aa = [
        eps_key(r.eps)
        for r in rows
        if r.attack == AUTOATTACK and r.params.get("version") in ("standard", "rand")
    ]
    every = [eps_key(r.eps) for r in rows]
    return max(aa) if aa else (max(every) if every else None)


def _findings(store: Store, runs: dict[str, RunRow]) -> dict[tuple[str, str], list[DiagnosticRow]]:
    """Findings by (run id, norm): the transfer matrix's cells left out, and transfer findings
    fed by examples of weights no longer in the store dropped."""
    current = {r.fingerprint for r in runs.values()}
    out: dict[tuple[str, str], list[DiagnosticRow]] = {}
    for d in store.diagnostics():
        if d.check == TRANSFER_MATRIX:
            continue
        source = d.details.get("source_fingerprint") if d.check == Check.TRANSFER else None
        if source is not None and source not in current:
            continue
        out.setdefault((d.run_id, d.norm), []).append(d)
    return out


def section_name(dataset: str, norm: str) -> str:
    """A section's name: the data set under Linf, else ``<data set> <norm>``."""
    return dataset if norm == LINF else f"{dataset} {norm}"


def norm_of(models: list[Model]) -> str:
    """The threat model of a section's models (all share it)."""
    return models[0].norm if models else LINF


def section_key(rows: list[ResultRow], rank_eps: float | None) -> int | None:
    """A section's ranking eps: ``rank_eps`` where the section has rows at it, else the
    default (:func:`rank_eps_key`)."""
    if rank_eps is not None and any(eps_key(r.eps) == eps_key(rank_eps) for r in rows):
        return eps_key(rank_eps)
    return rank_eps_key(rows)


def norm_order(norm: str) -> tuple[int, str]:
    """Linf, L2, L1, then any other spelling by name."""
    return (NORMS.index(norm) if norm in NORMS else len(NORMS), norm)


EvalKey = tuple[str, str]  # (run id, norm): one model of one section


def _sections(
    by_eval: dict[EvalKey, list[ResultRow]], runs: dict[str, RunRow]
) -> dict[tuple[str, tuple[int, str]], list[EvalKey]]:
    """(data set, norm order) -> its evaluations by run id."""
    out: dict[tuple[str, tuple[int, str]], list[EvalKey]] = {}
    for run_id, norm in sorted(by_eval):
        dataset = (runs.get(run_id) or _stub(run_id)).dataset
        out.setdefault((dataset, norm_order(norm)), []).append((run_id, norm))
    return out


def load(store: Store, rank_eps: float | None = None) -> dict[str, tuple[int, list[Model]]]:
    """Section (:func:`section_name`) -> (ranking eps key, models); sections by data set, then
    by norm (Linf, L2, L1)."""
    runs = {r.run_id: r for r in store.runs()}
    findings = _findings(store, runs)
    by_eval: dict[EvalKey, list[ResultRow]] = {}
    for row in store.results():
        by_eval.setdefault((row.run_id, row.norm), []).append(row)
    out, grids = {}, {}
    for (dataset, (_, norm)), evals in sorted(_sections(by_eval, runs).items()):
        rows = [r for e in evals for r in by_eval[e]]
        key = section_key(rows, rank_eps)
        models = [
            build_model(_run(runs, e[0], dataset), by_eval[e], findings.get(e, []), key)
            for e in evals
        ]
        out[section_name(dataset, norm)] = (key, models)
        grids[section_name(dataset, norm)] = (norm, sorted({r.eps for r in rows}))
    _check_rank_eps(rank_eps, grids)
    return out


def _check_rank_eps(rank_eps: float | None, grids: dict[str, tuple[str, list[float]]]) -> None:
    """``--rank-eps`` that no section evaluated is one line listing the eps each evaluated (a
    section without it, beside others with it, keeps its default and says so)."""
    if rank_eps is None:
        return
    if any(eps_key(rank_eps) in {eps_key(e) for e in grid} for _, grid in grids.values()):
        return
    listed = "; ".join(
        f"{name}: {', '.join(format_eps(e, norm) for e in grid)}"
        for name, (norm, grid) in grids.items()
    )
    raise UsageError(f"--rank-eps {rank_eps:.6g} was evaluated in no section; evaluated: {listed}")


# ------------------------------------------------------------------------ entries, ranking


@dataclass
class Entry:
    """A leaderboard entry: one model, or models that differ only by training seed."""

    models: list[Model]

    @property
    def first(self) -> Model:
        return self.models[0]

    @property
    def label(self) -> str:
        return ", ".join(m.run_id for m in self.models)

    @property
    def seeds(self) -> list[Any]:
        return [m.seed for m in self.models]

    def values(self, variant: Variant, key: int) -> list[Estimate] | None:
        """Every model's estimate, or None if any model lacks it."""
        vals = [m.at(variant, key) for m in self.models]
        return None if any(v is None for v in vals) else vals  # type: ignore[return-value]

    def clean(self) -> list[Estimate]:
        return [m.clean for m in self.models]

    @property
    def flags(self) -> list[str]:
        return sorted({f for m in self.models for f in m.flags})

    @property
    def unreliable(self) -> bool:
        return any(m.unreliable for m in self.models)


def identity(model: Model) -> str:
    """What a model is, training seed aside: the entry key."""
    config = checkpoint.with_applied_augment(model.run.config or {})
    cfg = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    if not cfg or model.seed is None:
        return f"run:{model.run_id}"
    return canonical([model.run.dataset, model.n, model.run.kind, cfg])


def entries(models: list[Model]) -> list[Entry]:
    """Models grouped into entries (seeds of one configuration together), by first run id."""
    groups: dict[str, list[Model]] = {}
    for m in models:
        groups.setdefault(identity(m), []).append(m)
    return sorted(
        (Entry(sorted(g, key=lambda m: str(m.seed))) for g in groups.values()),
        key=lambda e: e.first.run_id,
    )


def mean(vals: list[Estimate]) -> float:
    return statistics.fmean(v.acc for v in vals)


def spread(vals: list[Estimate]) -> float:
    return statistics.stdev(v.acc for v in vals) if len(vals) > 1 else 0.0


def span(vals: list[Estimate]) -> tuple[float, float]:
    """The interval of an entry: one model's Wilson interval, or for seeds the hull of theirs
    (conservative: seeds are evaluated on the same points, so their counts can't be pooled)."""
    return (min(v.interval[0] for v in vals), max(v.interval[1] for v in vals))


def basis_variant(entry: Entry, rank_by: str, key: int) -> Variant | None:
    """The variant an entry is ranked by at ``key``, or None if it has no valid basis."""
    if rank_by == "clean":
        return None
    if rank_by in ("worst-case", ANY):
        ok = all(m.basis_variant(key) is not None for m in entry.models)
        return WORST if ok else None
    if rank_by == AUTOATTACK:
        vs = {m.basis_variant(key) for m in entry.models}
        return vs.pop() if len(vs) == 1 and None not in vs else None
    matches = sorted(v for v in entry.first.curves if v.attack == rank_by)
    return matches[0] if matches else None


@dataclass
class Ranked:
    """An entry with its place (None: not ranked), score and the reason when not ranked (e.g.
    ``no standard AutoAttack at the ranking eps``)."""

    entry: Entry
    place: int | None
    score: list[Estimate] | None
    reason: str = ""
    overlaps: list[int] = field(default_factory=list)


def rank(ents: list[Entry], key: int, rank_by: str = "worst-case") -> list[Ranked]:
    """Entries ranked by their basis at ``key`` (higher is better); unreliable entries and those
    without a basis follow, unranked, with their reason."""
    ranked, unranked = [], []
    for e in ents:
        if rank_by == "clean":
            ranked.append(Ranked(e, None, e.clean()))
            continue
        v = basis_variant(e, rank_by, key)
        vals = e.values(v, key) if v is not None else None
        if e.unreliable:
            unranked.append(Ranked(e, None, vals, "unreliable (flagged, see flags)"))
        elif vals is None:
            unranked.append(Ranked(e, None, None, _missing_reason(rank_by)))
        else:
            ranked.append(Ranked(e, None, vals))
    ranked.sort(key=lambda r: (-mean(r.score or []), r.entry.label))
    for i, r in enumerate(ranked, 1):
        r.place = i
    for r in ranked:
        lo, hi = span(r.score or [])
        r.overlaps = [
            o.place for o in ranked if o is not r and _overlap((lo, hi), span(o.score or []))
        ]  # type: ignore[misc]
    return ranked + unranked


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _missing_reason(rank_by: str) -> str:
    """Why an entry without its ranking basis is not ranked (the leaderboard's rank cell)."""
    if rank_by in ("worst-case", ANY, AUTOATTACK):
        return "no standard AutoAttack at the ranking eps"
    return f"no {rank_by} at the ranking eps"
