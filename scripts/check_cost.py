"""What the always-on checks cost inside a `bench eval` with FGSM, PGD and standard AutoAttack.

    .venv/bin/python scripts/check_cost.py CHECKPOINT [--n 200] [--eps 0,8/255]

Runs one evaluation (no store) and times, inside it, the checks that run on every evaluation
(bench.evaluation.audit.cheap before the attacks, bench.evaluation.audit.compare after them)
against the whole.
"""

from __future__ import annotations

import argparse
import time

from bench.commands.eval import parse_attacks
from bench.evaluation import audit
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.targets import prepare_target
from bench.params import parse_eps_grid


def timed(fn, spent):  # type: ignore[no-untyped-def]
    def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eps", default="0,8/255")
    args = p.parse_args()
    spent: list[float] = []
    audit.cheap = timed(audit.cheap, spent)
    audit.compare = timed(audit.compare, spent)
    target = prepare_target(args.checkpoint, args.n)
    attacks = parse_attacks(["fgsm,pgd,autoattack"], [], "standard", None)
    t0 = time.perf_counter()
    evaluate_target(target, Settings(attacks, parse_eps_grid(args.eps), 500, 0, progress=False))
    total = time.perf_counter() - t0
    checks = sum(spent)
    print(
        f"evaluation {total:.1f} s, always-on checks {checks:.2f} s = {100 * checks / total:.2f}% "
        f"of the evaluation ({100 * checks / (total - checks):.2f}% added)"
    )


if __name__ == "__main__":
    main()
