"""bench's false-alarm rate on honest models, as ``bench quick`` measures it: the quick benchmark
once per seed, then a strong reference attack on every evaluation the checks flagged.

    .venv/bin/python scripts/false_alarms.py [--seeds 0,1,2] [--work DIR] [--reuse]
        [--defenses standard,fgsm-at] [--n 200] [--epochs 3] [--train-limit 10000]
        [--reference-n N] [--reference-all] [--data-dir DIR] [--device cpu]
        [--json docs/false-alarms.json]

1. Per seed S: ``bench quick --seed S`` into ``<work>/S/{checkpoints,reports,results.sqlite}``
   (``--n``, ``--epochs``, ``--train-limit``, ``--defenses`` passed through when given). Without
   ``--work`` the work directory is a fresh temporary one, deleted at the end.
2. Each seed's store is read as ``bench report`` reads it (:func:`bench.report.model.load`): one
   evaluation per checkpoint, its findings (check, flagged, the eps its details name, the
   status: passed, corrected or flagged), ``unreliable`` as the report decides it, and whether the
   leaderboard ranks every checkpoint.
3. Every unreliable evaluation (every evaluation with ``--reference-all``) is attacked again at
   each flagged finding's eps (an eps the evaluation has; else the grid's largest) on the same
   first points: standard AutoAttack, APGD-CE and APGD-DLR with 5 restarts each, Square with
   10,000 queries (:data:`REFERENCE_RUNS`, through ``bench.evaluate_model``). The reference's
   worst case is the per-point AND of its runs' worst cases.
4. Verdict (:func:`is_true_alarm`): TRUE when the reference's robust accuracy lies below the lower
   end of the reported worst case's 95% Wilson interval (on the same points), FALSE otherwise. A
   model that really masks gradients (e.g. FGSM training that collapsed) is a true alarm: the
   reference breaks it.

False-alarm rate = false alarms / (evaluations - confirmed alarms): the share of the evaluations
not shown to overstate robustness that were flagged anyway, with its Wilson 95% interval.
Writes the JSON (default docs/false-alarms.json) and prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bench.evaluation.results import Estimate, estimate, status, wilson
from bench.params import format_eps
from bench.report import model as report
from bench.store import Store, eps_key

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "docs" / "false-alarms.json"
#: The strong reference, as ``bench.evaluate_model`` calls: (attacks, params). Two calls because
#: one call takes each attack name once (APGD-CE and APGD-DLR are both ``apgd``).
REFERENCE_RUNS: tuple[tuple[tuple[str, ...], dict[str, dict[str, Any]]], ...] = (
    (
        ("autoattack", "apgd", "square"),
        {
            "autoattack": {"version": "standard"},
            "apgd": {"loss": "ce", "n_restarts": 5},
            "square": {"n_queries": 10000},
        },
    ),
    (("apgd",), {"apgd": {"loss": "dlr", "n_restarts": 5}}),
)
PASS_THROUGH = ("n", "epochs", "train_limit", "defenses")  # flags handed to bench quick as given


# ------------------------------------------------------------------------------ the stores


@dataclass
class FindingInfo:
    """One finding of one evaluation: its check, whether it flags, the eps its details name (a
    comparison's or AutoAttack warning's ``eps``, a walk-inference's ``inferred_eps``; None if
    none) and its status (passed, corrected or flagged)."""

    check: str
    key: str
    flagged: bool
    eps: float | None
    status: str | None


@dataclass
class EvalInfo:
    """One evaluation (one checkpoint, its n points) as the report sees it."""

    run_id: str
    defense: str
    seed: Any
    dataset: str
    path: str
    n: int
    unreliable: bool
    catastrophic_overfitting: bool
    findings: list[FindingInfo]
    worst: dict[int, str]  # eps key -> worst-case robust flags over every attack run there
    eps: dict[int, float]  # eps key -> eps (pixel scale)
    ranked: bool = False
    rank_reason: str = ""

    @property
    def flagged_checks(self) -> list[str]:
        """Names of the checks with a flagged finding, sorted, each once."""
        return sorted({f.check for f in self.findings if f.flagged})

    @property
    def statuses(self) -> dict[str, list[str]]:
        """Check -> the statuses of its findings (passed, corrected, flagged)."""
        out: dict[str, list[str]] = {}
        for f in self.findings:
            if f.status is not None:
                out.setdefault(f.check, []).append(f.status)
        return out

    def reference_eps(self) -> list[float]:
        """Where the reference attacks: each flagged finding's eps if this evaluation has it,
        else the largest eps of its grid (also when nothing flags); sorted, each once."""
        largest = max(self.eps)
        keys = {largest} if not any(f.flagged for f in self.findings) else set()
        for f in self.findings:
            if f.flagged:
                k = eps_key(f.eps) if f.eps is not None else largest
                keys.add(k if k in self.eps else largest)
        return [self.eps[k] for k in sorted(keys)]


def finding_eps(details: dict[str, Any]) -> float | None:
    """The eps a finding's details name: ``eps``, else ``inferred_eps``; None if neither."""
    for name in ("eps", "inferred_eps"):
        value = details.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def eval_info(m: report.Model) -> EvalInfo:
    """The report's model as an :class:`EvalInfo` (its findings are already those of its n)."""
    findings = [
        FindingInfo(
            f.check,
            f.key,
            f.flagged,
            finding_eps(f.details),
            status(f.flagged, f.details),
        )
        for f in m.findings
    ]
    return EvalInfo(
        run_id=m.run_id,
        defense=m.run.defense,
        seed=m.seed,
        dataset=m.run.dataset,
        path=m.run.path,
        n=m.n,
        unreliable=m.unreliable,
        catastrophic_overfitting="catastrophic-overfitting" in m.flags,
        findings=findings,
        worst={k: w.flags for k, w in m.worst.items()},
        eps={k: w.eps for k, w in m.worst.items()},
    )


