"""The diagnostics of an evaluation: which checks of :mod:`bench.evaluation.diagnostics` run,
when, on which points, and what the evaluation does about them.

* Always (cheap, on at most 200 points, before any attack): randomized outputs, probability
  outputs, input-gradient availability. A randomized model is then evaluated with AutoAttack's
  ``rand`` version instead of ``standard``/``plus`` and with EOT-PGD added (as RobustBench
  does), and the table says so.
* Always (free, after the attacks, on the per-point flags): every comparison between attacks
  that ran anyway: Square against the white-box attacks, each iterative attack against FGSM.
* Always after a ``down`` or ``bisect`` walk (cheap: bench's PGD at one eps on at most 200
  points): the points every attack left robust at the largest eps, counted robust below it by
  inference, attacked directly at the grid's middle eps (:func:`inference`).
* With ``--diagnose`` (costly, on at most 100 points): a very large budget, the PGD loss trace,
  and transfer from another model (``--transfer-from``).

A flagged finding marks the model's numbers unreliable: the report keeps them out of the
ranking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Sequence

import torch
from torch import nn

from bench.attacks import Attack, make_attack
from bench.evaluation import diagnostics as dg
from bench.evaluation import remedies, stats
from bench.evaluation.probes import QUERIES
from bench.evaluation.walk import attack_points, check_budget
from bench.norms import LINF
from bench.params import format_eps
from bench.store import DiagnosticRow
from bench.vocab import Check, Walk

ITERATIVE = ("pgd", "apgd", "mifgsm", "eotpgd", "autoattack")
WHITE_BOX = ("fgsm", "pgd", "apgd", "mifgsm", "eotpgd", "fab", "cw", "deepfool", "autoattack")
INFERENCE_MAX_POINTS = 1000  # inferred points checked directly, at most (the rest: unchecked)
EOT_ITER = 10  # gradient samples per EOT-PGD step for a randomized model
TRACE_STEPS = 100  # PGD steps of the loss-trace check (at 50, slowly climbing honest points flag)


def cheap(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dg.Finding]:
    """The always-on checks before the attacks (on at most 200 points)."""
    return dg.run_cheap(model, x, y)


def flagged(findings: Sequence[dg.Finding], check: str) -> bool:
    return any(f.flagged and f.check == check for f in findings)


def adapt_for_randomized(attacks: Sequence[Attack]) -> tuple[list[Attack], str]:
    """AutoAttack's ``rand`` version in place of standard/plus, and EOT-PGD added: the attacks
    RobustBench uses for randomized defenses. Returns the attacks and a note saying so."""
    out, changed, norm = [], [], _norm(attacks)
    for a in attacks:
        if a.name == "autoattack" and a.params.get("version") in ("standard", "plus"):
            out.append(make_attack("autoattack", {"version": "rand"}, norm))
            changed.append(f"autoattack {a.params['version']} -> rand")
        else:
            out.append(a)
    if norm != LINF and not any(a.name == "autoattack" for a in out):
        out.append(make_attack("autoattack", {"version": "rand"}, norm))
        changed.append(f"autoattack rand added (EOT-PGD has no {norm} version)")
    elif norm == LINF and not any(a.name == "eotpgd" for a in out):
        out.append(make_attack("eotpgd", {"eot_iter": str(EOT_ITER)}))
        changed.append(f"eotpgd (eot_iter={EOT_ITER}) added")
    return out, "randomized model: " + "; ".join(changed)


def adapt(attacks: Sequence[Attack], findings: Sequence[dg.Finding]) -> tuple[list[Attack], str]:
    """The attacks the cheap findings call for (a randomized model, a cut graph), and a note
    saying what changed ("" when nothing did); ``bench eval`` and ``bench sweep`` both use it."""
    out, notes = list(attacks), []
    if flagged(findings, Check.RANDOMIZED):
        out, note = adapt_for_randomized(out)
        notes.append(note)
    if graph_cut(findings):
        out, note = adapt_for_no_gradients(out)
        notes.append(note)
    return out, "; ".join(notes)


def _norm(attacks: Sequence[Attack]) -> str:
    """The threat model of an evaluation's attacks (all share it)."""
    return attacks[0].norm if attacks else LINF


def graph_cut(findings: Sequence[dg.Finding]) -> bool:
    """The input is cut off from the graph: no gradient-based attack can run at all."""
    return any(f.check == Check.GRADIENTS and f.details.get("graph_interrupted") for f in findings)


