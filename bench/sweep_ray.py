"""Running a sweep on Ray: the only module of bench that imports Ray.

The driver (``bench sweep``) starts a local Ray instance (or joins a cluster with ``--address``),
submits training jobs as tasks (one GPU each where the cluster has GPUs), then for each finished
checkpoint its cheap checks and its evaluation shards. Workers return everything through Ray; the
driver alone writes the checkpoints directory it holds and the SQLite store. Failed jobs are
reported with their configuration and error; the others go on. A rerun skips what is done.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import ray
from tqdm import tqdm

from bench import checkpoint, sweep_work
from bench.errors import UsageError
from bench.store import Store
from bench.sweep import ID_CHARS, EvalJob, Sweep, TrainJob
from bench.sweep_store import EvalBook, stored_findings


@dataclass
class RayOptions:
    """Where and how the tasks run."""

    address: str | None = None  # a cluster to join; None: a local instance started here
    num_cpus: int | None = None  # the local instance's CPUs (default: all)
    cpus_per_task: int = 1  # Ray CPUs (and torch threads) per task
    gpu_resource: str = "GPU"  # the resource a training or evaluation task takes one of
    resources: dict[str, float] = field(default_factory=dict)  # the local instance's custom ones
    progress: bool = True


# ------------------------------------------------------------------------------ tasks


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, Any]]:
    """``fn(*args)`` and where and when it ran (node, process, resources held, torch threads,
    wall times)."""
    import torch

    ctx = ray.get_runtime_context()
    start = time.time()
    value = fn(*args)
    meta = {"node": ctx.get_node_id(), "pid": os.getpid(), "resources": ctx.get_assigned_resources(),
            "threads": torch.get_num_threads(), "start": start, "end": time.time()}
    return value, meta


@ray.remote
def train_task(cfg: Any, identity: dict[str, Any], threads: int) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) one checkpoint; its files come back to the driver."""
    return _timed(sweep_work.train_job, cfg, identity, threads)


@ray.remote
def audit_task(files: dict[str, bytes], n: int, data_dir: str | None, download: bool, threads: int) -> tuple[Any, dict[str, Any]]:
    """The cheap checks of one checkpoint at one n."""
    return _timed(sweep_work.audit_job, files, n, data_dir, download, threads)


@ray.remote
def inference_task(files: dict[str, bytes], n: int, data_dir: str | None, download: bool, threads: int,
                   results: list[Any], seed: int, no_grad: Any) -> tuple[Any, dict[str, Any]]:
    """The walk-inference check of one merged evaluation."""
    return _timed(sweep_work.inference_job, files, n, data_dir, download, threads, results, seed, no_grad)


@ray.remote
def shard_task(files: dict[str, bytes], s: sweep_work.ShardSpec, data_dir: str | None, download: bool,
               threads: int) -> tuple[Any, dict[str, Any]]:
    """One shard of one evaluation: per-batch flags of each attack at each eps."""
    return _timed(sweep_work.shard_job, files, s, data_dir, download, threads)


def start_ray(opts: RayOptions) -> bool:
    """Join ``opts.address`` (or ``$RAY_ADDRESS``), or start a local instance; True if this
    call started it (and so must stop it). An instance this process already holds is used."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network here
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **common)
            return False
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, resources=opts.resources or None, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"Ray could not start or join {address or 'a local instance'}: {exc}") from None
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connection to a ``host:port`` address, so that a wrong one is one line at once
    rather than Ray's minutes of retries (``auto`` and ``ray://`` addresses are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None


def task_options(opts: RayOptions) -> dict[str, Any]:
    """CPUs per task, and one of the GPU resource when the cluster has it."""
    out: dict[str, Any] = {"num_cpus": opts.cpus_per_task}
    if ray.cluster_resources().get(opts.gpu_resource, 0) >= 1:
        if opts.gpu_resource == "GPU":
            out["num_gpus"] = 1
        else:
            out["resources"] = {opts.gpu_resource: 1}
    return out


def error_line(exc: BaseException, limit: int = 400) -> str:
    """A task's error on one line: the exception raised in the task, not Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ the driver


