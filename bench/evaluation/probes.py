"""The always-on probes: attacks that do not use the model's gradients, run with every
evaluation whatever attacks the user named, so that a model whose gradients mislead is caught.

* black-box probe: Square (Andriushchenko et al. 2020; score-based, margin loss) with
  :data:`QUERIES` queries on :data:`POINTS` points drawn at random (seeded) at the grid's
  largest eps;
* transfer probe: bench's PGD crafted on a surrogate (``--transfer-from``, or a standard model
  of the data set where the entry point has one) and replayed on the model (Carlini et al.
  2019: transfer attacks must not beat white-box ones).

Each is compared with the worst case of the white-box attacks on the same points in McNemar's
exact test (AutoAttack's ``check_square_sr``, with a test in place of its 0.2-point margin) at
its level in :data:`bench.evaluation.stats.ALPHAS`. The white-box side is the user's attacks plus
APGD-DLR (Croce & Hein 2020; skipped where AutoAttack or APGD ran), and where a probe is
significantly ahead, both sides escalate on the points in question (APGD-CE; Square with more
queries) before the test decides: a probe still significantly ahead of every white-box attack
flags the evaluation (the gradients mislead), while attacks that were merely weak get their
number corrected. Every point either side broke that the evaluation's attacks had left standing
is a proof and corrects the worst case (:mod:`bench.evaluation.remedies`); where the
corrections on the points probed are significant, the same attacks run on every other point the
evaluation counted robust, so that the whole number is corrected, not a sample of it. A model
found randomized gets no corrections (a single misclassified pass proves nothing; it is flagged).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.attacks import derive_seed, make_attack
from bench.evaluation import diagnostics as dg
from bench.evaluation import remedies, stats
from bench.evaluation.walk import attack_points, check_budget, predict
from bench.norms import LINF
from bench.vocab import Check
from bench.weights import fingerprint_model

POINTS = 200  # points probed (drawn at random, seeded), at most
QUERIES = 300  # Square's queries per point: a few hundred break an honest model's easy points
ESCALATED_QUERIES = 3000  # Square's queries where the first probe found significant evidence
P_INIT = 0.8  # Square's initial square size (the value AutoAttack gives it in every norm)
#: The white-box side's margin-loss attack, run unless a margin loss already ran: APGD on the
#: DLR loss (Croce & Hein 2020), which no rescaling of the logits can flatten.
DLR = ("apgd", {"loss": "dlr"})
CE = ("apgd", {"loss": "ce"})


@dataclass
class Probe:
    """What the probes need: the eps, the white-box attacks' worst-case robust flags there (all
    evaluated points; None when no white-box attack ran), the names of those attacks, whether
    they include a margin loss, the worst case over every attack there (all points), the seed,
    the surrogate (or None) and whether the model was found randomized."""

    eps: float
    whitebox: torch.Tensor | None
    names: list[str]
    worst: torch.Tensor
    seed: int
    surrogate: nn.Module | None = None
    margin: bool = False
    randomized: bool = False
    covered: str | None = None  # an attack of the evaluation that already ran Square here
    norm: str = LINF  # the evaluation's threat model: every probe attacks in its ball


@dataclass
class Side:
    """One side of a probe's test on some points (``idx``, indices into the evaluated set):
    robust flags and the attacks that ran."""

    idx: torch.Tensor
    flags: torch.Tensor
    ran: list[str] = field(default_factory=list)


def sample(n: int, seed: int) -> torch.Tensor:
    """The probed points: :data:`POINTS` of the n drawn at random with the evaluation's seed
    (a model cannot be honest on "the first points" only), in increasing order."""
    g = torch.Generator().manual_seed(derive_seed("probe", seed) % 2**63)
    return torch.randperm(n, generator=g)[:POINTS].sort().values


def _apply(
    model: nn.Module, xy: Any, p: Probe, side: Side, attack: tuple[str, dict[str, str]], on: Any
) -> None:
    """``attack`` on the side's points where ``on`` (a mask over them) holds: the points it
    breaks are no longer robust on that side."""
    x, y = xy
    local = on.nonzero().flatten()
    made = make_attack(*attack, p.norm)
    if len(local):
        ok = attack_points(model, made, x, y, side.idx[local], p.eps, p.seed)
        side.flags[local[~ok]] = False
    side.ran.append(made.display)


def _smooth(model: nn.Module, xy: Any, p: Probe, side: Side, samples: int) -> None:
    """Smoothed PGD (:func:`bench.evaluation.remedies.smoothed_pgd`, ``samples`` noisy copies
    a step) on the side's standing points."""
    x, y = xy
    local = side.flags.nonzero().flatten()
    if len(local):
        at = side.idx[local]
        ok = remedies.smoothed_pgd(model, x[at], y[at], p.eps, p.seed, samples, p.norm)
        side.flags[local[~ok]] = False
    side.ran.append(f"smoothed-pgd[samples={samples}]")


