"""The driver of a sweep on Ray (``bench sweep``): starts a local Ray instance (or joins a cluster
with ``--address``), submits training jobs as tasks (one GPU each where the cluster has GPUs),
then runs each finished checkpoint's evaluations on the one evaluation pipeline with the Ray
executor (:mod:`bench.evaluation.ray_executor`). Workers return everything through Ray; the driver
alone writes the checkpoints directory it holds and the SQLite store. Failed jobs are reported
with their configuration and error; the others go on. A rerun skips what is done.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from tqdm import tqdm

from bench import checkpoint
from bench.checkpoint_files import checkpoint_files, install
from bench.cluster import Pending, RayOptions, Runner, error_line, start_ray, timed
from bench.errors import UsageError
from bench.evaluation.book import Book
from bench.evaluation.outcome import Evaluation
from bench.evaluation.pipeline import evaluation
from bench.evaluation.plan import Plan, Settings
from bench.evaluation.ray_executor import RayPipeline
from bench.evaluation.targets import Target
from bench.sources import from_checkpoint
from bench.store import Store
from bench.sweep import work
from bench.sweep.spec import ID_CHARS, EvalJob, Sweep, TrainJob

__all__ = ["Driver", "Outcome", "eval_plan", "run_sweep"]


@ray.remote
def train_task(cfg: Any, identity: dict[str, Any], threads: int) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) one checkpoint; its files come back to the driver."""
    return timed(work.train_job, cfg, identity, threads)


@dataclass
class Outcome:
    """What a sweep run did."""

    trained: int = 0
    evaluated: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (configuration, error)
    seconds: float = 0.0


