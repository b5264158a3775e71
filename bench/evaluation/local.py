"""The in-process executor: runs the evaluation pipeline (:mod:`bench.evaluation.pipeline`) in
this process, on one device, with a progress bar and time estimates on stderr. The walk is one
shard of every batch, recorded batch by batch in the store as it goes (a killed run resumes
where it stopped). ``bench eval`` without ``--workers``, ``bench.evaluate_model`` and ``bench
quick`` run this.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

import torch
from tqdm import tqdm

from bench.attacks import Attack
from bench.evaluation import work
from bench.evaluation.book import Book
from bench.evaluation.outcome import Evaluation
from bench.evaluation.pipeline import Pipeline, Step, evaluation
from bench.evaluation.plan import Plan, Settings, check_plan, check_settings
from bench.evaluation.table import format_table
from bench.evaluation.targets import Target, prepare_target
from bench.evaluation.walk import DEFAULT_WALK, check_walk, max_tests
from bench.io import device_label
from bench.store import Store


def drive(pipeline: Pipeline, do: Any) -> Evaluation:
    """Run ``pipeline`` to its end, doing each step's work with ``do(step) -> results``; the
    wall seconds of each step's work go to the evaluation's ``seconds`` (by step name)."""
    seconds: dict[str, float] = {}
    step = next(pipeline)
    while True:
        t0 = time.perf_counter()
        results = do(step)
        seconds[step.name] = seconds.get(step.name, 0.0) + time.perf_counter() - t0
        try:
            step = pipeline.send(results)
        except StopIteration as stop:
            stop.value.seconds = seconds
            return stop.value


class Local:
    """Does a pipeline's steps here: the model on ``device``, the points of the plan's target."""

    def __init__(self, plan: Plan, book: Book, device: torch.device) -> None:
        self.plan, self.book, self.device = plan, book, device
        self.label = device_label(device)

    def __call__(self, step: Step) -> list[Any]:
        out = []
        for item in step.items:
            result = self.run(item)
            if step.each is not None:
                step.each(result)
            out.append(result)
        return out

    def run(self, item: Any) -> Any:
        t = self.plan.target
        if not isinstance(item, work.Shard):
            return work.execute(item, t.model, t.x, t.y, self.label)
        with self._bar(item) as bar:
            live = work.Live(
                self.book.recorder, bar, _Eta(self.plan) if self.plan.settings.progress else None
            )
            return work.execute(item, t.model, t.x, t.y, self.label, live)

    @contextlib.contextmanager
    def _bar(self, item: work.Shard) -> Iterator[Any]:
        """One tick per attack and eps > 0."""
        attacked = sum(1 for e in item.eps if e > 0)
        bar = tqdm(
            total=len(item.which) * attacked,
            desc=f"eval {self.plan.target.run_id}",
            unit="eps",
            file=sys.stderr,
            disable=not self.plan.settings.progress,
            dynamic_ncols=True,
            leave=False,
        )
        try:
            yield bar
        finally:
            bar.close()


class _Eta:
    """Prints, after the first batch of each attack, an upper bound on that attack's time left."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.seen = plan, set()

    def __call__(self, attack: Attack, eps: float, k: int, seconds: float) -> None:
        if attack.display in self.seen:
            return
        self.seen.add(attack.display)
        s = self.plan.settings
        steps = max_tests(s.walk, s.eps_grid)  # the most eps at which one point is attacked
        left = seconds * (steps * self.plan.batches() - 1)
        tqdm.write(
            f"bench: {self.plan.target.run_id}: {attack.display}: "
            f"first batch {seconds:.1f} s; at most "
            f"about {duration(left)} left for this attack (walk {s.walk}: each point attacked at "
            f"most {steps} times)",
            file=sys.stderr,
        )


def duration(seconds: float) -> str:
    """Seconds as a short readable duration."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def scratch_store() -> Iterator[Store]:
    """A store in a temporary directory, for an evaluation whose caller keeps no store: the
    pipeline always works through one."""
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        with Store(Path(tmp) / "results.sqlite") as store:
            yield store


def evaluate_target(
    target: Target,
    settings: Settings,
    device: torch.device | str = "cpu",
    store: Store | None = None,
    out: TextIO | None = None,
) -> Evaluation:
    """Evaluate one model in this process (see :mod:`bench.evaluation.pipeline`); rows and
    findings go to ``store`` as they finish (a scratch store when None). Prints a table with 95%
    intervals and flags on ``out`` when given."""
    plan = Plan(target, settings)
    check_plan(plan)
    device = torch.device(device)
    target.source.model = target.model.to(device).eval()
    with contextlib.ExitStack() as stack:
        db = store if store is not None else stack.enter_context(scratch_store())
        book = Book(db, plan, devices=[device_label(device)])
        ev = drive(evaluation(plan, book), Local(plan, book, device))
    if out is not None:
        print(format_table(ev, ev.device), file=out)
    return ev


def evaluate_checkpoint(
    ckpt_path: str | Path,
    attacks: list[Attack],
    eps_grid: list[float],
    n: int,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    data_dir: str | Path | None,
    store: Store | str | Path,
    dataset: str | None = None,
    progress: bool = True,
    *,
    download: bool = True,
    out: TextIO | None = None,
    fresh: bool = False,
    walk: str = DEFAULT_WALK,
) -> Evaluation:
    """Evaluate one checkpoint into ``store`` (a Store or a path). All input is validated before
    the store is opened; a BudgetViolation leaves that step's row unwritten."""
    settings = Settings(list(attacks), list(eps_grid), batch_size, seed, fresh, progress, walk=walk)
    check_settings(settings.attacks, settings.eps_grid, batch_size, seed)
    check_walk(walk)
    target = prepare_target(ckpt_path, n, data_dir, dataset, download)
    with contextlib.ExitStack() as stack:
        db = store if isinstance(store, Store) else stack.enter_context(Store(store))
        return evaluate_target(target, settings, device, db, out or sys.stdout)
