"""The one training loop, shared by every defense.

SGD with momentum and weight decay, a piecewise or cosine learning-rate schedule stepped every
iteration, a seed, a progress bar and a per-epoch log. The defense only supplies the loss. On a
GPU the whole training set lives on the device (as uint8) and augmentation runs there.

Speed options (all off by default; the defaults give the same weights, bit for bit, as before
they existed): ``amp="bf16"`` runs the training forward passes, the defense's inner attack
included, under bfloat16 autocast (the loss and the weights stay float32; evaluation never uses
it: low precision weakens attacks); ``channels_last`` stores weights and batches channels-last
(faster convolutions on CUDA); ``compile`` trains through ``torch.compile(model)``. The loop
never waits for the device inside an epoch: the summed loss stays on the device (float64, the
same sums as before) and is read at the end of the epoch and every :data:`REFRESH_STEPS` steps
for the progress bar (and twice at the start of a session, to time the steps of the expected
training time).

Before training, one line on stderr says the plan (data set and its size, epochs, defense with
its norm and eps, device, checkpoint directory); once :data:`ESTIMATE_STEPS` steps after the
first have been timed, a second says the expected training time at that pace.

Every epoch ends with the training state written atomically (:mod:`bench.checkpoint`), so an
interrupted run continues with :func:`resume` (``bench train --resume RUN_DIR``) from its last
completed epoch; on the CPU the final weights are bit-identical to an uninterrupted run's. A
KeyboardInterrupt (Ctrl-C) that stops a run which can be resumed is raised again carrying that
command (:func:`bench.checkpoint.incomplete_message`), which ``bench`` prints.
Single-step defenses (FGSM-AT, FGSM-RS) are watched for catastrophic overfitting on a held-out
batch of training images (:mod:`bench.defenses.overfitting`). The adversarial defenses (PGD-AT,
TRADES, FGSM-RS, FGSM-AT) train under the threat model of their ``norm`` parameter, which
config.json's ``defense_params`` records with the rest.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bench import checkpoint, paths
from bench.data import DatasetInfo, ImageSet, dataset_info, load_dataset
from bench.defenses import Defense, build_defense, defense_params
from bench.defenses.overfitting import Monitor, heldout_size
from bench.errors import UsageError
from bench.io import device_label, library_versions, pick_device
from bench.models import create_model
from bench.norms import LINF
from bench.params import format_eps, plural

SCHEDULES = ("piecewise", "cosine")
AMP_MODES = ("off", "bf16")  # training autocast: none, or bfloat16 (see the module docstring)
REFRESH_STEPS = 50  # steps between progress-bar loss readings (each one waits for the device)
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer; negative seeds are refused
ESTIMATE_STEPS = 10  # steps timed (after a first, warm-up step) for the expected training time

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved, fully resolved, as the checkpoint's config.json."""

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    defense: str = "standard"
    defense_params: dict[str, str] = field(default_factory=dict)  # strings as typed by the user
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"  # lr x0.1 at 50% and 75% of the iterations; or "cosine"
    seed: int = 0
    train_limit: int | None = None
    eval_n: int = 1000  # test points used for the per-epoch clean accuracy
    # The data set's standard augmentation if it has one (DatasetInfo.augment: crop for SVHN,
    # crop and flip for the CIFARs, none for the MNISTs); False: none (--no-augment).
    augment: bool = True
    data_dir: str | None = None
    download: bool = True
    device: str | None = None
    out_dir: str | None = None
    run_id: str | None = None
    amp: str = "off"  # "bf16": bfloat16 autocast for the training passes (AMP_MODES)
    channels_last: bool = False  # channels-last weights and batches (for CUDA convolutions)
    compile: bool = False  # train through torch.compile(model)


@dataclass
class Prepared:
    """A validated run: everything built, nothing written yet."""

    cfg: TrainConfig
    info: DatasetInfo
    train_set: ImageSet
    test_set: ImageSet
    model: nn.Module
    defense: Defense
    device: torch.device
    run_dir: Path
    heldout: ImageSet | None = None  # single-step defenses: the catastrophic-overfitting batch