def read_store(db: Path) -> list[EvalInfo]:
    """Every evaluation of a store, with whether the leaderboard (default ranking) ranks it."""
    out = []
    with Store(db, readonly=True) as store:
        sets = report.load(store)
    for _, (key, models) in sets.items():
        infos = {m.run_id: eval_info(m) for m in models}
        for r in report.rank(report.entries(models), key):
            for m in r.entry.models:
                infos[m.run_id].ranked = r.place is not None
                infos[m.run_id].rank_reason = r.reason
        out += list(infos.values())
    return out


# ------------------------------------------------------------------------- the reference


def is_true_alarm(reported: Estimate, reference: Estimate) -> bool:
    """TRUE alarm when the reference's robust accuracy lies below the lower end of the reported
    worst case's 95% Wilson interval; else FALSE (the reference did not lower it beyond it)."""
    return reference.acc < reported.interval[0]


def and_flags(a: str | None, b: str) -> str:
    """Per-point AND of two '0'/'1' flag strings (``a`` None: ``b`` itself)."""
    if a is None:
        return b
    return "".join("1" if x == "1" and y == "1" else "0" for x, y in zip(a, b))


def run_reference(
    ev: EvalInfo, n: int, seed: int, data_dir: str | None, device: str | None
) -> tuple[dict[int, str], dict[str, dict[str, float]], float]:
    """The reference on the first ``n`` points at :meth:`EvalInfo.reference_eps`: worst-case
    flags by eps key (AND over :data:`REFERENCE_RUNS`), each attack's accuracy in % by eps, and
    the wall time in seconds."""
    import bench  # here: torch is only needed when a reference runs
    from bench.sources import from_checkpoint

    t0 = time.perf_counter()
    model = from_checkpoint(ev.path).model
    worst: dict[int, str] = {}
    accs: dict[str, dict[str, float]] = {}
    for attacks, params in REFERENCE_RUNS:
        result = bench.evaluate_model(
            model,
            dataset=ev.dataset,
            n=n,
            attacks=list(attacks),
            params=params,
            eps=ev.reference_eps(),
            name=ev.run_id,
            seed=seed,
            device=device,
            data_dir=data_dir,
        )
        for w in result.worst:
            worst[eps_key(w.eps)] = and_flags(worst.get(eps_key(w.eps)), w.flags)
        for r in result.results:
            by_eps = accs.setdefault(r.attack.display, {})
            for e, f in zip(r.eps, r.flags):
                by_eps[format_eps(e)] = round(100 * int(f.sum()) / len(f), 2)  # %
    return worst, accs, time.perf_counter() - t0