def _square(queries: int) -> tuple[str, dict[str, str]]:
    return ("square", {"n_queries": str(queries), "p_init": str(P_INIT)})


def _clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return predict(model, x[idx]) == y[idx].cpu()


def _white(p: Probe, idx: torch.Tensor) -> Side:
    return Side(idx, p.whitebox[idx].cpu().clone(), list(p.names))  # type: ignore[index]


def _black_box_sides(
    model: nn.Module, xy: Any, p: Probe, idx: torch.Tensor, escalate: bool | None
) -> tuple[Side, Side | None, bool]:
    """Square (and the strengthened white-box side) on the points ``idx``; ``escalate``: None
    to decide from the evidence here, else as decided on the sample. Returns the two sides and
    whether they escalated."""
    x, y = xy
    box = Side(idx, _clean(model, x, y, idx))
    _apply(model, xy, p, box, _square(QUERIES), box.flags.clone())
    if p.whitebox is None:
        return box, None, False
    white = _white(p, idx)
    evidence = escalate is None and _test(Check.BLACK_BOX_PROBE, box, white).flagged
    if not p.margin:
        _apply(model, xy, p, white, DLR, white.flags.clone())
    _smooth(model, xy, p, white, remedies.SMOOTH_SAMPLES)
    if escalate is None:
        escalate = evidence or _test(Check.BLACK_BOX_PROBE, box, white).flagged
    if escalate:
        _apply(model, xy, p, white, CE, white.flags.clone())
        _smooth(model, xy, p, white, remedies.SMOOTH_SAMPLES_ESCALATED)
        _apply(model, xy, p, box, _square(ESCALATED_QUERIES), box.flags & white.flags)
    return box, white, escalate


def black_box(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: Probe) -> dg.Finding:
    """Square with :data:`QUERIES` queries on :func:`sample`'s points at ``p.eps``, against the
    white-box attacks strengthened by APGD-DLR (unless a margin loss already ran) and smoothed
    PGD. Where Square is significantly ahead of the user's attacks, or of the strengthened ones,
    both sides escalate on the points still in question: APGD-CE and smoothed PGD on 64 samples
    a step on the white-box side, Square with :data:`ESCALATED_QUERIES` on the black-box side;
    then the test decides. Significant corrections: the same attacks on every other point."""
    if p.covered:
        return _covered(p)
    idx = sample(len(x), p.seed)
    box, white, escalated = _black_box_sides(model, (x, y), p, idx, None)
    finding = _finish(Check.BLACK_BOX_PROBE, box, white, p)
    finding.details["escalated"] = escalated
    rest = _rest(p, idx)
    if _significant(finding) and not p.randomized and len(rest):
        box, white, _ = _black_box_sides(model, (x, y), p, rest, escalated)
        _extend(finding, box, white, p)
    return finding


def _covered(p: Probe) -> dg.Finding:
    """No probe where the evaluation's own attacks ran Square with more queries at this eps:
    their own check tests it against the white-box attacks."""
    check = Check.BLACK_BOX_PROBE
    summary = (
        f"{p.covered} ran Square at eps {p.eps:.4g} with at least {QUERIES} queries: it is the "
        "black-box probe here, tested by its own check (autoattack-checks, square-vs-whitebox)"
    )
    details = {"eps": p.eps, "whitebox_attacks": list(p.names), "covered_by": p.covered}
    return dg.Finding(check, False, dg.SOURCES[check], summary, details, "None needed.")


def _transfer_sides(
    model: nn.Module, xy: Any, p: Probe, idx: torch.Tensor, decide: bool
) -> tuple[Side, Side | None]:
    """The surrogate's examples on the points ``idx``; where they lead (``decide``: test here,
    else always), APGD-CE and APGD-DLR on the points only they broke."""
    x, y = xy
    pgd = make_attack("pgd", norm=p.norm)
    x_adv = pgd.run(p.surrogate, x[idx], y[idx], p.eps, p.seed, index=idx)
    check_budget(x[idx].to(x_adv.device), x_adv, p.eps, attack="transfer[pgd]", norm=p.norm)
    ok = _clean(model, x, y, idx) & (predict(model, x_adv) == y[idx].cpu())
    box = Side(idx, ok, ["transfer[pgd]"])
    if p.whitebox is None:
        return box, None
    white = _white(p, idx)
    if not decide or _test(Check.TRANSFER, box, white).flagged:
        for attack in (CE, DLR):
            _apply(model, xy, p, white, attack, white.flags & ~box.flags)
    return box, white


def transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: Probe) -> dg.Finding:
    """bench's PGD crafted on ``p.surrogate`` on :func:`sample`'s points, replayed; where it is
    significantly ahead, APGD-CE and APGD-DLR attack the points only it broke. Significant
    corrections: the same on every other point."""
    idx = sample(len(x), p.seed)
    box, white = _transfer_sides(model, (x, y), p, idx, True)
    finding = _finish(Check.TRANSFER, box, white, p)
    rest = _rest(p, idx)
    if _significant(finding) and not p.randomized and len(rest):
        box, white = _transfer_sides(model, (x, y), p, rest, False)
        _extend(finding, box, white, p)
    return finding