class Driver:
    """Submits the jobs, handles their results, writes the store, shows one progress bar."""

    def __init__(self, sweep: Sweep, store: Store, opts: RayOptions) -> None:
        self.sweep, self.store, self.opts = sweep, store, opts
        self.runner = Runner(opts, sweep.out / "tasks.jsonl")
        self.runner.on_change = self._show
        self.outcome = Outcome()
        self.files: dict[str, Any] = {}  # train job id -> object ref of its checkpoint's files
        self.failed_jobs: set[str] = set()
        self.closed: set[str] = set()  # jobs counted on the bar: finished, skipped or failed
        # The sweep's data directory, else None: each worker then finds its own (the flag's
        # rules: $BENCH_DATA_DIR, else <home>/data), as training does.
        self.data_dir = str(sweep.data_dir) if sweep.data_dir else None
        self.bar = tqdm(
            total=len(sweep.trains) + len(sweep.evals),
            desc=f"sweep {sweep.name}",
            unit="job",
            file=sys.stderr,
            disable=not opts.progress,
            dynamic_ncols=True,
        )

    # -- bookkeeping -------------------------------------------------------------------------
    def _show(self) -> None:
        """The bar's counts: jobs done (the bar itself, with the time left), running, failed."""
        o = self.outcome
        done = o.trained + o.evaluated + o.skipped
        self.bar.set_postfix_str(
            f"done {done}, running {len(self.runner.running())}, failed {len(o.failed)}",
            refresh=False,
        )

    def finished(self, how: str, job_id: str) -> None:
        """A job is over: ``trained``, ``evaluated`` or ``skipped``."""
        if job_id in self.closed:
            return
        self.closed.add(job_id)
        setattr(self.outcome, how, getattr(self.outcome, how) + 1)
        self.bar.update(1)
        self._show()

    def fail(self, job_id: str, config: str, error: str) -> None:
        """Report a failed job (configuration and error); the others go on."""
        if job_id in self.failed_jobs:
            return
        self.failed_jobs.add(job_id)
        self.outcome.failed.append((config, error))
        tqdm.write(
            f"bench: sweep: job {job_id[:ID_CHARS]} failed: {config}\n    error: {error}",
            file=sys.stderr,
        )
        if job_id not in self.closed:
            self.closed.add(job_id)
            self.bar.update(1)
        self._show()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Start every training job, then handle outcomes until nothing is in flight."""
        started = time.perf_counter()
        try:
            for job in self.sweep.trains:
                self.start_train(job)
            self.runner.loop()
            self.fail_unfinished()
        finally:
            self.bar.close()
        self.outcome.seconds = time.perf_counter() - started
        return self.outcome

    def fail_unfinished(self) -> None:
        """Nothing is in flight: a job neither finished nor failed by now is a driver bug; it is
        reported as failed rather than silently missing from the summary."""
        for job in [*self.sweep.trains, *self.sweep.evals]:
            if job.job_id not in self.closed:
                kind = "train " if isinstance(job, TrainJob) else "eval "
                self.fail(
                    job.job_id,
                    kind + job.describe(),
                    "never finished (bench sweep lost track of it)",
                )

    # -- training ----------------------------------------------------------------------------
    def start_train(self, job: TrainJob) -> None:
        """Skip a finished checkpoint of this configuration; else train (or resume) it."""
        try:
            if checkpoint.is_complete(job.run_dir):
                work.check_identity(job.run_dir, job.identity)
                self.finished("skipped", job.job_id)
                self.start_evals(job)
                return
        except UsageError as exc:
            self.fail_train(job, str(exc))
            return
        ref = train_task.options(**self.runner.options).remote(
            job.cfg, job.identity, self.opts.cpus_per_task
        )
        self.runner.submit(
            ref,
            Pending(
                "train",
                job.cfg.run_id,
                job.job_id,
                lambda files: self.trained(job, files),
                lambda err: self.fail_train(job, err),
            ),
        )

    def trained(self, job: TrainJob, files: dict[str, bytes]) -> None:
        """Install the checkpoint the worker sent back, then start its evaluations."""
        install(job.run_dir, files)
        self.finished("trained", job.job_id)
        self.start_evals(job)

    def fail_train(self, job: TrainJob, error: str) -> None:
        """A failed training fails its evaluations too (they are not run)."""
        self.fail(job.job_id, "train " + job.describe(), error)
        for ev in self.evals_of(job):
            self.fail(ev.job_id, "eval " + ev.describe(), "not run: its training failed")

    def evals_of(self, job: TrainJob) -> list[EvalJob]:
        """The evaluation jobs of one checkpoint."""
        return [e for e in self.sweep.evals if e.train is job]

    # -- evaluation --------------------------------------------------------------------------
    def start_evals(self, job: TrainJob) -> None:
        """Start every evaluation of a finished checkpoint."""
        for ev in self.evals_of(job):
            try:
                self.start_eval(ev)
            except Exception as exc:  # noqa: BLE001 - a bad checkpoint fails its evaluations only
                self.fail(ev.job_id, "eval " + ev.describe(), error_line(exc))

    def files_ref(self, job: TrainJob) -> Any:
        """The checkpoint's files in Ray's object store (put once per checkpoint)."""
        if job.job_id not in self.files:
            self.files[job.job_id] = ray.put(checkpoint_files(job.run_dir))
        return self.files[job.job_id]

    def start_eval(self, ev: EvalJob) -> None:
        """The evaluation pipeline of one block on one checkpoint, on the Ray executor."""
        plan = eval_plan(ev)
        run_id = plan.target.run_id
        pipeline = evaluation(
            plan,
            Book(self.store, plan),
            say=lambda line: tqdm.write(f"bench: sweep: {run_id}: {line}", file=sys.stderr),
        )
        RayPipeline(
            self.runner,
            pipeline,
            self.files_ref(ev.train),
            (ev.spec.n, self.data_dir, self.sweep.download),
            label=f"{run_id}/{ev.spec.name}",
            job_id=ev.job_id,
            share=(ev.train.job_id, ev.spec.n),
            on_done=lambda result: self.evaluated(ev, result),
            on_fail=lambda err: self.fail(ev.job_id, "eval " + ev.describe(), err),
        ).start()

    def evaluated(self, ev: EvalJob, result: Evaluation) -> None:
        """An evaluation is over: evaluated now, or found done before (nothing computed)."""
        self.finished("evaluated" if result.ran else "skipped", ev.job_id)


def eval_plan(ev: EvalJob) -> Plan:
    """An evaluation block on its checkpoint, as a plan. The driver holds no images: the pipeline
    reads only the source and n from its target; the workers load the points."""
    spec = ev.spec
    target = Target(
        from_checkpoint(ev.train.run_dir), torch.empty(0), torch.zeros(spec.n, dtype=torch.long), 0
    )
    settings = Settings(
        spec.make_attacks(),
        list(spec.eps),
        spec.batch_size,
        spec.seed,
        progress=False,
        walk=spec.walk,
        norm=spec.norm,
    )
    return Plan(target, settings, shards=spec.shards)


# ------------------------------------------------------------------------------ entry point


def run_sweep(sweep: Sweep, opts: RayOptions) -> Outcome:
    """Run every job not done yet (see the module docstring); the store is closed at the end."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    sweep.checkpoints.mkdir(parents=True, exist_ok=True)
    with Store(sweep.db) as store:
        store.check_writable()
        started = start_ray(opts)
        try:
            outcome = Driver(sweep, store, opts).run()
        finally:
            if started:
                ray.shutdown()
    return outcome
