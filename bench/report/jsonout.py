"""RobustBench-style model-info JSON, one file per model and threat model: ``json/<run>.json``
under Linf (as before bench knew other norms), ``json/<norm>/<run>.json`` otherwise (RobustBench's
own layout files model-info by threat model too; a run id never holds a ``/`` once escaped, so
the names never collide).

RobustBench's keys (``clean_acc``, ``autoattack_acc`` as ``"%.2f"`` strings, ``eps``, ...) so that
robustbench's own model-info reader loads the file; ``autoattack_acc`` is written only from the
standard version of AutoAttack (what RobustBench means by it); other versions go under
``autoattack_<version>_acc``. bench's own keys add the intervals, the worst case, flags and the
curves.
"""

from __future__ import annotations

from typing import Any

from bench.evaluation.results import Estimate, status
from bench.norms import LINF
from bench.params import eps_in_255, format_eps
from bench.report import robustbench
from bench.report.model import AUTOATTACK, WORST, Model, Variant
from bench.report.text import safe_name
from bench.store import ANY
from bench.vocab import SourceKind


def file_name(m: Model) -> str:
    """The model-info file of one evaluation, relative to the report."""
    folder = "json" if m.norm == LINF else f"json/{m.norm}"
    return f"{folder}/{safe_name(m.run_id)}.json"


def pct(e: Estimate | None) -> str | None:
    return None if e is None else f"{100 * e.acc:.2f}"


def _aa(m: Model, key: int) -> dict[str, Any]:
    """``autoattack_acc`` (standard only) and every other version under its own key."""
    out: dict[str, Any] = {"autoattack_acc": None, "autoattack_ci95": None}
    for v in sorted(v for v in m.curves if v.attack == AUTOATTACK and key in m.curves[v]):
        e = m.at(v, key)
        name = "autoattack" if v.aa_version == "standard" else f"autoattack_{v.aa_version}"
        out[f"{name}_acc"] = pct(e)
        out[f"{name}_ci95"] = e.as_dict()["ci95"] if e else None
    return out


def _curves(m: Model, labels: dict[Variant, str]) -> dict[str, dict[str, Any]]:
    """Every variant's curve, eps keyed as :func:`eps_in_255` writes them in the model's norm."""
    out = {}
    for v in sorted(m.curves, key=lambda v: v.sort_key):
        out[labels[v]] = {_eps(m, k): m.at(v, k).as_dict() for k in sorted(m.curves[v])}  # type: ignore[union-attr]
    out[ANY] = {_eps(m, k): m.at(WORST, k).as_dict() for k in m.eps_keys}  # type: ignore[union-attr]
    return out


def _eps(m: Model, key: int) -> str:
    return eps_in_255(key / 1e9, norm=m.norm)


def model_info(m: Model, key: int, labels: dict[Variant, str]) -> dict[str, Any]:
    """The JSON document of one model at the ranking eps ``key``."""
    worst = m.at(WORST, key)
    info: dict[str, Any] = {
        "link": None,
        "name": m.run_id,
        "authors": None,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": m.run.dataset,
        "venue": None,
        "architecture": m.run.model,
        "threat_model": m.norm,
        "eps": format_eps(key / 1e9, m.norm),
        "clean_acc": pct(m.clean),
        "reported": None,
    }
    info.update(_aa(m, key))
    info.update(
        {
            "clean_ci95": m.clean.as_dict()["ci95"],
            "worst_case_acc": pct(worst),
            "worst_case": worst.as_dict() if worst else None,
            "worst_case_missing": m.worst[key].missing if key in m.worst else None,
            "worst_case_overstated_points": m.worst[key].overstated if key in m.worst else None,
            "worst_case_corrected_by": m.worst[key].corrected_by if key in m.worst else None,
            "n_eval": m.n,
            "fingerprint": m.run.fingerprint,
            "source_kind": m.run.kind,
            "defense": m.run.defense,
            "defense_params": m.run.defense_params,
            "seed": m.seed,
            "epochs": m.run.epochs,
            "train_seconds": None if m.run.train_seconds is None else round(m.run.train_seconds, 1),
            "flags": m.flags,
            "unreliable": m.unreliable,
            "findings": [
                {
                    "check": f.check,
                    "flagged": f.flagged,
                    "status": status(f.flagged, f.details),
                    "summary": f.summary,
                    "details": f.details,
                    "source": f.source,
                }
                for f in m.findings
            ],
            "curves": _curves(m, labels),
            "robustbench_submission": robustbench.submission(m, key),
        }
    )
    if m.run.kind == SourceKind.ROBUSTBENCH:
        info.update(_published(m, key))
    return info


def _pct_number(e: Estimate | None) -> float | None:
    return None if e is None else round(100 * e.acc, 2)


def _published(m: Model, key: int) -> dict[str, Any]:
    """A zoo model's published clean and AutoAttack accuracy beside ours at their eps (else at
    the ranking eps ``key``)."""
    pub = robustbench.published(m)
    key = robustbench.published_key(m, key)
    basis = m.basis_variant(key)
    ours = m.at(basis, key) if basis is not None else None
    return {
        "published": pub,
        "published_note": robustbench.published_note(m),
        "ours_vs_published": {
            "eps": format_eps(key / 1e9, m.norm),
            "clean_acc": {
                "ours": _pct_number(m.clean),
                "published": None if pub is None else pub.get("clean_acc"),
            },
            "autoattack_acc": {
                "ours": _pct_number(ours),
                "published": None if pub is None else pub.get("autoattack_acc"),
            },
        },
    }