def adapt_for_no_gradients(attacks: Sequence[Attack]) -> tuple[list[Attack], str]:
    """Only gradient-free attacks (Square) can run on a model whose input leaves the graph."""
    out = [a for a in attacks if a.name == "square"] or [make_attack("square", norm=_norm(attacks))]
    dropped = [a.display for a in attacks if a.name != "square"]
    return out, (
        "no input gradient at all (the graph is cut): ran Square only, dropped "
        + (", ".join(dropped) or "nothing")
    )


def _pairs(results: Sequence[Any]) -> list[tuple[str, Any, Any]]:
    """(check, weak walk, strong walk) for every comparison the attacks that ran allow."""
    by = {r.attack.name: r for r in results}
    out = []
    if "fgsm" in by:
        out += [
            (Check.ITERATIVE_VS_SINGLE_STEP, by["fgsm"], r)
            for r in results
            if r.attack.name in ITERATIVE
        ]
    if "square" in by:
        out += [
            (Check.SQUARE_VS_WHITEBOX, by["square"], r)
            for r in results
            if r.attack.name in WHITE_BOX
        ]
    return out


def _shared_eps(weak: Any, strong: Any) -> list[float]:
    return [e for e in weak.eps if e > 0 and e in strong.eps]


def compare(results: Sequence[Any]) -> list[dg.Finding]:
    """Each comparison between attacks that ran, at every eps > 0 both walked; per pair, the
    finding at the eps where the weaker attack's lead is most significant. A check's level is
    split between all the tests it makes here (pairs times eps: Bonferroni)."""
    pairs = _pairs(results)
    tests: dict[str, int] = {}
    for check, weak, strong in pairs:
        tests[check] = tests.get(check, 0) + len(_shared_eps(weak, strong))
    out = []
    for check, weak, strong in pairs:
        alpha = stats.level(check, tests[check])
        found = []
        for eps in _shared_eps(weak, strong):
            fw, fs = weak.flags[weak.eps.index(eps)], strong.flags[strong.eps.index(eps)]
            f = dg.compare_attacks(
                check, weak.attack.display, fw, strong.attack.display, fs, alpha=alpha
            )
            f.details["eps"] = eps
            f.details["tests"] = tests[check]
            found.append(f)
        if found:
            out.append(min(found, key=lambda f: (not f.flagged, f.details.get("p_value", 1.0))))
    return out