def judge(ev: EvalInfo, reference: dict[int, str], n: int) -> tuple[bool, list[dict[str, Any]]]:
    """Per reference eps: the reported worst case on the same first ``n`` points, the
    reference's, their AND; the verdict is TRUE if any eps gives a true alarm."""
    rows, true = [], False
    for k, ref_flags in sorted(reference.items()):
        if k not in ev.worst:
            continue
        reported, ref = estimate(ev.worst[k][:n]), estimate(ref_flags)
        hit = is_true_alarm(reported, ref)
        true |= hit
        rows.append(
            {
                "eps": ev.eps[k],
                "eps_text": format_eps(ev.eps[k]),
                "reported": reported.as_dict(),
                "reference": ref.as_dict(),
                "combined": estimate(and_flags(ev.worst[k][:n], ref_flags)).as_dict(),
                "true_alarm": hit,
            }
        )
    return true, rows


# --------------------------------------------------------------------------- quick runs


def quick_command(args: argparse.Namespace, seed: int, work: Path) -> list[str]:
    """``bench quick`` for one seed into ``work``, with the pass-through flags that were given."""
    cmd = [sys.executable, "-m", "bench", "quick", "--seed", str(seed)]
    cmd += ["--checkpoints", str(work / "checkpoints"), "--out", str(work / "reports")]
    cmd += ["--db", str(work / "results.sqlite")]
    for name in PASS_THROUGH:
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    for name in ("data_dir", "device"):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd


