"""The one evaluation pipeline: the stages of evaluating one model, written once, as a generator
over plain data. Every entry point runs it (``bench eval``, ``bench.evaluate_model``,
``bench quick``, ``bench sweep``); an executor drives it (:mod:`bench.evaluation.local` in this
process, :mod:`bench.evaluation.ray_executor` on Ray) by doing the work each :class:`Step` asks
for and sending back the results. The pipeline itself touches only the store (through its
:class:`~bench.evaluation.book.Book`) and plain data, so the executors give the same rows, flags
and findings.

Stages, in order:

1. claim: the model's run row.
2. cheap checks (randomized outputs, probabilities, gradients; stored ones reused unless fresh).
3. adapt: the attacks the cheap findings call for (AutoAttack rand and EOT-PGD for a randomized
   model; Square alone where the input leaves the graph).
4. walk: every attack over the eps grid, shard by shard of the fixed batches; each shard's
   flags and AutoAttack warnings are stored as it arrives.
5. rows: each (attack, eps) step's result row; the worst case over attacks.
6. comparisons between the attacks that ran (free, on the flags); a stale walk-inference
   finding dropped.
7. walk-inference: points inferred robust attacked directly (after a down or bisect walk), and
   where that breaks any, at every inferred eps (the remedy).
8. probes (always): Square with a small query budget, and transfer from a surrogate where there
   is one, against the white-box attacks (:mod:`bench.evaluation.probes`).
9. costly checks (``diagnose``): large budget, loss trace and its remedy (APGD on the points
   still improving).
10. corrections: every point a remedy or probe broke lowers the worst case
    (:func:`bench.evaluation.results.corrected`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator

from tqdm import tqdm

from bench.evaluation import audit, probes, work
from bench.evaluation.book import Book
from bench.evaluation.outcome import Evaluation
from bench.evaluation.plan import Plan, check_plan
from bench.evaluation.results import corrected, corrections, worst_case
from bench.evaluation.walk import GridResult, flag_text, text_flags
from bench.vocab import Check


@dataclass
class Step:
    """Work the pipeline waits for: items an executor does (in any order, in parallel), and what
    to do on the driver with each result as it arrives; the results come back in item order."""

    name: str
    items: list[Any]
    each: Callable[[Any], None] | None = None


Pipeline = Generator[Step, list[Any], Evaluation]


def _say(run_id: str) -> Callable[[str], None]:
    return lambda line: tqdm.write(f"bench: {run_id}: {line}", file=sys.stderr)


def evaluation(plan: Plan, book: Book, say: Callable[[str], None] | None = None) -> Pipeline:
    """The stages of one evaluation (see the module docstring); returns the :class:`Evaluation`."""
    check_plan(plan)
    say = say or _say(plan.target.run_id)
    ran: list[str] = []
    book.claim()
    cheap = yield from _cheap(plan, book, ran)
    attacks, note = audit.adapt(plan.settings.attacks, cheap)
    if note:
        say(note)
    book.attacks = attacks
    settings = replace(plan.settings, attacks=attacks)
    yield from _walk(book, settings, ran)
    clean = book.clean()
    if clean is None:  # every step was stored before and the grid has no eps 0
        [clean] = yield Step("clean", [work.Clean()])
    results = book.finish(clean)
    rows = [book.row(a, e) for a in attacks for e in settings.eps_grid]
    worst = worst_case([r for r in rows if r is not None], flag_text(clean))
    ev = Evaluation(
        plan.target,
        settings,
        clean,
        results,
        worst,
        list(cheap),
        book.warnings,
        note,
        ran,
        book.device(),
    )
    ev.findings += yield from _after(plan, book, ev, cheap)
    ev.worst = corrected(ev.worst, corrections(ev.findings))
    return ev


def _cheap(plan: Plan, book: Book, ran: list[str]) -> Generator[Step, list[Any], list[Any]]:
    """The cheap checks' findings: stored for these weights and n, else run and stored."""
    stored = None if plan.settings.fresh else book.stored_cheap()
    if stored is not None:
        return stored
    [found] = yield Step("cheap", [work.Cheap()])
    book.write_findings(found)
    ran.append("cheap")
    return found


def _walk(book: Book, s: Any, ran: list[str]) -> Generator[Step, list[Any], None]:
    """The shards not yet stored, each kept in the store as it arrives."""
    shards = [
        work.Shard(s.attacks, which, k0, k1, list(s.eps_grid), s.batch_size, s.seed, s.walk)
        for k0, k1, which in book.pending()
    ]
    if shards:
        yield Step("walk", shards, each=book.write_shard)
        ran.append("walk")


def _after(
    plan: Plan, book: Book, ev: Evaluation, cheap: list[Any]
) -> Generator[Step, list[Any], list[Any]]:
    """Comparisons, walk-inference, and the costly checks with ``diagnose``; each stored."""
    found = audit.compare(ev.results)
    book.write_findings(found)
    book.drop_stale_inference(ev.results)
    found += yield from _inference(plan, book, ev.results, cheap, ev.ran)
    found += yield from _probes(plan, book, ev)
    if plan.settings.diagnose and ev.worst:
        top = ev.worst[-1]
        s = plan.settings
        item = work.Costly(top.eps, text_flags(top.flags), s.seed, s.norm)
        [costly] = yield Step("costly", [item])
        book.write_findings(costly)
        ev.ran.append("costly")
        found += costly
    return found


def _inference(
    plan: Plan, book: Book, results: list[GridResult], cheap: list[Any], ran: list[str]
) -> Generator[Step, list[Any], list[Any]]:
    """The walk-inference check where a walk inferred flags: its stored finding when nothing was
    walked now, else run (by the walk's own attack where gradients are unavailable)."""
    if audit.inference_key(results) is None:
        return []
    if not ran and not plan.settings.fresh:
        stored = book.stored_inference(results)
        if stored is not None:
            return stored
    no_grad = results[0].attack if audit.graph_cut(cheap) and results else None
    [found] = yield Step("inference", [work.Inference(results, plan.settings.seed, no_grad)])
    audit.stamp_inference(found, book.inference_context(results))
    book.write_findings(found)
    ran.append("inference")
    return found


def _probes(plan: Plan, book: Book, ev: Evaluation) -> Generator[Step, list[Any], list[Any]]:
    """The always-on probes at the grid's largest eps: stored ones reused when no flags were
    walked now, else run and stored."""
    top = [w for w in ev.worst if w.eps > 0]
    if not top:
        return []
    s = plan.settings
    whitebox, names = audit.whitebox_worst(ev.results, top[-1].eps)
    probe = probes.Probe(top[-1].eps, whitebox, names, text_flags(top[-1].flags), s.seed)
    probe.norm = s.norm
    probe.surrogate = s.transfer_from
    probe.margin = audit.has_margin_loss(ev.results, probe.eps)
    probe.randomized = audit.flagged(ev.findings, Check.RANDOMIZED)
    probe.covered = audit.black_box_cover(ev.results, probe.eps)
    context = probes.context(probe)
    if "walk" not in ev.ran and not s.fresh:
        stored = book.stored_probes(probe.eps, context)
        if stored is not None:
            return stored
    [found] = yield Step("probes", [work.Probes(probe)])
    for f in found:
        f.details["context"] = context
    book.write_findings(found)
    ev.ran.append("probes")
    return found