@dataclass
class Progress:
    """What a run carries from epoch to epoch (saved in the training state)."""

    epoch: int = 0  # epochs completed
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time so far, over every session of the run
    resumes: list[dict[str, Any]] = field(default_factory=list)


def lr_at(cfg: TrainConfig, it: int, total: int) -> float:
    """Learning rate at iteration ``it`` of ``total`` (stepped per iteration, not per epoch)."""
    frac = it / max(total, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (0.1 if frac >= 0.5 else 1.0) * (0.1 if frac >= 0.75 else 1.0)


def augment_batch(x: torch.Tensor, mode: str, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding, and random horizontal flip for
    ``crop-flip``; on whatever device ``x`` is on. ``none`` returns ``x`` unchanged."""
    if mode == "none":
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # One random offset per image; gather its h x w window with index arithmetic (no loop).
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    if mode == "crop-flip":
        flip = torch.rand(n, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batch_size: int = 500) -> float:
    """Clean accuracy in eval mode (BatchOut and dropout off, batch-norm running statistics)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)), device=data.x.device)
        correct += int((model(data.images(idx)).argmax(1) == data.y[idx]).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def augment_mode(cfg: TrainConfig, info: DatasetInfo) -> str:
    """The augmentation training applies: the data set's (``none``, ``crop``, ``crop-flip``), or
    ``none`` when ``cfg.augment`` is off."""
    return info.augment if cfg.augment else "none"


def default_run_id(cfg: TrainConfig) -> str:
    """``<defense>-<model>-<dataset>-s<seed>-<UTC time>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.defense}-{cfg.model}-{cfg.dataset}-s{cfg.seed}-{stamp}"


# --- validation (nothing loaded, nothing written) ---------------------------------------------


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Upper bounds: far above any real use, low enough that a typo fails at once instead of
# training for ever or asking for an impossible allocation.
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000  # images per step
MAX_EVAL_N = 100_000_000  # test points


def check_numbers(cfg: TrainConfig) -> None:
    """Every number of the configuration is usable: finite, in range; else a UsageError."""
    for flag, value, top in (
        ("--epochs", cfg.epochs, MAX_EPOCHS),
        ("--batch-size", cfg.batch_size, MAX_BATCH),
        ("--eval-n", cfg.eval_n, MAX_EVAL_N),
    ):
        if not _whole(value) or not 1 <= value <= top:
            raise UsageError(f"{flag} must be a whole number in 1..{top}, got {value!r}")
    if cfg.train_limit is not None and (not _whole(cfg.train_limit) or cfg.train_limit < 1):
        raise UsageError(f"--train-limit must be a whole number >= 1, got {cfg.train_limit!r}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {cfg.lr}")
    if not (math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise UsageError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}")
    if not _whole(cfg.seed) or not 0 <= cfg.seed <= SEED_MAX:
        raise UsageError(f"--seed must be a whole number in 0..2**63-1, got {cfg.seed}")
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if cfg.amp not in AMP_MODES:
        raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")


def _check_run_id(run_id: str) -> None:
    """A plain directory name in UTF-8: config.json records it, and a name that is not text
    (bytes such as ``\\xff`` on the command line) trains a checkpoint bench eval can't read."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise UsageError(f"--run-id {run_id!r} must be a plain directory name")
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--run-id {run_id!r} is not valid UTF-8; choose a UTF-8 name") from None


def run_dir_of(cfg: TrainConfig) -> Path:
    """The checkpoint directory of ``cfg`` (a default run id is stamped with the time now)."""
    if cfg.run_id is not None:
        _check_run_id(cfg.run_id)
    root = paths.resolve(cfg.out_dir, "--out") if cfg.out_dir else paths.checkpoints_dir()
    run_dir = paths.resolve(root / (cfg.run_id or default_run_id(cfg)), "--run-id")
    return run_dir


def _exists(run_dir: Path) -> UsageError:
    return UsageError(f"checkpoint directory {run_dir} already exists; choose another --run-id")


def create_run_dir(run_dir: Path) -> None:
    """Create the run's directory atomically: of two runs given the same one at once, the
    second gets the one-line "already exists" error that :func:`check` gives."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()  # no exist_ok: the check and the creation are one system call
    except FileExistsError:
        raise _exists(run_dir) from None


def check(
    cfg: TrainConfig, resuming: bool = False
) -> tuple[DatasetInfo, Defense, nn.Module, Path, torch.device]:
    """Every check that needs no data: numbers, names, parameters, model, run directory, device.

    Seeds torch's global generators (the model's initialisation). Raises UsageError."""
    check_numbers(cfg)
    info = dataset_info(cfg.dataset)  # unknown data set -> UsageError with the valid names
    defense = build_defense(cfg.defense, cfg.defense_params)  # unknown defense / key -> UsageError
    torch.manual_seed(cfg.seed)  # the weights' initialisation; seeds CUDA too
    model = create_model(  # unknown model, or one that can't take this data set -> UsageError
        cfg.model,
        channels=info.channels,
        num_classes=info.num_classes,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )
    run_dir = run_dir_of(cfg)
    if run_dir.exists() and not resuming:
        raise _exists(run_dir)
    paths.check_creatable(run_dir, "--out", directory=True)  # a file, read-only: refused now
    return info, defense, model, run_dir, pick_device(cfg.device)


def _train_split(cfg: TrainConfig, single_step: bool) -> tuple[ImageSet, ImageSet | None]:
    """The training images and, for single-step defenses, the held-out batch: the last
    ``heldout_size(S)`` images of the split, never trained on (a limit reaching them is cut)."""
    if not single_step:
        return load_dataset(
            cfg.dataset, "train", cfg.data_dir, limit=cfg.train_limit, download=cfg.download
        ), None
    full = load_dataset(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
    size = len(full)
    if cfg.train_limit is not None and cfg.train_limit > size:
        raise UsageError(
            f"--train-limit {cfg.train_limit} is larger than the train split of {cfg.dataset} "
            f"({size} points)"
        )
    held = heldout_size(size)
    if held < 1:
        raise UsageError(
            f"the train split of {cfg.dataset} ({size} points) is too small to hold out a batch"
        )
    n = min(cfg.train_limit or size, size - held)
    x, y = full.x, full.y
    return ImageSet(x[:n], y[:n], full.info), ImageSet(
        x[size - held :], y[size - held :], full.info
    )


def prepare(cfg: TrainConfig, resuming: bool = False) -> Prepared:
    """Check every input and build data, model and defense; raises UsageError, writes nothing."""
    info, defense, model, run_dir, device = check(cfg, resuming)
    train_set, heldout = _train_split(cfg, type(defense).single_step)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
    test_set = test_set.subset(min(cfg.eval_n, len(test_set)))
    # Hooks are checked against the model before anything is written (BatchOut's layer names).
    defense.attach(model)
    defense.detach()
    return Prepared(cfg, info, train_set, test_set, model, defense, device, run_dir, heldout)


def resolved_config(p: Prepared) -> dict[str, Any]:
    """The configuration as saved: user settings plus every resolved default."""
    cfg = asdict(p.cfg)
    cfg.pop("out_dir")
    cfg.pop("device")
    cfg["run_id"] = p.run_dir.name
    cfg["defense_params"] = defense_params(p.defense)
    cfg["defense_resolved"] = p.defense.resolved()  # e.g. {"alpha": 0.00784, "alpha_rule": "eps/4"}
    cfg["dataset_info"] = asdict(p.info)
    cfg["train_size"] = len(p.train_set)
    mode = augment_mode(p.cfg, p.info)
    cfg["augment"] = mode != "none"  # what training applied (the MNISTs have nothing to apply)
    cfg["augment_mode"] = mode
    cfg["augment_requested"] = p.cfg.augment  # False only with --no-augment
    if p.heldout is not None:
        cfg["heldout"] = {
            "n": len(p.heldout),
            "rule": (
                f"the last {len(p.heldout)} images of the training split, excluded from training"
            ),
        }
    return cfg


# --- plan and expected time -------------------------------------------------------------------


def _defense_words(name: str, defense: Defense) -> str:
    """``pgd-at (Linf, eps 8/255)`` for the adversarial trainings, else the defense's name."""
    eps = getattr(defense, "eps", None)
    if not defense.adversarial or eps is None:
        return name
    norm = str(getattr(defense, "norm", LINF))
    return f"{name} ({norm}, eps {format_eps(float(eps), norm)})"