@dataclass
class Pending:
    """A task in flight and what to do with its outcome."""

    kind: str
    label: str
    job_id: str
    on_done: Callable[[Any], None]
    on_fail: Callable[[str], None]


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
        self.inflight: dict[Any, Pending] = {}
        self.outcome = Outcome()
        self.files: dict[str, Any] = {}  # train job id -> object ref of its checkpoint's files
        # (train job id, n) -> the evaluations waiting for that checkpoint's cheap checks at n:
        # one audit task serves every evaluation block of one checkpoint at one n.
        self.audits: dict[tuple[str, int], list[EvalJob]] = {}
        self.failed_jobs: set[str] = set()
        self.closed: set[str] = set()  # jobs counted on the bar: finished, skipped or failed
        self.options = task_options(opts)
        # The sweep's data directory, else None: each worker then finds its own (the flag's
        # rules: $BENCH_DATA_DIR, else <home>/data), as training does.
        self.data_dir = str(sweep.data_dir) if sweep.data_dir else None
        self.bar = tqdm(total=len(sweep.trains) + len(sweep.evals), desc=f"sweep {sweep.name}", unit="job",
                        file=sys.stderr, disable=not opts.progress, dynamic_ncols=True)

    # -- bookkeeping -------------------------------------------------------------------------
    def submit(self, ref: Any, p: Pending) -> None:
        """Keep a task in flight until :meth:`handle` takes its outcome."""
        self.inflight[ref] = p
        self._show()

    def _show(self) -> None:
        """The bar's counts: jobs done (the bar itself, with the time left), running, failed."""
        o = self.outcome
        running = len({p.job_id for p in self.inflight.values()})
        done = o.trained + o.evaluated + o.skipped
        self.bar.set_postfix_str(f"done {done}, running {running}, failed {len(o.failed)}", refresh=False)

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
        tqdm.write(f"bench: sweep: job {job_id[:ID_CHARS]} failed: {config}\n    error: {error}", file=sys.stderr)
        if job_id not in self.closed:
            self.closed.add(job_id)
            self.bar.update(1)
        self._show()

    def log_task(self, p: Pending, meta: dict[str, Any] | None, error: str | None) -> None:
        """One line per finished task in ``<out>/tasks.jsonl`` (where it ran, when, its error)."""
        line = {"kind": p.kind, "task": p.label, "job": p.job_id, "ok": error is None, "error": error, **(meta or {})}
        with open(self.sweep.out / "tasks.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Start every training job, then handle outcomes until nothing is in flight."""
        started = time.perf_counter()
        try:
            for job in self.sweep.trains:
                self.start_train(job)
            while self.inflight:
                ready, _ = ray.wait(list(self.inflight), num_returns=1)
                for ref in ready:
                    self.handle(ref)
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
                self.fail(job.job_id, kind + job.describe(), "never finished (bench sweep lost track of it)")

    def handle(self, ref: Any) -> None:
        """A task is over: log it, then its success or failure handler (driver-side errors in
        the success handler fail that job only)."""
        p = self.inflight.pop(ref)
        try:
            value, meta = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - whatever the task raised fails that job only
            self.log_task(p, None, error_line(exc))
            p.on_fail(error_line(exc))
            return
        self.log_task(p, meta, None)
        try:
            p.on_done(value)
        except Exception as exc:  # noqa: BLE001
            p.on_fail(error_line(exc))
        self._show()

    # -- training ----------------------------------------------------------------------------
    def start_train(self, job: TrainJob) -> None:
        """Skip a finished checkpoint of this configuration; else train (or resume) it."""
        try:
            if checkpoint.is_complete(job.run_dir):
                sweep_work.check_identity(job.run_dir, job.identity)
                self.finished("skipped", job.job_id)
                self.start_evals(job)
                return
        except UsageError as exc:
            self.fail_train(job, str(exc))
            return
        ref = train_task.options(**self.options).remote(job.cfg, job.identity, self.opts.cpus_per_task)
        self.submit(ref, Pending("train", job.cfg.run_id, job.job_id, lambda files: self.trained(job, files),
                                 lambda err: self.fail_train(job, err)))

    def trained(self, job: TrainJob, files: dict[str, bytes]) -> None:
        """Install the checkpoint the worker sent back, then start its evaluations."""
        sweep_work.install(job.run_dir, files)
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
            self.files[job.job_id] = ray.put(sweep_work.checkpoint_files(job.run_dir))
        return self.files[job.job_id]

    def start_eval(self, ev: EvalJob) -> None:
        """Record the model, then its cheap checks (stored ones reused; one task for every
        evaluation of this checkpoint at this n), then the shards."""
        from bench.evaluate import run_row
        from bench.sources import from_checkpoint

        source = from_checkpoint(ev.train.run_dir)
        self.store.claim_run(run_row(source), now())
        found = stored_findings(self.store, source.run_id, source.fingerprint, ev.spec.n)
        if found is not None:
            self.launch(ev, source, found)
            return
        key = (ev.train.job_id, ev.spec.n)
        if key in self.audits:  # its audit task is in flight already
            self.audits[key].append(ev)
            return
        ref = audit_task.options(**self.options).remote(self.files_ref(ev.train), ev.spec.n, self.data_dir,
                                                       self.sweep.download, self.opts.cpus_per_task)
        self.audits[key] = [ev]  # only once submitted: a failed submit fails this evaluation alone
        self.submit(ref, Pending("audit", f"{source.run_id}/n={ev.spec.n}", ev.job_id,
                                 lambda findings: self.audited(key, source, findings),
                                 lambda err: self.audit_failed(key, err)))

    def _eval_fail(self, ev: EvalJob) -> Callable[[str], None]:
        """The failure handler of an evaluation's tasks."""
        return lambda err: self.fail(ev.job_id, "eval " + ev.describe(), err)

    def audited(self, key: tuple[str, int], source: Any, findings: list[Any]) -> None:
        """Store the cheap checks' findings, then launch the shards of each waiting evaluation."""
        from bench import audit

        self.store.write_diagnostics(audit.rows(source.run_id, source.fingerprint, key[1], findings))
        for ev in self.audits.pop(key, []):
            try:
                self.launch(ev, source, findings)
            except Exception as exc:  # noqa: BLE001 - one evaluation's failure is its own
                self._eval_fail(ev)(error_line(exc))

    def audit_failed(self, key: tuple[str, int], error: str) -> None:
        """The cheap checks failed: so does every evaluation waiting for them."""
        for ev in self.audits.pop(key, []):
            self._eval_fail(ev)(error)

    def launch(self, ev: EvalJob, source: Any, findings: list[Any]) -> None:
        """Submit the shards not yet stored; an evaluation whose rows are all stored is
        completed (what a killed driver left undone after its rows) or skipped."""
        from bench import audit

        attacks, note = audit.adapt(ev.spec.make_attacks(), findings)
        if note:
            tqdm.write(f"bench: sweep: {source.run_id}: {note}", file=sys.stderr)
        book = EvalBook(self.store, ev, source, attacks)
        book.no_grad = attacks[0] if audit.graph_cut(findings) and attacks else None
        if book.done():
            self.complete(book, rerun=True)
            return
        pending = book.pending()
        if not pending:
            self.complete(book)
            return
        left = [len(pending)]
        for k0, k1, which in pending:
            spec = sweep_work.ShardSpec(ev.spec, attacks, which, k0, k1)
            ref = shard_task.options(**self.options).remote(self.files_ref(ev.train), spec, self.data_dir,
                                                           self.sweep.download, self.opts.cpus_per_task)
            self.submit(ref, Pending("shard", f"{source.run_id}/{ev.spec.name}/{k0}-{k1}", ev.job_id,
                                     lambda r: self.shard_done(book, r, left), self._eval_fail(ev)))

    def shard_done(self, book: EvalBook, result: sweep_work.ShardResult, left: list[int]) -> None:
        """Keep the shard's flags at once; the last shard completes the evaluation."""
        book.write_shard(result)
        left[0] -= 1
        if left[0] == 0 and book.job.job_id not in self.failed_jobs:
            self.complete(book)

    def complete(self, book: EvalBook, rerun: bool = False) -> None:
        """Every shard is in: the result rows, the comparisons between attacks, then the
        walk-inference check as a task of its own (it needs the model and the points).
        ``rerun``: the rows were all stored before; the check runs only if its finding for this
        evaluation is missing, and an evaluation with nothing missing is skipped."""
        from bench import audit

        results = book.finish()
        book.write_after(results)
        ev = book.job
        due = book.inference_due(results) if rerun else audit.inference_key(results) is not None
        if not due:
            self.finished("skipped" if rerun else "evaluated", ev.job_id)
            return
        ref = inference_task.options(**self.options).remote(
            self.files_ref(ev.train), ev.spec.n, self.data_dir, self.sweep.download, self.opts.cpus_per_task,
            results, ev.spec.seed, book.no_grad)
        self.submit(ref, Pending("inference", f"{book.source.run_id}/{ev.spec.name}", ev.job_id,
                                 lambda found: self.inferred(book, results, found), self._eval_fail(ev)))

    def inferred(self, book: EvalBook, results: list[Any], findings: list[Any]) -> None:
        """Store the walk-inference finding, with what it depends on; the evaluation is over."""
        from bench import audit

        audit.stamp_inference(findings, book.inference_context(results))
        book.write_findings(findings)
        self.finished("evaluated", book.job.job_id)


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


def now() -> str:
    """UTC time, to the second (the store's ``updated``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
