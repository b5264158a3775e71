"""The driver's side of a sweep's evaluations: what the store already holds, and the shards'
flags written into it. Only the driver writes the store (no Ray here).

Each shard's flags are kept as soon as they arrive, batch by batch, in the store's ``batches``
table under the same step keys ``bench eval`` uses (:class:`bench.evaluate.StoreRecorder`), so a
killed driver loses no finished shard; when every shard of an evaluation is in, each (attack,
eps) step becomes its result row, as ``bench eval`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from bench import audit
from bench.evaluate import GridResult, Settings, StoreRecorder, Target, text_flags
from bench.io import library_versions
from bench.store import DiagnosticRow, Store
from bench.sweep import EvalJob
from bench.sweep_work import ShardResult

#: The checks every evaluation runs before its attacks (see :func:`bench.audit.cheap`).
CHEAP_CHECKS = ("randomized", "probabilities", "gradients")


def stored_findings(store: Store, run_id: str, fingerprint: str, n: int) -> list[DiagnosticRow] | None:
    """The cheap checks' findings stored for these weights and n, or None if any is missing."""
    rows = [d for d in store.diagnostics(run_id)
            if d.n == n and d.fingerprint == fingerprint and d.check in CHEAP_CHECKS]
    return rows if {d.check for d in rows} == set(CHEAP_CHECKS) else None


@dataclass
class EvalBook:
    """One evaluation job's state in the store: which steps and batches are in, and the writes.

    The driver holds no images: the recorders read only the source (run id, fingerprint) and
    n from the target, so its images are left empty."""

    store: Store
    job: EvalJob
    source: Any  # bench.sources.Source of the driver's copy of the checkpoint
    attacks: list[Any]
    devices: list[str] = field(default_factory=list)
    no_grad: Any = None  # the attack of the walk-inference check where gradients are unavailable

    def __post_init__(self) -> None:
        spec = self.job.spec
        self.target = Target(self.source, torch.empty(0), torch.zeros(spec.n, dtype=torch.long), 0)
        self.settings = Settings(list(self.attacks), list(spec.eps), spec.batch_size, spec.seed, progress=False,
                                 walk=spec.walk)

    def recorder(self, i: int, clean_acc: float = 0.0) -> StoreRecorder:
        """The store recorder of attack ``i`` (as ``bench eval`` would make it)."""
        device = ", ".join(sorted(set(self.devices))) or "ray workers"
        return StoreRecorder(self.store, self.target, self.attacks[i], self.settings, clean_acc, device,
                             library_versions())

    def done(self) -> bool:
        """Every (attack, eps) row is stored for these weights and settings."""
        return all(self.recorder(i).done(e) is not None for i in range(len(self.attacks)) for e in self.settings.eps_grid)

    def pending(self) -> list[tuple[int, int, list[int]]]:
        """The shards still to run: ``(k0, k1, attacks)`` whose batches are not all stored."""
        out = []
        for k0, k1 in self.job.spec.shard_ranges():
            which = [i for i in range(len(self.attacks)) if self._missing(i, k0, k1)]
            if which:
                out.append((k0, k1, which))
        return out

    def _missing(self, i: int, k0: int, k1: int) -> bool:
        """Some eps of attack ``i`` has neither its row nor batches k0..k1-1 stored."""
        rec = self.recorder(i)
        for eps in self.settings.eps_grid:
            if rec.done(eps) is None and not set(range(k0, k1)) <= set(rec.batches(eps)):
                return True
        return False

    def write_shard(self, r: ShardResult) -> None:
        """Keep a shard's AutoAttack warnings, then its flags as batches (eps 0: the clean
        flags), except for finished steps: a driver killed after this loses neither."""
        from bench.evaluate import aa_warning_rows

        self.devices.append(r.device)
        if r.warnings:
            self.store.write_diagnostics(aa_warning_rows(self.target, list(dict.fromkeys(r.warnings))))
        for i, steps in r.steps.items():
            rec = self.recorder(i)
            for eps in self.settings.eps_grid:
                if rec.done(eps) is not None:
                    continue
                got = {k: (f, 0.0) for k, f in r.clean.items()} if eps == 0 else steps[eps]
                for k, (flags, seconds) in sorted(got.items()):
                    rec.batch(eps, k, text_flags(flags), seconds)

    def _flags(self, rec: StoreRecorder, eps: float) -> torch.Tensor:
        """A step's flags: its row if stored, else its batches put together in order."""
        stored = rec.done(eps)
        if stored is not None:
            return stored
        kept = rec.batches(eps)
        missing = [k for k in range(self.job.spec.batches()) if k not in kept]
        if missing:
            raise RuntimeError(f"{self.job.describe()}: batches {missing} of eps {eps:.6g} are missing")
        return torch.cat([kept[k] for k in sorted(kept)])

    def finish(self) -> list[GridResult]:
        """Each step's result row (eps ascending, as ``bench eval`` writes them); the walks."""
        clean = self._flags(self.recorder(0), 0.0)  # every sweep grid holds eps 0
        clean_acc = int(clean.sum()) / len(clean)
        results = []
        for i, attack in enumerate(self.attacks):
            rec = self.recorder(i, clean_acc)
            flags = []
            for eps in self.settings.eps_grid:
                f = self._flags(rec, eps)
                if rec.done(eps) is None:
                    rec.finish(eps, f, 0.0)
                flags.append(f)
            results.append(GridResult(attack, list(self.settings.eps_grid), flags, [0.0] * len(flags),
                                      walk=self.settings.walk))
        return results

    def write_findings(self, findings: Sequence[Any]) -> None:
        """Findings of this model at this n, as ``bench eval`` stores them."""
        if findings:
            src = self.source
            self.store.write_diagnostics(audit.rows(src.run_id, src.fingerprint, self.job.spec.n, findings))

    def write_after(self, results: Sequence[GridResult]) -> None:
        """The comparisons between the attacks that ran (recomputed from the flags: cheap), and
        no walk-inference finding left by an earlier inferring walk whose rows an up walk replaced."""
        src = self.source
        self.write_findings(audit.compare(results))
        stale = audit.stale_inference_key(results)
        if stale is not None:
            self.store.drop_diagnostic(src.run_id, self.job.spec.n, "walk-inference", stale)

    def inference_context(self, results: Sequence[GridResult]) -> dict[str, Any]:
        """What this evaluation's walk-inference finding depends on (grid, walk, seed, batches)."""
        return audit.inference_context(results, self.job.spec.seed, self.job.spec.batch_size)

    def inference_due(self, results: Sequence[GridResult]) -> bool:
        """The walk-inference check has something to check, and no finding of it is stored for
        these weights, n, attacks, eps pair, grid, walk, seed and batches."""
        key = audit.inference_key(results)
        if key is None:
            return False
        src, n, context = self.source, self.job.spec.n, self.inference_context(results)
        return not any(d.check == "walk-inference" and d.key == key and d.n == n and d.fingerprint == src.fingerprint
                       and d.details.get("evaluation") == context for d in self.store.diagnostics(src.run_id))