def _rest(p: Probe, idx: torch.Tensor) -> torch.Tensor:
    """The points not probed that every attack left standing."""
    left = p.worst.cpu().clone()
    left[idx] = False
    return left.nonzero().flatten()


def _significant(f: dg.Finding) -> bool:
    return any(v["significant"] for v in f.details.get("overstated", {}).values())


def _broken(box: Side, white: Side | None, p: Probe) -> list[int]:
    """Indices (into the evaluated set) of the points either side broke that every attack of
    the evaluation had left standing."""
    standing = box.flags if white is None else box.flags & white.flags
    worst = p.worst[box.idx].cpu()
    return box.idx[worst & ~standing].tolist()


def _extend(finding: dg.Finding, box: Side, white: Side | None, p: Probe) -> None:
    """The corrections found on the points not probed, added to the finding's."""
    broken = _broken(box, white, p)
    remedies.record(finding, p.eps, broken, len(box.idx))
    finding.details["extended_to"] = len(box.idx)
    finding.summary += (
        f"; significant, so run on the {len(box.idx)} other points every attack left: "
        f"{len(broken)} broken"
    )


def _test(check: str, box: Side, white: Side) -> dg.Finding:
    """McNemar's exact test of the probe's side against the white-box side, at the check's
    level (the transfer check shares its level with the transfer matrix): flagged if the probe
    breaks significantly more points."""
    alpha = stats.level(check, 2 if check == Check.TRANSFER else 1)
    name, strong = "+".join(box.ran), "+".join(white.ran)
    flagged, summary, details = dg.paired(name, box.flags, strong, white.flags, alpha)
    return dg.Finding(check, flagged, dg.SOURCES[check], summary, details, _advice(flagged))


def _finish(check: str, box: Side, white: Side | None, p: Probe) -> dg.Finding:
    """The finding (its test, or the probe alone where no white-box attack ran) and its
    corrections: every point either side broke that every attack had left standing (none for
    a randomized model)."""
    if white is None:
        finding = _unpaired(check, "+".join(box.ran), box.flags)
    else:
        finding = _test(check, box, white)
    finding.details["eps"] = p.eps
    finding.details["whitebox_attacks"] = list(p.names)
    finding.details["points"] = len(box.idx)
    broken = [] if p.randomized else _broken(box, white, p)
    left = int(p.worst[box.idx].sum())
    remedies.record(finding, p.eps, broken, left)
    finding.summary += f"; the probes broke {len(broken)} of the {left} points every attack left"
    return finding


def _advice(flagged: bool) -> str:
    if not flagged:
        return "None needed."
    return (
        "The white-box attacks fail where an attack without the model's gradients succeeds: "
        "the gradients mislead (obfuscated gradients). Use adaptive attacks (BPDA, EOT, a "
        "surrogate's gradients) and report the worst case with Square's full budget."
    )


def _unpaired(check: str, name: str, flags: torch.Tensor) -> dg.Finding:
    """Where no white-box attack ran (the input leaves the graph): nothing to compare; the
    probe's breaks still correct the number."""
    n = len(flags)
    summary = f"{name} {100 * int(flags.sum()) / max(n, 1):.1f}% robust on {n} points"
    details = {"n": n, "weak": name, "strong": "", "weak_acc": int(flags.sum()) / max(n, 1)}
    return dg.Finding(check, False, dg.SOURCES[check], summary, details, "None needed.")


def _digest(flags: torch.Tensor | None) -> str | None:
    if flags is None:
        return None
    return hashlib.sha256(bytes(flags.cpu().to(torch.uint8).tolist())).hexdigest()[:16]


def context(p: Probe) -> dict[str, Any]:
    """What a probe's finding depends on besides the weights, n and eps: the seed, the probe's
    budget, the white-box attacks compared and their flags (so a rerun with other batches, walk
    or grid probes again), the worst case's flags, and the surrogate's weights."""
    return {
        "seed": p.seed,
        "points": POINTS,
        "queries": [QUERIES, ESCALATED_QUERIES],
        "margin": p.margin,
        "randomized": p.randomized,
        "covered": p.covered,
        "whitebox": list(p.names),
        "whitebox_flags": _digest(p.whitebox),
        "worst_flags": _digest(p.worst),
        "surrogate": fingerprint_model(p.surrogate) if p.surrogate is not None else None,
    } | ({} if p.norm == LINF else {"norm": p.norm})  # Linf: the context stored before norms


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: Probe) -> list[dg.Finding]:
    """The black-box probe, and the transfer probe where there is a surrogate."""
    out = [black_box(model, x, y, p)]
    if p.surrogate is not None:
        out.append(transfer(model, x, y, p))
    return out