def run_quick(args: argparse.Namespace, seed: int, work: Path) -> float | None:
    """One quick benchmark (its stdout to our stderr); wall time in seconds, None if reused."""
    if args.reuse and (work / "results.sqlite").is_file():
        print(f"false_alarms: seed {seed}: reusing {work / 'results.sqlite'}", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    subprocess.run(quick_command(args, seed, work), check=True, stdout=sys.stderr)
    return time.perf_counter() - t0


def evaluation_record(
    ev: EvalInfo, args: argparse.Namespace, seed: int
) -> tuple[dict[str, Any], float]:
    """One evaluation's JSON record, with its reference and verdict when it gets one; the
    reference's wall time in seconds (0 when none ran)."""
    rec: dict[str, Any] = {
        "run_id": ev.run_id,
        "defense": ev.defense,
        "seed": ev.seed,
        "n": ev.n,
        "unreliable": ev.unreliable,
        "catastrophic_overfitting": ev.catastrophic_overfitting,
        "ranked": ev.ranked,
        "rank_reason": ev.rank_reason,
        "flagged_checks": ev.flagged_checks,
        "statuses": ev.statuses,
        "findings": [vars(f) for f in ev.findings],
        "reference": None,
        "verdict": None,
    }
    if not (ev.unreliable or args.reference_all):
        return rec, 0.0
    n = min(ev.n, args.reference_n) if args.reference_n else ev.n
    worst, accs, seconds = run_reference(ev, n, seed, args.data_dir, args.device)
    true, rows = judge(ev, worst, n)
    rec["reference"] = {"n": n, "seconds": round(seconds, 1), "at": rows, "attacks": accs}
    if ev.unreliable:
        rec["verdict"] = "true alarm" if true else "false alarm"
    else:  # --reference-all: an unflagged evaluation the reference breaks is a missed alarm
        rec["verdict"] = "missed" if true else "clean"
    return rec, seconds


# ----------------------------------------------------------------------------- summaries


def rate(false: int, honest: int) -> dict[str, Any]:
    """False alarms among the honest evaluations, in %, with the Wilson 95% interval."""
    lo, hi = wilson(false, honest)
    return {
        "false_alarms": false,
        "honest": honest,
        "rate": round(100 * false / honest, 2) if honest else None,
        "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
    }


def summarise(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts over evaluation records: evaluations, unreliable, flags per check (evaluations
    with a flagged finding of it), statuses, confirmed and false alarms, the false-alarm rate."""
    records = list(records)
    per_check: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for r in records:
        for check in r["flagged_checks"]:
            per_check[check] = per_check.get(check, 0) + 1
        for values in r["statuses"].values():
            for s in values:
                statuses[s] = statuses.get(s, 0) + 1
    confirmed = sum(1 for r in records if r["verdict"] == "true alarm")
    false = sum(1 for r in records if r["verdict"] == "false alarm")
    return {
        "evaluations": len(records),
        "unreliable": sum(1 for r in records if r["unreliable"]),
        "flags_per_check": dict(sorted(per_check.items())),
        "statuses": dict(sorted(statuses.items())),
        "confirmed": confirmed,
        "false_alarms": false,
        "unjudged": sum(1 for r in records if r["unreliable"] and r["verdict"] is None),
        "missed": sum(1 for r in records if r["verdict"] == "missed"),
        "false_alarm_rate": rate(false, len(records) - confirmed),
        "all_ranked": all(r["ranked"] for r in records),
    }


def _rate_text(s: dict[str, Any]) -> str:
    r = s["false_alarm_rate"]
    if r["rate"] is None:
        return "-"
    return f"{r['rate']:.1f}% [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"


def table(seeds: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """The markdown table: one row per seed, then all seeds."""
    head = (
        "| seed | evaluations | unreliable | flags per check | confirmed | false alarms "
        "| false-alarm rate (95% CI) | leaderboard ranks all |"
    )
    lines = [head, "|---|---:|---:|---|---:|---:|---|---|"]
    for label, s in [*((str(x["seed"]), x["summary"]) for x in seeds), ("all", totals)]:
        checks = ", ".join(f"{c} {k}" for c, k in s["flags_per_check"].items()) or "-"
        lines.append(
            f"| {label} | {s['evaluations']} | {s['unreliable']} | {checks} | {s['confirmed']} "
            f"| {s['false_alarms']} | {_rate_text(s)} | {'yes' if s['all_ranked'] else 'no'} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where it ran: CPU count, torch version, platform, date."""
    import torch  # here: only for its version

    return {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of quick seeds (default 0,1,2)")
    p.add_argument("--work", help="work directory, kept (default: a temporary one, deleted)")
    p.add_argument(
        "--reuse", action="store_true", help="skip quick for a seed whose store already exists"
    )
    p.add_argument("--defenses", help="bench quick --defenses (default: quick's, every one)")
    p.add_argument("--n", type=int, help="bench quick --n (default: quick's)")
    p.add_argument("--epochs", type=int, help="bench quick --epochs (default: quick's)")
    p.add_argument("--train-limit", type=int, help="bench quick --train-limit (default: quick's)")
    p.add_argument("--data-dir", help="bench's --data-dir (default: bench's own rules)")
    p.add_argument("--device", help="bench's --device (default: bench's own rule)")
    p.add_argument(
        "--reference-n",
        type=int,
        help="attack at most the first N points in the reference (default: all of quick's n)",
    )
    p.add_argument(
        "--reference-all",
        action="store_true",
        help="run the reference on unflagged evaluations too (an unflagged evaluation it breaks "
        "is counted as missed)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="default docs/false-alarms.json")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seed_list:
        p.error("--seeds names no seed")
    if args.reference_n is not None and args.reference_n < 1:
        p.error("--reference-n must be >= 1")
    for seed in args.seed_list if args.work and not args.reuse else []:
        db = Path(args.work).resolve() / str(seed) / "results.sqlite"
        if db.exists():  # quick would add to it: runs of an earlier, other quick would stay
            p.error(f"{db} exists: pass --reuse to read it as it is, or a new --work")
    return args


def one_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """Quick, then the store read and the references run, for one seed."""
    quick_s = run_quick(args, seed, work)
    records, reference_s = [], 0.0
    for ev in read_store(work / "results.sqlite"):
        rec, seconds = evaluation_record(ev, args, seed)
        records.append(rec)
        reference_s += seconds
    return {
        "seed": seed,
        "work": str(work),
        "quick_s": None if quick_s is None else round(quick_s, 1),
        "reference_s": round(reference_s, 1),
        "evaluations": records,
        "summary": summarise(records),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-false-alarms-") as scratch:
        root = Path(args.work).resolve() if args.work else Path(scratch)
        seeds = [one_seed(args, s, root / str(s)) for s in args.seed_list]
    totals = summarise(r for s in seeds for r in s["evaluations"])
    doc = {
        "settings": {
            "seeds": args.seed_list,
            "work": args.work,  # None: a temporary directory, deleted at the end
            **{k: getattr(args, k) for k in PASS_THROUGH},
            "reference_n": args.reference_n,
            "reference_all": args.reference_all,
            "reference": [{"attacks": list(a), "params": p} for a, p in REFERENCE_RUNS],
            "verdict": "true alarm when the reference's robust accuracy < the lower end of the "
            "reported worst case's Wilson 95% interval on the same points",
            "false_alarm_rate": "false alarms / (evaluations - confirmed alarms)",
        },
        "seeds": seeds,
        "totals": totals,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(seeds, totals))
    print(f"\nwall time {doc['wall_s']:.0f} s; written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