def plan_line(loop: Loop) -> str:
    """What the run will do, in one line, before it starts (a resumed run: what is left)."""
    p, done = loop.p, loop.progress.epoch
    cfg = p.cfg
    epochs = plural(cfg.epochs, "epoch")
    if done:  # resuming after epoch ``done``
        epochs = f"epochs {done + 1}-{cfg.epochs} of {cfg.epochs}"
    return (
        f"plan: {_defense_words(cfg.defense, p.defense)} on {cfg.dataset}, "
        f"{plural(len(p.train_set), 'training image')}, model {cfg.model}, "
        f"{epochs}, {plural(loop.steps_per_epoch, 'step')} per epoch (batch {cfg.batch_size}), "
        f"on {device_label(p.device)}, checkpoint {p.run_dir}"
    )


def duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimer:
    """Times steps 2 to 1 + :data:`ESTIMATE_STEPS` of a session (the first warms up), then says
    once how long its ``steps`` optimizer steps take at that pace."""

    steps: int
    device: torch.device
    say: Log
    done: int = 0
    started: float = 0.0
    clock: Callable[[], float] = time.perf_counter  # seconds

    def tick(self) -> None:
        """After each optimizer step (waits for the device twice in all)."""
        self.done += 1
        if self.done == 1:
            _sync(self.device)
            self.started = self.clock()
        elif self.done == 1 + ESTIMATE_STEPS:
            _sync(self.device)
            self.say(estimate_line((self.clock() - self.started) / ESTIMATE_STEPS, self.steps))


