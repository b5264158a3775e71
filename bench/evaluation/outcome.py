"""What one evaluation produced (:class:`Evaluation`): per-attack walks, the worst case, the
findings, as objects and as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bench.evaluation import audit
from bench.evaluation.plan import Settings
from bench.evaluation.results import Estimate, WorstPoint
from bench.evaluation.table import format_table
from bench.evaluation.targets import Target
from bench.evaluation.walk import GridResult
from bench.params import format_eps
from bench.store import ANY


@dataclass
class Evaluation:
    """What one model's evaluation produced: per-attack walks, the worst case, the findings."""

    target: Target
    settings: Settings
    clean: torch.Tensor
    results: list[GridResult]
    worst: list[WorstPoint]
    findings: list[Any] = field(default_factory=list)  # bench.evaluation.diagnostics.Finding
    aa_warnings: list[tuple[str, float, int]] = field(default_factory=list)
    note: str = ""  # how the attacks were adapted to the model, if they were
    ran: list[str] = field(default_factory=list)  # the pipeline's steps that computed something now
    device: str = ""  # where the walks ran
    seconds: dict[str, float] = field(default_factory=dict)  # wall s of each step's work

    @property
    def aa_flagged(self) -> list[str]:
        """AutoAttack warnings that flag the evaluation (see audit.classify_aa_warning)."""
        calls = self.aa_calls
        return [m for m, _, pts in self.aa_warnings if audit.classify_aa_warning(m, pts, calls)[0]]

    @property
    def aa_calls(self) -> int:
        """AutoAttack calls this evaluation makes at most (:func:`audit.aa_calls`)."""
        s = self.settings
        return audit.aa_calls(len(self.target.y), s.batch_size, s.eps_grid)

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
            "run_id": self.target.run_id,
            "fingerprint": self.target.source.fingerprint,
            "n": len(self.target.y),
            "seed": s.seed,
            "batch_size": s.batch_size,
            "eps_grid": list(s.eps_grid),
            "walk": s.walk,
            "norm": s.norm,
            "clean": self.clean_estimate.as_dict(),
            "robust": {
                name: {format_eps(e, s.norm): est.as_dict() for e, est in by.items()}
                for name, by in self.estimates().items()
            },
            "unreliable": self.unreliable,
            "corrected": {
                format_eps(w.eps, s.norm): {
                    "overstated_points": w.overstated,
                    "by": w.corrected_by,
                }
                for w in self.worst
                if w.overstated
            },
            "note": self.note,
            "findings": [f.as_dict() for f in self.findings],
            "autoattack_warnings": [m for m, _, _ in self.aa_warnings],
        }

    def table(self) -> str:
        """The terminal table (accuracies with 95% intervals, flags)."""
        return format_table(self, self.device)

    def estimates(self) -> dict[str, dict[float, Estimate]]:
        """Attack display name (and ``any``) -> eps -> estimate with its interval."""
        out = {
            r.attack.display: {e: Estimate(int(f.sum()), len(f)) for e, f in zip(r.eps, r.flags)}
            for r in self.results
        }
        out[ANY] = {w.eps: w.estimate for w in self.worst}
        return out
