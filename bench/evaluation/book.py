"""The store's side of one evaluation (driver only): the model's record, what is already stored
(rows, batches of a step in progress, findings), and every write: each batch as it finishes, each
(attack, eps) step as its result row, the findings. Whatever executor walks the batches, this is
the only writer, so a killed evaluation rerun with the same plan continues where it stopped.

Steps are identified in the ``batches`` table by the weights, the attack and its parameters, eps,
n, seed, batch size, grid and walk (:meth:`Book.step`); a finished step is its result row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import torch

from bench.attacks import Attack
from bench.evaluation import audit
from bench.evaluation import diagnostics as dg
from bench.evaluation.plan import Plan
from bench.evaluation.targets import run_row
from bench.evaluation.walk import GridResult, Recorder, flag_text, text_flags
from bench.evaluation.work import ShardResult, Stats
from bench.io import library_versions
from bench.norms import LINF
from bench.params import eps_words
from bench.store import DiagnosticRow, ResultRow, Store, canonical, eps_key
from bench.vocab import Check, Walk

#: The checks every evaluation runs before its attacks (see :func:`bench.evaluation.audit.cheap`).
CHEAP_CHECKS = (Check.RANDOMIZED, Check.PROBABILITIES, Check.GRADIENTS)


def now() -> str:
    """UTC time, to the second (rows' ``created``, runs' ``updated``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Book:
    """One evaluation's state in ``store``: steps and batches, rows and findings."""

    store: Store
    plan: Plan
    attacks: list[Attack] = field(default_factory=list)  # the adapted attacks, once known
    devices: list[str] = field(default_factory=list)  # where the shards ran
    stats: dict[int, list[Stats]] = field(default_factory=dict)  # attack index -> per shard
    finished: set[tuple[int, int]] = field(
        default_factory=set
    )  # (attack, eps key) rows written now
    clean_batches: dict[int, str] = field(
        default_factory=dict
    )  # batch -> clean flags, from the shards
    warnings: list[tuple[str, float, int]] = field(
        default_factory=list
    )  # AutoAttack's, from the shards

    @property
    def source(self) -> Any:
        return self.plan.target.source

    @property
    def n(self) -> int:
        return self.plan.n

    # -- the model and its cheap checks ------------------------------------------------------
    def claim(self) -> None:
        """Record the model (its run row) before anything of it is stored."""
        self.store.claim_run(run_row(self.source), now())

    def stored_cheap(self) -> list[dg.Finding] | None:
        """The cheap checks' findings stored for these weights and n, or None if one is missing."""
        rows = [d for d in self.mine() if d.check in CHEAP_CHECKS]
        if {d.check for d in rows} != set(CHEAP_CHECKS):
            return None
        rows.sort(key=lambda d: CHEAP_CHECKS.index(d.check))  # the order they run in
        return [_finding(d) for d in rows]

    def mine(self) -> list[DiagnosticRow]:
        """The stored findings about these weights at this n under this threat model."""
        src, norm = self.source, self.plan.settings.norm
        return [
            d
            for d in self.store.diagnostics(src.run_id)
            if d.n == self.n and d.fingerprint == src.fingerprint and d.norm == norm
        ]

    def write_findings(self, findings: Sequence[dg.Finding]) -> None:
        """Findings of this model at this n (a finding replaces the one with its check and key)."""
        if findings:
            src, norm = self.source, self.plan.settings.norm
            self.store.write_diagnostics(
                audit.rows(src.run_id, src.fingerprint, self.n, findings, norm)
            )

    # -- steps -------------------------------------------------------------------------------
    def step(self, attack: Attack, eps: float) -> str:
        """A step's identity in the batches table. The walk and the norm are part of it; the
        ascending walk keeps the layout-2 identity (no walk) and Linf the layout-3 one (no
        norm), so that an older store's step in progress resumes."""
        s = self.plan.settings
        ident: list[Any] = [
            self.source.fingerprint,
            attack.label,
            attack.params,
            eps_key(eps),
            self.n,
            s.seed,
            s.batch_size,
            [eps_key(e) for e in s.eps_grid],
        ]
        ident += [] if s.walk == Walk.UP else [s.walk]
        return canonical(ident if s.norm == LINF else ident + [s.norm])

    def row(self, attack: Attack, eps: float) -> ResultRow | None:
        """The stored row of this step made with these weights, seed, batches, grid and walk."""
        s = self.plan.settings
        r = self.store.result(self.source.run_id, attack.label, attack.params, eps, self.n, s.norm)
        same = (
            r is not None
            and r.fingerprint == self.source.fingerprint
            and r.seed == s.seed
            and r.batch_size == s.batch_size
            and r.walk == s.walk
            and [eps_key(e) for e in r.grid] == [eps_key(e) for e in s.eps_grid]
        )
        return r if same else None

    def done(self, i: int, eps: float) -> torch.Tensor | None:
        """The flags of attack ``i``'s step at ``eps`` if it can be taken from the store: its row
        was written by this evaluation, or stored before and ``fresh`` is not asked for."""
        a = self.attacks[i]
        if self.plan.settings.fresh and (i, eps_key(eps)) not in self.finished:
            return None
        r = self.row(a, eps)
        return text_flags(r.flags) if r is not None else None

    def kept(self, i: int, eps: float) -> dict[int, torch.Tensor]:
        """The finished batches of attack ``i``'s step at ``eps`` (a step in progress)."""
        kept = self.store.batches(self.source.run_id, self.step(self.attacks[i], eps))
        return {k: text_flags(f) for k, (f, _) in kept.items()}

    def write_batch(self, i: int, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        self.store.write_batch(
            self.source.run_id, self.step(self.attacks[i], eps), k, flag_text(flags), seconds
        )

    def finish_step(
        self, i: int, eps: float, flags: torch.Tensor, seconds: float, clean_acc: float
    ) -> None:
        """The step's result row (its seconds: the sum over its batches, else ``seconds``); the
        store drops the step's batches with it."""
        a, s = self.attacks[i], self.plan.settings
        step = self.step(a, eps)
        kept = self.store.batches(self.source.run_id, step)
        row = ResultRow(
            run_id=self.source.run_id,
            attack=a.label,
            params=a.params,
            eps=eps,
            n=len(flags),
            clean_acc=clean_acc,
            robust_acc=int(flags.sum()) / len(flags),
            seconds=sum(t for _, t in kept.values()) or seconds,
            device=self.device(),
            versions=library_versions(),
            flags=flag_text(flags),
            seed=s.seed,
            batch_size=s.batch_size,
            grid=list(s.eps_grid),
            fingerprint=self.source.fingerprint,
            created=now(),
            walk=s.walk,
            norm=s.norm,
        )
        self.store.write_result(row, step)
        self.finished.add((i, eps_key(eps)))

    def device(self) -> str:
        """Where the steps ran: the shards' devices."""
        return ", ".join(sorted(set(self.devices))) or "unknown"

    def recorder(self, i: int, clean_acc: float) -> "StepRecorder":
        """Attack ``i``'s walk kept here as it goes (an in-process walk)."""
        return StepRecorder(self, i, clean_acc)

    # -- shards ------------------------------------------------------------------------------
    def pending(self) -> list[tuple[int, int, list[int]]]:
        """The shards still to run: ``(k0, k1, attacks)`` whose steps are neither stored nor
        kept for batches k0..k1-1."""
        grid = self.plan.settings.eps_grid
        # Each open step's kept batches, read once (not once per shard).
        open_steps = [
            (i, set(self.kept(i, eps)))
            for i in range(len(self.attacks))
            for eps in grid
            if self.done(i, eps) is None
        ]
        out = []
        for k0, k1 in self.plan.shard_ranges():
            need = set(range(k0, k1))
            which = sorted({i for i, kept in open_steps if not need <= kept})
            if which:
                out.append((k0, k1, which))
        return out

    def write_shard(self, r: ShardResult) -> None:
        """Keep a shard's AutoAttack warnings, then its captured flags as batches (eps 0: the
        clean flags), except for finished steps: a driver killed after this loses neither."""
        self.devices.append(r.device)
        self.clean_batches.update(r.clean)
        if r.warnings:
            self.store.write_diagnostics(
                aa_warning_rows(
                    self.source,
                    self.n,
                    list(dict.fromkeys(r.warnings)),
                    self.aa_calls,
                    self.plan.settings.norm,
                )
            )
            self.warnings = list(dict.fromkeys(self.warnings + r.warnings))
        for i, st in r.stats.items():
            self.stats.setdefault(i, []).append(st)
        for i, steps in r.steps.items():
            for eps in self.plan.settings.eps_grid:
                if self.done(i, eps) is not None:
                    continue
                got = {k: (f, 0.0) for k, f in r.clean.items()} if eps == 0 else steps.get(eps, {})
                for k, (flags, seconds) in sorted(got.items()):
                    self.write_batch(i, eps, k, text_flags(flags), seconds)

    def _batched(self, i: int, eps: float) -> torch.Tensor:
        """A step's flags from its kept batches, put together in order (all must be there)."""
        kept = self.kept(i, eps)
        missing = [k for k in range(self.plan.batches()) if k not in kept]
        if missing:
            raise RuntimeError(
                f"{self.source.run_id}: batches {missing} of eps {eps:.6g} are missing"
            )
        return torch.cat([kept[k] for k in sorted(kept)])

    def clean(self) -> torch.Tensor | None:
        """The clean-correct flags: from the shards that ran now, else the stored eps-0 step;
        None when neither has them (a grid without 0 whose steps were all stored)."""
        if set(range(self.plan.batches())) <= set(self.clean_batches):
            return torch.cat(
                [text_flags(self.clean_batches[k]) for k in range(self.plan.batches())]
            )
        if 0.0 in self.plan.settings.eps_grid and self.attacks:
            return self.done(0, 0.0)
        return None

    def finish(self, clean: torch.Tensor) -> list[GridResult]:
        """Each step's result row not yet written (eps ascending), and the walks put together."""
        grid = list(self.plan.settings.eps_grid)
        clean_acc = int(clean.sum()) / len(clean)
        results = []
        for i, attack in enumerate(self.attacks):
            flags = []
            for eps in grid:
                f = self.done(i, eps)
                if f is None:
                    f = self._batched(i, eps)
                    self.finish_step(i, eps, f, 0.0, clean_acc)
                flags.append(f)
            results.append(self._merged(i, attack, grid, flags))
        return results

    def _merged(
        self, i: int, attack: Attack, grid: list[float], flags: list[torch.Tensor]
    ) -> GridResult:
        """Attack ``i``'s walk: its flags and its shards' stats added up; an attack no shard
        walked now had every step taken from the store (reused)."""
        m, shards = len(grid), self.stats.get(i, [])
        attacked = [sum(s.attacked[j] for s in shards) for j in range(m)]
        seconds = [sum(s.seconds[j] for s in shards) for j in range(m)]
        reused = max((s.reused for s in shards), default=sum(1 for e in grid if e > 0))
        return GridResult(
            attack,
            grid,
            flags,
            seconds,
            reused=reused,
            walk=self.plan.settings.walk,
            attacked=attacked,
        )

    @property
    def computed(self) -> bool:
        """Some shard was walked by this evaluation."""
        return bool(self.stats)

    # -- after the walks ---------------------------------------------------------------------
    def drop_stale_inference(self, results: Sequence[GridResult]) -> None:
        """An up walk replaced the rows of an earlier inferring walk of the same attacks and grid:
        that walk's walk-inference finding no longer describes stored numbers."""
        key = audit.stale_inference_key(results)
        if key is not None:
            self.store.drop_diagnostic(
                self.source.run_id, self.n, Check.WALK_INFERENCE, key, self.plan.settings.norm
            )

    def inference_context(self, results: Sequence[GridResult]) -> dict[str, Any]:
        """What this evaluation's walk-inference finding depends on (grid, walk, seed, batches)."""
        s = self.plan.settings
        return audit.inference_context(results, s.seed, s.batch_size)

    def stored_inference(self, results: Sequence[GridResult]) -> list[dg.Finding] | None:
        """The walk-inference finding stored for these weights, n, attacks, eps pair, grid, walk,
        seed and batches, if any."""
        key, context = audit.inference_key(results), self.inference_context(results)
        for d in self.mine():
            if (
                d.check == Check.WALK_INFERENCE
                and d.key == key
                and d.details.get("evaluation") == context
            ):
                return [_finding(d)]
        return None

    @property
    def aa_calls(self) -> int:
        """AutoAttack calls this evaluation makes at most (:func:`audit.aa_calls`)."""
        s = self.plan.settings
        return audit.aa_calls(self.n, s.batch_size, s.eps_grid)

    def stored_probes(self, eps: float, context: dict[str, Any]) -> list[dg.Finding] | None:
        """The probes' findings stored for these weights, n, eps and context, if all are."""
        want = {Check.BLACK_BOX_PROBE}
        if context.get("surrogate") is not None:
            want.add(Check.TRANSFER)
        rows = [
            d
            for d in self.mine()
            if d.check in want
            and d.key == f"{audit.probe_key(eps)}~{'+'.join(context['whitebox'])}"
            and d.details.get("context") == context
        ]
        if {d.check for d in rows} != want:
            return None
        return [_finding(d) for d in sorted(rows, key=lambda d: d.check != Check.BLACK_BOX_PROBE)]


def _finding(d: DiagnosticRow) -> dg.Finding:
    """A stored finding as the check made it."""
    return dg.Finding(d.check, d.flagged, d.source, d.summary, dict(d.details), d.advice)


@dataclass
class StepRecorder(Recorder):
    """Keeps one attack's in-process walk in the book: each batch as it finishes, each step as a
    row (:class:`bench.evaluation.walk.Recorder`)."""

    book: Book
    i: int
    clean_acc: float

    def done(self, eps: float) -> torch.Tensor | None:
        return self.book.done(self.i, eps)

    def batches(self, eps: float) -> dict[int, torch.Tensor]:
        return self.book.kept(self.i, eps)

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        self.book.write_batch(self.i, eps, k, flags, seconds)

    def finish(self, eps: float, flags: torch.Tensor, seconds: float) -> None:
        self.book.finish_step(self.i, eps, flags, seconds, self.clean_acc)


def aa_warning_rows(
    source: Any,
    n: int,
    warnings: Sequence[tuple[str, float, int]],
    calls: int = 1,
    norm: str = LINF,
) -> list[DiagnosticRow]:
    """AutoAttack's own ``checks.py`` warnings as findings of this model under threat model
    ``norm`` (see :func:`bench.evaluation.audit.classify_aa_warning` for which of them flag)."""
    out = []
    for msg, eps, points in warnings:
        flag, why = audit.classify_aa_warning(msg, points, calls)
        # Keyed by what was said (not by its place in a list): a shard, a resumed run or a
        # second evaluation that repeats a warning replaces its row, and adds none.
        key = hashlib.sha256(canonical([msg, eps_key(eps), points]).encode()).hexdigest()[:12]
        out.append(
            DiagnosticRow(
                run_id=source.run_id,
                fingerprint=source.fingerprint,
                n=n,
                check=Check.AUTOATTACK_CHECKS,
                key=key,
                flagged=flag,
                source="AutoAttack checks.py (run by pyautoattack inside each call)",
                summary=f"at {eps_words(eps, norm)} on {points} points: {msg}",
                details={"message": msg, "eps": eps, "points": points, "rule": why},
                advice="read AutoAttack's flags_doc.md for this message",
                created=now(),
                norm=norm,
            )
        )
    return out