def estimate_line(per_step: float, steps: int) -> str:
    """The expected training time of ``steps`` steps at ``per_step`` seconds each."""
    return (
        f"expected: about {duration(per_step * steps)} of training ({plural(steps, 'step')} at "
        f"{1000 * per_step:.0f} ms, the pace of steps 2-{1 + ESTIMATE_STEPS}), plus the "
        "clean-accuracy evaluation after each epoch"
    )


def _note(bar: tqdm, log: Log, line: str) -> None:
    """A line on the log while the bar may be drawn: a terminal's bar is cleared and redrawn
    around it; a bar written to a file has its line ended first."""
    if not bar.disable and hasattr(bar.fp, "isatty") and bar.fp.isatty():
        with bar.external_write_mode(file=bar.fp):
            log(line)
        return
    _end_bar_line(bar)
    log(line)


def _timer(loop: Loop, bar: tqdm, log: Log) -> StepTimer | None:
    """A timer for the session when it is long enough for an estimate to tell something."""
    steps = (loop.p.cfg.epochs - loop.progress.epoch) * loop.steps_per_epoch
    if loop.steps_per_epoch <= 1 + ESTIMATE_STEPS:
        return None  # the timed steps would include an epoch's end: its evaluation, its state
    if steps <= 2 * (1 + ESTIMATE_STEPS):
        return None  # over about as soon as it could be estimated
    return StepTimer(steps, loop.p.device, lambda line: _note(bar, log, line))


