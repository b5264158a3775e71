"""The Ray executor: runs evaluation pipelines (:mod:`bench.evaluation.pipeline`) on Ray. Each
step's work items become tasks (one GPU each where the cluster has GPUs); each task rebuilds the
model and its points from a payload (a checkpoint's files with the data to load, or the target
itself) and does its item with the same functions as the in-process executor
(:func:`bench.evaluation.work.execute`). Results come back to the driver, which alone writes the
store. Several pipelines run at once; the cheap checks of one model at one n asked for by several
pipelines run once. ``bench eval --workers/--address`` and ``bench sweep`` use it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable

import ray
import torch
from tqdm import tqdm

from bench.checkpoint_files import source_of
from bench.cluster import Pending, RayOptions, Runner, error_line, start_ray, timed
from bench.evaluation import work
from bench.evaluation.book import Book
from bench.evaluation.outcome import Evaluation
from bench.evaluation.pipeline import Pipeline, Step, evaluation
from bench.evaluation.plan import Plan, Settings
from bench.evaluation.targets import Target, attach_points
from bench.io import device_label, pick_device
from bench.store import Store

Points = tuple[int, "str | None", bool]  # (n, data directory, download) of a checkpoint payload


def load(payload: Any, points: Points | None) -> Target:
    """The target a task works on: given whole, or rebuilt from a checkpoint's files and the
    first n test points of its data set."""
    if isinstance(payload, Target):
        return payload
    n, data_dir, download = points  # type: ignore[misc]
    return attach_points(source_of(payload), n, data_dir, download)


def do_work(
    payload: Any, points: Points | None, item: Any, device: str | None, threads: int
) -> Any:
    """One work item in a task: torch threads set, the model on the task's device."""
    torch.set_num_threads(threads)
    target = load(payload, points)
    dev = pick_device(device)
    model = target.model.to(dev).eval()
    return work.execute(item, model, target.x, target.y, device_label(dev))


@ray.remote
def work_task(
    payload: Any, points: Points | None, item: Any, device: str | None, threads: int
) -> tuple[Any, dict[str, Any]]:
    """A pipeline's work item, and where and when it ran."""
    return timed(do_work, payload, points, item, device, threads)


class RayPipeline:
    """Drives one pipeline on a :class:`~bench.cluster.Runner`: a step's items are submitted at
    once; each result is handed to the step (on the driver) as it arrives; when all are in, the
    pipeline goes on. The first failure ends the pipeline and calls ``on_fail`` once."""

    def __init__(
        self,
        runner: Runner,
        pipeline: Pipeline,
        payload: Any,
        points: Points | None,
        *,
        label: str,
        job_id: str,
        share: Any,
        on_done: Callable[[Evaluation], None],
        on_fail: Callable[[str], None],
        device: str | None = None,
    ) -> None:
        self.runner, self.gen, self.payload, self.points = runner, pipeline, payload, points
        self.label, self.job_id, self.share, self.device = label, job_id, share, device
        self.on_done, self.on_fail = on_done, on_fail
        self.failed, self.left = False, 0

    def start(self) -> None:
        self._advance(None)

    def _advance(self, results: list[Any] | None) -> None:
        try:
            step = next(self.gen) if results is None else self.gen.send(results)
        except StopIteration as stop:
            self.on_done(stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - a driver-side stage failing fails this pipeline
            self._fail(error_line(exc))
            return
        self._submit(step)

    def _submit(self, step: Step) -> None:
        out: list[Any] = [None] * len(step.items)
        self.left = len(step.items)
        for j, item in enumerate(step.items):
            share = (self.share, "cheap") if isinstance(item, work.Cheap) else None
            ref = self.runner.in_flight(share) if share is not None else None
            if ref is None:
                ref = work_task.options(**self.runner.options).remote(
                    self.payload, self.points, item, self.device, self.runner.opts.cpus_per_task
                )
            p = Pending(
                item.kind,
                f"{self.label}/{work.describe(item)}",
                self.job_id,
                lambda r, j=j: self._got(step, out, j, r),
                self._fail,
            )
            self.runner.submit(ref, p, share)

    def _got(self, step: Step, out: list[Any], j: int, result: Any) -> None:
        if self.failed:
            return
        if step.each is not None:
            step.each(result)
        out[j] = result
        self.left -= 1
        if self.left == 0:
            self._advance(out)

    def _fail(self, error: str) -> None:
        if self.failed:
            return
        self.failed = True
        self.gen.close()
        self.on_fail(error)


def shard_count(workers: int | None, opts: RayOptions) -> int:
    """Shards per evaluation: ``workers``, else one per GPU of the cluster, else one per task's
    worth of its CPUs."""
    if workers:
        return workers
    res = ray.cluster_resources()
    if res.get(opts.gpu_resource, 0) >= 1:
        return int(res[opts.gpu_resource])
    return max(1, int(res.get("CPU", 1)) // opts.cpus_per_task)


def evaluate_on_ray(
    targets: list[Target],
    settings: Settings,
    store: Store,
    opts: RayOptions,
    workers: int | None = None,
    device: str | None = None,
    shards: int | None = None,
) -> tuple[list[Evaluation], list[tuple[str, str]]]:
    """Evaluate every target on Ray (a local instance of ``workers`` CPUs, or ``opts.address``),
    each evaluation's fixed batches cut into ``shards`` shards (default: one per worker; more
    shards than workers let a worker that finishes early take another). Returns the
    evaluations, in the targets' order, and the failures as (run id, error)."""
    started = start_ray(
        replace(opts, num_cpus=opts.num_cpus or (workers * opts.cpus_per_task if workers else None))
    )
    try:
        runner = Runner(opts)
        shards = shards or shard_count(workers, opts)
        done: dict[str, Evaluation] = {}
        failed: list[tuple[str, str]] = []
        bar = tqdm(
            desc="eval on Ray",
            unit="task",
            file=sys.stderr,
            disable=not opts.progress,
            dynamic_ncols=True,
        )
        runner.on_change = lambda: bar.set_postfix_str(
            f"running {len(runner.inflight)}", refresh=False
        )
        for t in targets:
            plan = Plan(t, replace(settings, progress=False), shards=shards)
            pipe = RayPipeline(
                runner,
                evaluation(plan, Book(store, plan)),
                ray.put(t),
                None,
                label=t.run_id,
                job_id=t.run_id,
                share=t.run_id,
                device=device,
                on_done=lambda ev, r=t.run_id: done.__setitem__(r, ev),
                on_fail=lambda err, r=t.run_id: failed.append((r, err)),
            )
            pipe.start()
        try:
            runner.loop(lambda: bar.update(1))
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    return [done[t.run_id] for t in targets if t.run_id in done], failed
