"""Ray for bench: start a local instance or join a cluster, the options of each task, and the loop
that waits for tasks and hands each outcome to its handler on the driver. Imported only by
``bench sweep`` and ``bench eval --workers/--address`` (nothing else imports Ray).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray

from bench.errors import UsageError


@dataclass
class RayOptions:
    """Where and how the tasks run."""

    address: str | None = None  # a cluster to join; None: a local instance started here
    num_cpus: int | None = None  # the local instance's CPUs (default: all)
    cpus_per_task: int = 1  # Ray CPUs (and torch threads) per task
    gpu_resource: str = "GPU"  # the resource a training or evaluation task takes one of
    resources: dict[str, float] = field(default_factory=dict)  # the local instance's custom ones
    progress: bool = True


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
        ray.init(
            num_cpus=opts.num_cpus,
            include_dashboard=False,
            resources=opts.resources or None,
            **common,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(
            f"Ray could not start or join {address or 'a local instance'}: {exc}"
        ) from None
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


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, Any]]:
    """``fn(*args)`` in a task, and where and when it ran (node, process, resources held, torch
    threads, wall times)."""
    import torch  # here: workers only, and after the task's thread count is set by the caller

    ctx = ray.get_runtime_context()
    start = time.time()
    value = fn(*args)
    meta = {
        "node": ctx.get_node_id(),
        "pid": os.getpid(),
        "resources": ctx.get_assigned_resources(),
        "threads": torch.get_num_threads(),
        "start": start,
        "end": time.time(),
    }
    return value, meta


@dataclass
class Pending:
    """A task in flight and what to do with its outcome."""

    kind: str
    label: str
    job_id: str
    on_done: Callable[[Any], None]
    on_fail: Callable[[str], None]


class Runner:
    """Tasks in flight, each with its handlers; waits for them and calls the handlers on the
    driver. A task may be shared: several handlers wait on one object (e.g. the cheap checks of
    one checkpoint at one n, asked for by several evaluations). ``log``: a JSON-lines file that
    gets one line per finished task (kind, label, job, error, where and when it ran)."""

    def __init__(self, opts: RayOptions, log: Path | None = None) -> None:
        self.opts, self.log = opts, log
        self.inflight: dict[Any, list[Pending]] = {}
        self.shared: dict[Any, Any] = {}  # share key -> object ref in flight
        self.options = task_options(opts)
        self.on_change: Callable[[], None] = lambda: None

    def submit(self, ref: Any, p: Pending, share: Any = None) -> None:
        """Keep a task in flight until :meth:`handle` takes its outcome."""
        self.inflight.setdefault(ref, []).append(p)
        if share is not None:
            self.shared[share] = ref
        self.on_change()

    def in_flight(self, share: Any) -> Any:
        """The object ref of the shared task with this key still in flight, or None."""
        ref = self.shared.get(share)
        return ref if ref in self.inflight else None

    def running(self) -> set[str]:
        """Jobs with a task in flight."""
        return {p.job_id for ps in self.inflight.values() for p in ps}

    def loop(self, each: Callable[[], None] = lambda: None) -> None:
        """Handle outcomes until nothing is in flight; ``each()`` after every finished task."""
        while self.inflight:
            ready, _ = ray.wait(list(self.inflight), num_returns=1)
            for ref in ready:
                self.handle(ref)
                each()

    def handle(self, ref: Any) -> None:
        """A task is over: log it, then each waiter's success or failure handler (driver-side
        errors in a success handler fail that waiter's job only)."""
        waiters = self.inflight.pop(ref)
        try:
            value, meta = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - whatever the task raised fails its waiters only
            self.write_log(waiters[0], None, error_line(exc))
            for p in waiters:
                p.on_fail(error_line(exc))
            return
        self.write_log(waiters[0], meta, None)
        for p in waiters:
            try:
                p.on_done(value)
            except Exception as exc:  # noqa: BLE001
                p.on_fail(error_line(exc))
        self.on_change()

    def write_log(self, p: Pending, meta: dict[str, Any] | None, error: str | None) -> None:
        """One line per finished task in :attr:`log` (where it ran, when, its error)."""
        if self.log is None:
            return
        line = {
            "kind": p.kind,
            "task": p.label,
            "job": p.job_id,
            "ok": error is None,
            "error": error,
            **(meta or {}),
        }
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")
