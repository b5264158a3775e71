"""What the always-on probes cost beside an evaluation with FGSM, PGD and standard AutoAttack:
each checkpoint evaluated with them at eps 0 and ``--eps`` on the first ``--n`` test points, in
this process, timing every pipeline step (``Evaluation.seconds``). There, AutoAttack's own
Square is the black-box probe, and the probes cost only the transfer probe (none without a
surrogate). Then the probes in full, as when no AutoAttack is named (Square, the white-box side
strengthened, transfer from the folder's standard checkpoint), are timed right after on the same
points. Each share is over the evaluation's seconds; the target is at most 10%. Usage::

    python scripts/probe_cost.py --checkpoints checkpoints/quick [--n 200] [--eps 0.1]
        [--json docs/probe-cost-cpu.json]

Both sides run in the same process, one after the other per checkpoint, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import paths
from bench.attacks import make_attack
from bench.checkpoint import find_checkpoints
from bench.evaluation import audit, probes
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.targets import prepare_target
from bench.evaluation.walk import text_flags
from bench.params import parse_eps
from bench.sources import from_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def measure(
    ckpt: Path, n: int, eps: float, data_dir: Path, surrogate: torch.nn.Module | None
) -> dict[str, object]:
    """One checkpoint: the evaluation with FGSM, PGD and standard AutoAttack at eps 0 and
    ``eps`` (seconds of every step but the probes), then the probes in full as they run when no
    AutoAttack is in the list (Square, APGD-DLR and smoothed PGD on the white-box side against
    FGSM and PGD, transfer from ``surrogate``), timed in the same process right after."""
    attacks = [make_attack("fgsm"), make_attack("pgd"), make_attack("autoattack")]
    settings = Settings(
        attacks, [0.0, eps], 500, 0, fresh=True, progress=False, transfer_from=surrogate
    )
    target = prepare_target(ckpt, n, data_dir)
    ev = evaluate_target(target, settings)
    rest = sum(ev.seconds.values()) - ev.seconds.get("probes", 0.0)
    whitebox, names = audit.whitebox_worst(
        [r for r in ev.results if r.attack.name != "autoattack"], eps
    )
    worst = text_flags(ev.worst[-1].flags)
    probe = probes.Probe(eps, whitebox, names, worst, 0, surrogate)
    t0 = time.perf_counter()
    found = probes.run(target.model, target.x, target.y, probe)
    full = time.perf_counter() - t0
    return {
        "checkpoint": ckpt.name,
        "seconds": {k: round(v, 2) for k, v in ev.seconds.items()},
        "evaluation_s": round(rest, 2),
        "probes_in_evaluation_s": round(ev.seconds.get("probes", 0.0), 2),
        "probes_full_s": round(full, 2),
        "share_full": round(full / rest, 4) if rest else None,
        "escalated": [bool(f.details.get("escalated")) for f in found],
        "flagged": [f.check for f in found if f.flagged],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", required=True, help="a folder of bench checkpoints")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="write the measurements here")
    args = ap.parse_args()
    eps = parse_eps(args.eps, "--eps")
    data_dir = paths.data_dir(args.data_dir)
    started = time.perf_counter()
    ckpts = find_checkpoints(Path(args.checkpoints))
    standard = [c for c in ckpts if "standard" in c.name]
    surrogate = from_checkpoint(standard[0]).model.eval() if standard else None
    rows = [measure(c, args.n, eps, data_dir, surrogate) for c in ckpts]
    full = sum(float(r["probes_full_s"]) for r in rows)  # type: ignore[arg-type]
    inside = sum(float(r["probes_in_evaluation_s"]) for r in rows)  # type: ignore[arg-type]
    rest = sum(float(r["evaluation_s"]) for r in rows)  # type: ignore[arg-type]
    out = {
        "n": args.n,
        "eps": args.eps,
        "attacks": "fgsm, pgd, autoattack (standard)",
        "surrogate": standard[0].name if standard else None,
        "rows": rows,
        "evaluation_s": round(rest, 1),
        "probes_in_evaluation_s": round(inside, 1),
        "share_in_evaluation": round(inside / rest, 4) if rest else None,
        "probes_full_s": round(full, 1),
        "share_full": round(full / rest, 4) if rest else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    for r in rows:
        print(
            f"{r['checkpoint']}: evaluation {r['evaluation_s']} s, probes in it "
            f"{r['probes_in_evaluation_s']} s, full probes {r['probes_full_s']} s "
            f"({r['share_full']}), escalated {r['escalated']}, flagged {r['flagged']}"
        )
    print(
        f"all: evaluation {out['evaluation_s']} s; probes in it "
        f"{out['probes_in_evaluation_s']} s = {out['share_in_evaluation']}; full probes "
        f"{out['probes_full_s']} s = {out['share_full']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