def middle_eps(eps: Sequence[float]) -> int | None:
    """The grid index where :func:`inference` checks: the middle of the attacked eps (> 0),
    rounded down (4/255 on 0..8/255); None with fewer than two attacked eps."""
    attacked = [j for j, e in enumerate(eps) if e > 0]
    return attacked[(len(attacked) - 1) // 2] if len(attacked) >= 2 else None


def inference_plan(results: Sequence[Any]) -> tuple[list[Any], int, torch.Tensor] | None:
    """What :func:`inference` checks: the walks that infer (down, bisect), the grid index of
    the grid's middle eps, and the points robust at the largest eps under every one of
    those attacks (every one of them, the unchecked ones counted by :func:`inference`); None when
    nothing was inferred (no such walk, eps or point)."""
    walking = [r for r in results if getattr(r, "walk", Walk.UP) != Walk.UP]
    j = middle_eps(walking[0].eps) if walking else None
    if j is None:
        return None
    top = torch.stack([r.flags[-1] for r in walking]).all(
        dim=0
    )  # robust at the largest eps, every attack
    idx = top.nonzero().flatten()
    return (walking, j, idx) if len(idx) else None


def inference_key(results: Sequence[Any]) -> str | None:
    """The store key of the finding :func:`inference` makes for ``results``; None if it makes
    none."""
    plan = inference_plan(results)
    if plan is None:
        return None
    walking, j, _ = plan
    return _inference_row_key(walking, j)


def _inference_row_key(walks: Sequence[Any], j: int) -> str:
    """The store key of a walk-inference finding on these walks, checked at grid index ``j``."""
    return row_key(
        Check.WALK_INFERENCE,
        {
            "attacks": [r.attack.display for r in walks],
            "inferred_eps": walks[0].eps[j],
            "measured_eps": walks[0].eps[-1],
        },
    )


def inference_context(results: Sequence[Any], seed: int, batch_size: int) -> dict[str, Any]:
    """What an evaluation's walk-inference finding depends on besides the weights, n and its
    key: the grid, the walk, the seed and the batches (a rerun with other ones checks again)."""
    return {
        "grid": [format_eps(e) for e in results[0].eps] if results else [],
        "walk": getattr(results[0], "walk", Walk.UP) if results else Walk.UP,
        "seed": seed,
        "batch_size": batch_size,
    }


def stamp_inference(findings: Sequence[dg.Finding], context: dict[str, Any]) -> None:
    """Record :func:`inference_context` in the walk-inference findings' details."""
    for f in findings:
        if f.check == Check.WALK_INFERENCE:
            f.details["evaluation"] = dict(context)


def stale_inference_key(results: Sequence[Any]) -> str | None:
    """For walks that infer nothing (up): the key that a walk-inference finding of the same
    attacks and grid would have, so that a finding left by an earlier inferring walk, whose rows
    these replace, can be dropped; None otherwise."""
    if not results or any(getattr(r, "walk", Walk.UP) != Walk.UP for r in results):
        return None
    j = middle_eps(results[0].eps)
    return None if j is None else _inference_row_key(results, j)


def inference(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    results: Sequence[Any],
    seed: int,
    attack: Attack | None = None,
) -> list[dg.Finding]:
    """:func:`bench.evaluation.diagnostics.check_inference` on the first
    :data:`INFERENCE_MAX_POINTS` of :func:`inference_plan`'s points, attacked by bench's PGD
    (default parameters, per-point seeds as in the walk; ``attack`` instead where gradients are
    unavailable) at the grid's middle eps; where it breaks any, the remedy
    (:func:`bench.evaluation.remedies.inference`) attacks them at every other inferred eps."""
    plan = inference_plan(results)
    if plan is None:
        return []
    walking, j, every = plan
    idx = every[:INFERENCE_MAX_POINTS]
    eps = walking[0].eps[j]
    attack = attack or make_attack("pgd", norm=walking[0].attack.norm)
    direct = attack_points(model, attack, x, y, idx, eps, seed)
    finding = dg.check_inference(eps, walking[0].eps[-1], direct, unchecked=len(every) - len(idx))
    finding.details["attacks"] = [r.attack.display for r in walking]  # whose walks were checked
    finding.details["broken_points"] = idx[~direct].tolist()
    if not bool(direct.all()):
        inferred = [e for e in walking[0].eps[:-1] if e > 0]
        remedies.inference(model, x, y, finding, (inferred, idx), attack, seed)
    return [finding]


@dataclass
class Costly:
    """What the costly checks need: the grid's largest eps and the worst-case flags there."""

    eps: float
    worst: torch.Tensor
    seed: int = 0
    norm: str = LINF


def costly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: Costly) -> list[dg.Finding]:
    """Large budget, and the loss trace with its remedy: on at most 100 points."""
    m = dg.COSTLY_MAX_POINTS
    x, y, worst = x[:m], y[:m], c.worst[:m]
    out = [dg.check_large_budget(model, x, y, norm=c.norm)]
    g = torch.Generator().manual_seed(c.seed)
    alpha = 2.5 * c.eps / TRACE_STEPS
    x_adv, losses = dg.pgd_with_trace(
        model, x, y, c.eps, TRACE_STEPS, alpha, random_start=True, generator=g, norm=c.norm
    )
    trace = dg.check_loss_trace(losses, robust=worst)
    check_budget(x.to(x_adv.device), x_adv, c.eps, attack="pgd-100 (loss trace)", norm=c.norm)
    with torch.no_grad():  # the trace's own PGD-100 may break points the attacks left: proofs
        broke = model(x_adv).argmax(1).cpu() != y.cpu()
    remedies.record(trace, c.eps, (worst & broke).nonzero().flatten().tolist(), int(worst.sum()))
    out.append(remedies.loss_trace(model, x, y, trace, c.eps, c.seed, c.norm))
    return out