@contextlib.contextmanager
def resume_hint(run_dir: Path, device: str | None) -> Iterator[None]:
    """Ctrl-C in the block: once the run can be resumed (it has its config.json and is not
    complete), the KeyboardInterrupt is raised again carrying the folder and the exact command
    that continues it; ``bench`` prints it."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if not (run_dir / checkpoint.CONFIG).is_file() or checkpoint.is_complete(run_dir):
            raise
        raise KeyboardInterrupt(checkpoint.incomplete_message(run_dir, device)) from exc


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Loop:
    """A run being trained: the prepared pieces plus optimizer, generators and progress."""

    p: Prepared
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator  # the data order, on the CPU: the same order on every device
    monitor: Monitor | None
    progress: Progress
    train_set: ImageSet
    test_set: ImageSet
    forward: nn.Module | None = (
        None  # what the training passes call: the model, or its compiled form
    )
    timer: StepTimer | None = None  # times the session's first steps for the expected time

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.p.cfg.batch_size)


def _make_loop(p: Prepared) -> Loop:
    """Move the run to its device and build optimizer, shuffle generator and monitor."""
    cfg, device = p.cfg, p.device
    model = p.model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    shuffle = torch.Generator().manual_seed(cfg.seed)
    monitor = None
    if p.heldout is not None:
        held = p.heldout.to(device)
        eps, norm = float(getattr(p.defense, "eps")), getattr(p.defense, "norm", LINF)
        monitor = Monitor(eps, held.images(), held.y, norm)
    forward = torch.compile(model) if cfg.compile else model
    return Loop(
        p,
        optimizer,
        shuffle,
        monitor,
        Progress(),
        p.train_set.to(device),
        p.test_set.to(device),
        forward,
    )  # type: ignore[arg-type]


def optimizer_step(
    defense: Any,
    model: Any,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """One optimizer step of ``defense.loss(model, x, y)`` on pixels ``x`` in [0, 1]: the
    forward pass and the loss under bfloat16 autocast when ``amp == "bf16"``, the batch in
    channels-last memory when asked, backward and step outside autocast (PyTorch's AMP
    recipe). Returns the loss, detached, on the device (nothing here waits for the device).
    ``bench train`` and ``bench perf`` both step through here."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if amp == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        loss = defense.loss(model, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_step(loop: Loop, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step of the loop's defense (:func:`optimizer_step`, with the run's
    ``--amp`` and ``--channels-last``)."""
    cfg = loop.p.cfg
    model = loop.p.model if loop.forward is None else loop.forward
    return optimizer_step(loop.p.defense, model, loop.optimizer, x, y, cfg.amp, cfg.channels_last)


def _train_epoch(loop: Loop, epoch: int, bar: tqdm) -> tuple[float, int]:
    """One pass over the shuffled training set; returns (summed loss, images seen). The sum is
    kept on the device in float64 (the same arithmetic as summing Python floats) and read once."""
    cfg, model, defense = loop.p.cfg, loop.p.model, loop.p.defense
    augment = augment_mode(cfg, loop.p.info)
    steps, n = loop.steps_per_epoch, len(loop.train_set)
    total = cfg.epochs * steps
    model.train()
    defense.reset_stats()
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=loop.p.device), 0
    order = torch.randperm(n, generator=loop.shuffle).to(loop.p.device)
    for step in range(steps):
        for group in loop.optimizer.param_groups:
            group["lr"] = lr_at(cfg, (epoch - 1) * steps + step, total)
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = augment_batch(loop.train_set.images(idx), augment)
        loss = train_step(loop, x, loop.train_set.y[idx])
        loss_sum += loss.to(torch.float64) * len(idx)  # summed loss (float64), on the device
        seen += len(idx)
        bar.update(1)
        if loop.timer is not None:
            loop.timer.tick()
        if not bar.disable and ((step + 1) % REFRESH_STEPS == 0 or step + 1 == steps):
            bar.set_postfix(
                epoch=epoch, loss=f"{float(loss_sum) / seen:.3f}"
            )  # waits for the device
    return float(loss_sum), seen


def _epoch_entry(
    loop: Loop, epoch: int, loss_sum: float, seen: int, seconds: float
) -> dict[str, Any]:
    """The log entry of an epoch: loss, clean accuracy, and the robust numbers that apply."""
    entry: dict[str, Any] = {
        "epoch": epoch,
        "lr": loop.optimizer.param_groups[0]["lr"],
        "loss": loss_sum / seen,
        "clean_acc": accuracy(loop.p.model, loop.test_set),  # on the first eval_n test points
        "seconds": seconds,
        "images_per_s": seen / seconds,
    }
    robust = loop.p.defense.robust_accuracy()
    if robust is not None:
        entry["train_robust_acc"] = robust  # on this epoch's adversarial training inputs
    return entry


def _epoch_line(entry: dict[str, Any], epochs: int) -> str:
    robust = entry.get("train_robust_acc")
    held = (
        f"  held-out FGSM {entry['heldout_fgsm_acc']:.2%} PGD-10 {entry['heldout_pgd_acc']:.2%}"
        if "heldout_pgd_acc" in entry
        else ""
    )
    return (
        f"epoch {entry['epoch']}/{epochs}  loss {entry['loss']:.4f}  "
        f"clean acc {entry['clean_acc']:.2%}"
        + (f"  train robust acc {robust:.2%}" if robust is not None else "")
        + held
        + f"  {entry['seconds']:.1f} s ({entry['images_per_s']:.0f} images/s)"
    )


def _run_epoch(loop: Loop, epoch: int, bar: tqdm, log: Log) -> None:
    """Train one epoch, measure it, save the training state and the log, then report it."""
    started = time.perf_counter()
    loss_sum, seen = _train_epoch(loop, epoch, bar)
    entry = _epoch_entry(loop, epoch, loss_sum, seen, time.perf_counter() - started)
    warning = None
    if loop.monitor is not None:
        if loop.monitor.update(epoch, loop.p.model):
            warning = loop.monitor.warning(epoch)
        entry["heldout_fgsm_acc"], entry["heldout_pgd_acc"] = (
            loop.monitor.fgsm[-1],
            loop.monitor.pgd[-1],
        )
    loop.progress.epoch = epoch
    loop.progress.log.append(entry)
    loop.progress.seconds += time.perf_counter() - started
    save_state(loop)  # first: the epoch counts once its state is on disk
    checkpoint.write_log(loop.p.run_dir, loop.progress.log)
    _end_bar_line(bar)
    log(_epoch_line(entry, loop.p.cfg.epochs))
    if warning:
        log(warning)


def _end_bar_line(bar: tqdm) -> None:
    """Where the bar writes to a file, not a terminal, its last state ends without a newline:
    end that line, so that the epoch line that follows starts one of its own."""
    if not bar.disable and not (hasattr(bar.fp, "isatty") and bar.fp.isatty()):
        bar.fp.write("\n")


def _bar(loop: Loop, show_progress: bool) -> tqdm:
    cfg, steps = loop.p.cfg, loop.steps_per_epoch
    return tqdm(
        total=cfg.epochs * steps,
        initial=loop.progress.epoch * steps,
        desc=f"train {cfg.defense}",
        unit="batch",
        disable=not show_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _fit(loop: Loop, show_progress: bool, log: Log) -> Path:
    """Say the plan, train the remaining epochs, then write the weights and the run record."""
    cfg, p = loop.p.cfg, loop.p
    log(plan_line(loop))
    bar = _bar(loop, show_progress)
    loop.timer = _timer(loop, bar, log)
    p.defense.attach(p.model)
    try:
        for epoch in range(loop.progress.epoch + 1, cfg.epochs + 1):
            _run_epoch(loop, epoch, bar, log)
    finally:
        bar.close()
        p.defense.detach()
    return _finish(loop)


def _finish(loop: Loop) -> Path:
    """The weights and the run record (``complete``: true); returns the checkpoint directory."""
    p = loop.p
    run: dict[str, Any] = {
        "versions": library_versions(),
        "device": device_label(p.device),
        "train_seconds": loop.progress.seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "final": loop.progress.log[-1],
    }
    if loop.progress.resumes:
        run["resumed"] = loop.progress.resumes
    if loop.monitor is not None:
        run["catastrophic_overfitting"] = loop.monitor.record()
    return checkpoint.write_final(p.run_dir, p.model, run)


def train(cfg: TrainConfig, progress: bool = True, log: Log = _stderr) -> Path:
    """Train ``cfg`` and write its checkpoint; returns the checkpoint directory."""
    p = prepare(cfg)  # seeds torch's global generators, which the defenses draw from
    loop = _make_loop(p)
    create_run_dir(p.run_dir)
    with resume_hint(p.run_dir, cfg.device):
        # run.json first: whenever config.json is there (a run to list), it says "complete": false.
        checkpoint.write_run(p.run_dir, {"complete": False, "started": _now()})
        checkpoint.write_config(p.run_dir, resolved_config(p))
        return _fit(loop, progress, log)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- training state and resume ----------------------------------------------------------------


def _rng_tensors(loop: Loop) -> dict[str, torch.Tensor]:
    """Every random generator the run draws from, as uint8 tensors: torch's global CPU
    generator (defenses, augmentation on the CPU), the shuffle generator, and each CUDA
    device's generator when CUDA is in use (defenses and augmentation on the GPU)."""
    out = {"rng/cpu": torch.get_rng_state(), "rng/shuffle": loop.shuffle.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda/{i}"] = state
    return out


def save_state(loop: Loop) -> None:
    """The training state after ``loop.progress.epoch`` epochs (see :mod:`bench.checkpoint`)."""
    tensors = {f"model/{k}": v for k, v in checkpoint.cpu_state(loop.p.model).items()}
    optim_tensors, optim_meta = checkpoint.optimizer_tensors(loop.optimizer)
    tensors.update(optim_tensors)
    tensors.update(_rng_tensors(loop))
    prog = loop.progress
    meta = {
        "epoch": prog.epoch,
        "epochs": loop.p.cfg.epochs,
        "iteration": prog.epoch * loop.steps_per_epoch,  # the schedule's position
        "steps_per_epoch": loop.steps_per_epoch,
        "log": prog.log,
        "train_seconds": prog.seconds,
        "resumes": prog.resumes,
        "optimizer": optim_meta,
        "device": device_label(loop.p.device),
        "catastrophic_overfitting": loop.monitor.record() if loop.monitor is not None else None,
    }
    checkpoint.write_state(loop.p.run_dir, tensors, meta)


def _restore_rng(loop: Loop, tensors: dict[str, torch.Tensor], log: Log) -> None:
    torch.set_rng_state(tensors["rng/cpu"])
    loop.shuffle.set_state(tensors["rng/shuffle"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or loop.p.device.type == "cuda":
        log(
            "note: the saved CUDA generator states don't match this machine; the resumed run "
            "will not repeat the uninterrupted one exactly"
        )


def restore_state(
    loop: Loop, tensors: dict[str, torch.Tensor], meta: dict[str, Any], log: Log
) -> None:
    """Put a run back where its training state says: weights, optimizer, generators, progress."""
    if meta["steps_per_epoch"] != loop.steps_per_epoch or meta["epochs"] != loop.p.cfg.epochs:
        raise UsageError(f"training state of {loop.p.run_dir} does not match its config.json")
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    checkpoint.load_state(loop.p.model, model_state, f"{loop.p.cfg.model} ({loop.p.run_dir.name})")
    checkpoint.restore_optimizer(loop.optimizer, tensors, meta["optimizer"])
    _restore_rng(loop, tensors, log)
    loop.progress = Progress(
        meta["epoch"], list(meta["log"]), float(meta["train_seconds"]), list(meta["resumes"])
    )
    if loop.monitor is not None and meta.get("catastrophic_overfitting"):
        loop.monitor.restore(meta["catastrophic_overfitting"])


def _as_text(value: Any) -> str:
    """A saved defense parameter back as the string the command line would give."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


# The saved settings a resumed run must reproduce exactly (else its weights would differ).
_SAME_ON_RESUME = (
    "dataset",
    "model",
    "defense",
    "defense_params",
    "defense_resolved",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "seed",
    "train_limit",
    "eval_n",
    "augment",
    "dataset_info",
    "train_size",
    "augment_mode",
    "heldout",
)


def config_from_saved(saved: dict[str, Any], run_dir: Path, **overrides: Any) -> TrainConfig:
    """The TrainConfig that a run's config.json describes, placed at ``run_dir``."""
    names = set(TrainConfig.__dataclass_fields__) - {
        "out_dir",
        "run_id",
        "device",
        "defense_params",
    }
    kwargs = {k: saved[k] for k in names if k in saved}
    if "augment" in saved:
        kwargs["augment"] = checkpoint.requested_augment(saved)
    kwargs["defense_params"] = {
        k: _as_text(v) for k, v in (saved.get("defense_params") or {}).items()
    }
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**kwargs, out_dir=str(run_dir.parent), run_id=run_dir.name)
    except TypeError as exc:
        raise UsageError(f"{run_dir / checkpoint.CONFIG} can't be resumed: {exc}") from None


def _from_before_norms(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``saved`` as today's code records it, for a run saved before defenses had a ``norm``:
    such a run trained under Linf (the norm's default), and the step it used was recorded by
    the step rules it had (FGSM-AT's, since added, is filled in from ``now``)."""
    params, now_params = saved.get("defense_params") or {}, now.get("defense_params") or {}
    if "norm" in params or now_params.get("norm") != LINF:
        return saved
    resolved = {**now.get("defense_resolved", {}), **(saved.get("defense_resolved") or {})}
    return {**saved, "defense_params": {**params, "norm": LINF}, "defense_resolved": resolved}


_WHY_LACKING = "edited, or saved by another version of bench?"


def _difference(key: str, saved: Any, now: Any) -> str:
    """How a saved setting differs from what the run resolves to now, naming the innermost
    key (``dataset_info.channels``), or the keys config.json lacks."""
    if isinstance(saved, dict) and isinstance(now, dict):
        lacking = [f"{key}.{k}" for k in now if k not in saved]
        if lacking:
            return f"its {checkpoint.CONFIG} lacks {', '.join(lacking)} ({_WHY_LACKING})"
        inner = next((k for k in {**saved, **now} if saved.get(k) != now.get(k)), None)
        if inner is None:  # equal but for keys config.json holds as null and bench does not write
            extra = [f"{key}.{k}" for k in saved if k not in now]
            return (
                f"its {checkpoint.CONFIG} has {', '.join(extra)}, which this bench does not write"
            )
        return _difference(f"{key}.{inner}", saved.get(inner), now.get(inner))
    return f"{key} now resolves to {now!r}, not the saved {saved!r} (changed code or data?)"


def _check_same(saved: dict[str, Any], now: dict[str, Any], run_dir: Path) -> None:
    """The rebuilt run resolves to the saved configuration (same code, same data); a key
    config.json lacks is named as missing."""
    plain = json.loads(json.dumps(now))  # tuples -> lists, as saved
    saved = checkpoint.with_applied_augment(_from_before_norms(saved, plain))
    lacking = [k for k in _SAME_ON_RESUME if k in plain and k not in saved]
    if lacking:
        raise UsageError(
            f"can't resume {run_dir}: its {checkpoint.CONFIG} lacks {', '.join(lacking)} "
            f"({_WHY_LACKING})"
        )
    for key in _SAME_ON_RESUME:
        if saved.get(key) != plain.get(key):
            raise UsageError(
                f"can't resume {run_dir}: {_difference(key, saved.get(key), plain.get(key))}"
            )


def prepare_resume(
    run_dir: str | Path,
    device: str | None = None,
    data_dir: str | None = None,
    download: bool | None = None,
) -> tuple[Prepared, dict[str, Any]]:
    """Validate an incomplete run for :func:`resume`: its config.json, data and training
    state; returns the prepared run and its saved configuration. Writes nothing."""
    d = paths.resolve(run_dir, "--resume")
    if not d.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    saved = checkpoint.read_config(d)
    if checkpoint.is_complete(d):
        raise UsageError(
            f"--resume {d}: this run is complete (it has its final weights); nothing to resume"
        )
    if checkpoint.lost_weights(d) is not None:  # finished, then lost its weights: no state left
        raise UsageError(f"--resume {d}: {checkpoint.not_complete_message(d)}")
    cfg = config_from_saved(saved, d, device=device, data_dir=data_dir, download=download)
    p = prepare(cfg, resuming=True)
    _check_same(saved, resolved_config(p), d)
    return p, saved


def resume(
    run_dir: str | Path,
    device: str | None = None,
    data_dir: str | None = None,
    download: bool | None = None,
    progress: bool = True,
    log: Log = _stderr,
) -> Path:
    """Continue an interrupted run from its last completed epoch (from the start when it was
    stopped before one ended), with the config.json stored in ``run_dir``; returns the
    checkpoint directory. ``device``, ``data_dir`` and ``download`` may differ from the first
    session; nothing else can."""
    p, _saved = prepare_resume(run_dir, device, data_dir, download)
    loop = _make_loop(p)
    if (p.run_dir / checkpoint.STATE).is_file():
        tensors, meta = checkpoint.read_state(p.run_dir)
        restore_state(loop, tensors, meta, log)
    loop.progress.resumes.append({"from_epoch": loop.progress.epoch, "at": _now()})
    log(f"resuming {p.run_dir.name} after epoch {loop.progress.epoch} of {p.cfg.epochs}")
    with resume_hint(p.run_dir, device):
        return _fit(loop, progress, log)