def aa_calls(n: int, batch_size: int, eps_grid: Sequence[float]) -> int:
    """How many AutoAttack calls one evaluation makes at most: a call per batch and eps > 0.
    Its Square-gain test splits the check's level between them (Bonferroni)."""
    return -(-n // max(1, batch_size)) * max(1, sum(1 for e in eps_grid if e > 0))


def classify_aa_warning(message: str, points: int, calls: int = 1) -> tuple[bool, str]:
    """Whether one of AutoAttack's ``checks.py`` warnings flags the evaluation, and why.

    * Square's gain (``check_square_sr``: Square ran last, on the points the white-box
      components left, and broke some): the points it broke, b of the call's ``points``, against
      c = 0 points the white-box ones broke that Square did not, in the same exact McNemar test
      as the other comparisons, at ``stats.ALPHAS['autoattack-checks']`` split between the
      evaluation's ``calls`` AutoAttack calls (b >= 11 for one call), instead of AutoAttack's
      0.2-point rule.
    * A dynamic defense (the forward pass calls autograd): flags.
    * Randomness, probability outputs and zero gradients duplicate bench's own checks, which
      decide; the class-count warning is about the attack's settings: noted, not flagged."""
    low = message.lower()
    if "square attack has decreased" in low:
        m = re.search(r"of\s+([0-9.]+)%", message)
        broken = round(float(m.group(1)) / 100 * points) if m else 0
        p = stats.mcnemar(broken, 0)
        return (
            p < stats.level(Check.AUTOATTACK_CHECKS, calls),
            f"Square broke {broken} of {points} points after the white-box attacks: "
            f"McNemar p = {p:.3g}",
        )
    if "dynamic defense" in low:
        return True, "the forward pass calls autograd: a dynamic defense"
    return False, "noted; bench's own checks decide"


def rows(
    run_id: str, fingerprint: str, n: int, findings: Sequence[dg.Finding], norm: str = LINF
) -> list[DiagnosticRow]:
    """Findings of an evaluation under threat model ``norm`` as store rows, keyed by
    :func:`row_key`."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = []
    for f in findings:
        d = f.as_dict()
        key = row_key(f.check, d["details"])
        out.append(
            DiagnosticRow(
                run_id,
                fingerprint,
                n,
                f.check,
                key,
                f.flagged,
                f.source,
                f.summary,
                d["details"],
                f.advice,
                now,
                norm,
            )
        )
    return out


def row_key(check: str, details: dict[str, Any]) -> str:
    """What tells two findings of one check on one model and n apart in the store: a
    comparison's two attacks; a walk-inference check's attacks and eps pair (two evaluations of
    one model, e.g. two blocks of a sweep, each keep theirs: two blocks with the same attacks,
    n and eps would share result rows, which :mod:`bench.sweep` refuses); else nothing."""
    if check in (Check.ITERATIVE_VS_SINGLE_STEP, Check.SQUARE_VS_WHITEBOX):
        return f"{details.get('weak', '')}~{details.get('strong', '')}"
    if check == Check.WALK_INFERENCE and "attacks" in details:
        pair = f"{format_eps(details['inferred_eps'])}<{format_eps(details['measured_eps'])}"
        return f"{'+'.join(details['attacks'])}@{pair}"
    if check in PROBES and "eps" in details:
        return f"{probe_key(details['eps'])}~{'+'.join(details.get('whitebox_attacks', []))}"
    return ""


PROBES = (Check.BLACK_BOX_PROBE, Check.TRANSFER)


def probe_key(eps: float) -> str:
    """The store key of a probe's finding at ``eps`` (the transfer matrix's ``transfer`` rows
    are keyed by their source's fingerprint instead)."""
    return f"probe@{format_eps(eps)}"


def black_box_cover(results: Sequence[Any], eps: float) -> str | None:
    """The attack of the evaluation that already ran a black-box Square at ``eps`` with at least
    the probe's queries, tested against the white-box attacks by its own check (AutoAttack
    standard/plus/rand: autoattack-checks; the user's ``square``: square-vs-whitebox); None if
    none did (then the black-box probe runs)."""
    for r in results:
        if eps not in r.eps:
            continue
        if _full_autoattack(r):
            return r.attack.display
        if r.attack.name == "square" and int(r.attack.params.get("n_queries", 0)) >= QUERIES:
            return r.attack.display
    return None


def _full_autoattack(r: Any) -> bool:
    """AutoAttack in a version that runs all its components (standard, plus or rand)."""
    return r.attack.name == "autoattack" and r.attack.params.get("version") != "custom"


def has_margin_loss(results: Sequence[Any], eps: float) -> bool:
    """Whether a DLR loss ran at ``eps``: AutoAttack standard, plus or rand (APGD-T/APGD-DLR),
    or APGD on the DLR loss (the probes then skip their APGD-DLR)."""
    return any(
        eps in r.eps
        and (
            _full_autoattack(r)
            or (r.attack.name == "apgd" and r.attack.params.get("loss") == "dlr")
        )
        for r in results
    )


def whitebox_worst(results: Sequence[Any], eps: float) -> tuple[torch.Tensor | None, list[str]]:
    """The robust flags at ``eps`` of the white-box attacks' worst case (None if none ran there),
    and their names."""
    here = [r for r in results if r.attack.name in WHITE_BOX and eps in r.eps]
    if not here:
        return None, []
    flags = torch.stack([r.flags[r.eps.index(eps)] for r in here]).all(dim=0)
    return flags, [r.attack.display for r in here]


__all__ = [
    "Costly",
    "adapt_for_randomized",
    "cheap",
    "compare",
    "costly",
    "flagged",
    "replace",
    "rows",
]
