"""Checkpoints: ``checkpoints/<run-id>/`` with the weights and everything needed to trust them.

Files, each written atomically:
  ``weights.safetensors`` the model's ``state_dict`` (safetensors: raw tensors, no pickle). Old
                  checkpoints hold ``weights.pt`` instead, read with
                  ``torch.load(weights_only=True)``; a pickle that would build anything but
                  tensors is refused, nothing executed.
  ``config.json`` the fully resolved configuration: data set (with its shape), model, defense and
                  every hyperparameter, optimizer, schedule, seed, epochs, train limit
  ``run.json``    ``"complete": false`` while training; at the end library versions, device,
                  training time, final log entry, ``"complete": true``
  ``log.json``    the per-epoch log (loss, clean accuracy, training robust accuracy)
  ``state.safetensors`` the training state after the last completed epoch, present only while
                  the run is unfinished (see below)

Training state (resumable training, ``bench train --resume RUN_DIR``): after every epoch one
safetensors file holds the tensors -- model state (``model/<key>``), optimizer state tensors
(``optim/<param index>/<key>``) and random generator states as uint8 tensors (``rng/cpu``,
``rng/shuffle``, ``rng/cuda/<i>``) -- and, in its header's metadata under ``bench_state``, a JSON
document with the rest (epochs done, schedule position, epoch log, optimizer settings, elapsed
time, catastrophic-overfitting history). One file, so one atomic replace covers both parts.

A run is *complete* when it has a weights file and no training state: the weights are written
first, then run.json, and the training state is deleted last (it is not kept: it holds a second
copy of the weights plus the optimizer's momentum). A run directory with a config.json that is
not complete is *incomplete*: :func:`find_incomplete` lists those, :func:`find_checkpoints`
skips them, and :func:`read_checkpoint` refuses them with the command that resumes them -- except
a run whose run.json says it finished but whose weights file is gone (missing, a broken link):
there is nothing left to resume from, and the message says what is wrong with the file.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch
from torch import nn

from bench.errors import UsageError
from bench.io import atomic_write_bytes, atomic_write_json
from bench.models import create_model
from bench.weights import fingerprint_state

WEIGHTS, LEGACY_WEIGHTS = "weights.safetensors", "weights.pt"
CONFIG, RUN, LOG, STATE = "config.json", "run.json", "log.json", "state.safetensors"
STATE_KEY = "bench_state"  # the safetensors metadata entry that holds the JSON part
STATE_FORMAT = 1


@dataclass
class Checkpoint:
    """A checkpoint directory read back: its configuration, run record and per-epoch log."""

    path: Path
    config: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def run_id(self) -> str:
        return str(self.config["run_id"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def model_name(self) -> str:
        return str(self.config["model"])

    @property
    def defense(self) -> str:
        return str(self.config["defense"])

    @property
    def weights_path(self) -> Path:
        """``weights.safetensors``, else the legacy ``weights.pt``."""
        return weights_file(self.path) or self.path / WEIGHTS

    @property
    def fingerprint(self) -> str:
        """``sha256:...`` of the loaded weights (:func:`bench.weights.fingerprint_state`): the
        same whichever file format holds them."""
        if self._fingerprint is None:
            self.load_state()
        assert self._fingerprint is not None
        return self._fingerprint

    def load_state(self) -> dict[str, torch.Tensor]:
        """The weights as CPU tensors; sets :attr:`fingerprint`. Unreadable is a UsageError."""
        state = load_weights(self.weights_path)
        self._fingerprint = fingerprint_state(state)
        return state

    def build_model(self) -> nn.Module:
        """A fresh model of this checkpoint's architecture for its data set (untrained)."""
        info = self.config["dataset_info"]
        return create_model(
            self.model_name,
            channels=info["channels"],
            num_classes=info["num_classes"],
            image_size=info["image_size"],
            mean=info["mean"],
            std=info["std"],
        )

    def load_model(self, device: torch.device | str = "cpu") -> nn.Module:
        """The trained model in eval mode on ``device``; weights that don't fit are a UsageError."""
        model = self.build_model()
        load_state(model, self.load_state(), f"{self.model_name} ({self.path.name})")
        return model.to(device).eval()


def weights_file(run_dir: Path) -> Path | None:
    """The weights file of a run directory (safetensors first), or None."""
    for name in (WEIGHTS, LEGACY_WEIGHTS):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def _check_readable(path: Path) -> None:
    """Open ``path`` here: the safetensors library reports a file it may not read as "No such
    file or directory"."""
    try:
        with path.open("rb"):
            pass
    except PermissionError:
        raise UsageError(f"checkpoint {path} can't be read: permission denied") from None
    except OSError as exc:
        raise UsageError(f"checkpoint {path} can't be read: {exc.strerror or exc}") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``weights.safetensors`` or a legacy ``weights.pt``, as CPU tensors.

    Never unpickles freely: ``.pt`` goes through ``torch.load(weights_only=True)``, whose
    unpickler builds only tensors and plain containers; anything else is a one-line UsageError."""
    if not path.is_file():
        problem = file_problem(path) or "is not a regular file"
        raise UsageError(f"checkpoint {path.parent}: its weights file {path.name} {problem}")
    _check_readable(path)
    try:
        if path.suffix == ".safetensors":
            state: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch's notes on odd pickles: the error says enough
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # truncated or garbled, not a forbidden object
            raise UsageError(f"checkpoint {path} is corrupt: {exc}".splitlines()[0]) from None
        raise UsageError(
            f"checkpoint {path} is a pickle that asks to run code or build non-tensor objects; "
            "refused (bench loads weights with weights_only=True)"
        ) from None
    except Exception as exc:  # a truncated or foreign file: never fall back to full unpickling
        raise UsageError(
            f"checkpoint {path} can't be read as weights: {exc}".splitlines()[0]
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"checkpoint {path} does not hold a state_dict of tensors")
    return state


def load_state(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """``load_state_dict`` with a one-line UsageError naming missing, unexpected or misshapen
    keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if misshapen:
            parts.append(f"{len(misshapen)} shape mismatches (e.g. {misshapen[0]})")
        raise UsageError(f"weights don't fit model {what}: " + "; ".join(parts))
    model.load_state_dict(state)


def _read_json(path: Path, required: bool) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise UsageError(f"{path} is missing: not a bench checkpoint") from None
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt ({exc.__class__.__name__}: {exc})") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file: corrupt checkpoint") from None
    except OSError as exc:
        raise UsageError(f"{path} can't be read: {exc.strerror or exc}") from None


#: The keys of config.json every reader needs, and those of its ``dataset_info``.
NEEDED = ("run_id", "dataset", "model", "defense", "dataset_info")
NEEDED_INFO = ("channels", "image_size", "num_classes", "mean", "std")


def _lacking(config: dict[str, Any]) -> list[str]:
    """The needed keys ``config`` lacks, exactly (``dataset_info.std`` for one inside)."""
    lacking = [k for k in NEEDED if k not in config]
    info = config.get("dataset_info")
    if isinstance(info, dict):
        lacking += [f"dataset_info.{k}" for k in NEEDED_INFO if k not in info]
    return lacking


def requested_augment(config: Mapping[str, Any]) -> bool:
    """Whether the run asked for its data set's augmentation (false only with --no-augment).
    ``augment_requested`` says it; a run saved before that key has it in ``augment``."""
    return bool(config.get("augment_requested", config.get("augment", True)))


def with_applied_augment(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as today's bench writes it: ``augment`` is what training applied and
    ``augment_requested`` what was asked. A run saved when ``augment`` held the request (true
    even for the MNISTs, which have nothing to apply) is rewritten, so that it resumes, matches
    its sweep job and groups with newer seeds of its configuration."""
    if "augment_requested" in config or "augment" not in config or "augment_mode" not in config:
        return config
    applied = config["augment_mode"] != "none"
    return {**config, "augment": applied, "augment_requested": config["augment"]}


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run directory's config.json, checked for the keys every reader needs."""
    path = run_dir / CONFIG
    config = _read_json(path, required=True)
    if not isinstance(config, dict):
        raise UsageError(
            f"{path} lacks the object of settings bench writes (it holds a JSON "
            f"{type(config).__name__}): corrupt checkpoint"
        )
    info = config.get("dataset_info")
    if info is not None and not isinstance(info, dict):
        raise UsageError(
            f"{path} is corrupt: its dataset_info is a JSON {type(info).__name__}, not an object"
        )
    lacking = _lacking(config)
    if lacking:
        raise UsageError(f"{path} lacks {lacking}: corrupt checkpoint")
    return config


def is_complete(run_dir: Path) -> bool:
    """Finished training: a weights file and no training state."""
    return weights_file(run_dir) is not None and not (run_dir / STATE).exists()


def resume_command(run_dir: Path, device: str | None = None) -> str:
    """The command that continues an incomplete run (shell-quoted; with ``--device`` when the
    run was given one: config.json does not keep it)."""
    command = f"bench train --resume {shlex.quote(str(run_dir))}"
    return command + (f" --device {shlex.quote(device)}" if device else "")


def incomplete_message(run_dir: Path, device: str | None = None) -> str:
    """One line: the run is incomplete, how far it got, and the exact command to resume it."""
    meta = read_state_meta(run_dir) if (run_dir / STATE).is_file() else None
    if meta is not None:
        where = f"stopped after epoch {meta.get('epoch')} of {meta.get('epochs')}"
    else:
        where = "stopped before its first epoch ended"
    return (
        f"checkpoint {run_dir} is incomplete (training {where}); "
        f"resume it with: {resume_command(run_dir, device)}"
    )


def file_problem(path: Path) -> str | None:
    """What keeps ``path`` from being read as a file, in words (``is missing``, ``is a symlink
    loop``, ``is a broken symlink (to X)``, ``is a directory``), or None when it is a file."""
    if path.is_symlink():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symlink loop"
            return f"is a broken symlink (to {os.readlink(path)})"
    if not path.exists():
        return "is missing"
    return None if path.is_file() else "is a directory, not a file"


def lost_weights(run_dir: Path) -> str | None:
    """For a run that finished (run.json says complete, its log.json is there, no training
    state) but has no weights file to read: what is wrong with that file, in words; else None."""
    if weights_file(run_dir) is not None or (run_dir / STATE).exists():
        return None
    if not (run_dir / LOG).is_file():  # no epoch on record: nothing finished to lose
        return None
    run = _read_json(run_dir / RUN, required=False)
    if not (isinstance(run, dict) and run.get("complete") is True):
        return None
    names = [n for n in (WEIGHTS, LEGACY_WEIGHTS) if os.path.lexists(run_dir / n)]
    path = run_dir / (names[0] if names else WEIGHTS)
    return f"{path} {file_problem(path) or 'is not a regular file'}"


def not_complete_message(run_dir: Path) -> str:
    """Why a run directory is not a finished checkpoint, and what to do, in one line (a
    corrupt run.json or training state: what is wrong with it)."""
    try:
        lost = lost_weights(run_dir)
        if lost is None:
            return incomplete_message(run_dir)
    except UsageError as exc:
        return str(exc)
    return (
        f"checkpoint {run_dir} finished training (run.json says complete) but its weights file "
        f"{lost}: restore that file; there is no training state left to resume from"
    )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a finished checkpoint directory (or its weights file); missing, corrupt or
    incomplete is a UsageError (incomplete: with the ``bench train --resume`` command)."""
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.name in (WEIGHTS, LEGACY_WEIGHTS):
        p = p.parent
    if not p.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if not p.is_dir():
        raise UsageError(f"checkpoint {path} is not a checkpoint directory")
    config = read_config(p)
    if not is_complete(p):
        raise UsageError(not_complete_message(p))
    run = _read_json(p / RUN, required=False) or {}
    log = _read_json(p / LOG, required=False) or []
    return Checkpoint(p, config, run, log)


def _walk_runs(root: Path) -> list[Path]:
    """Every directory with a config.json under ``root`` (any depth), sorted by path; a run
    directory is not searched further, a linked one counts but a linked tree is not walked."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if (d / CONFIG).is_file():
            found.append(d)
        elif not d.is_symlink():  # a linked tree is not walked (loops)
            found.extend(_walk_runs(d))
    return found


def find_checkpoints(root: str | Path) -> list[Path]:
    """Every finished checkpoint directory under ``root`` (at any depth, e.g. ``quick/``),
    sorted by path. A checkpoint directory is not searched further."""
    return [d for d in _walk_runs(Path(root)) if is_complete(d)]


def find_incomplete(root: str | Path) -> list[Path]:
    """Every run directory under ``root`` that is not a finished checkpoint, sorted by path;
    found as :func:`find_checkpoints` does. Most are resumable (``bench train --resume PATH``);
    :func:`not_complete_message` says which are not (a finished run that lost its weights)."""
    return [d for d in _walk_runs(Path(root)) if not is_complete(d)]


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """The resolved configuration, written first so that a partial run can be identified."""
    atomic_write_json(run_dir / CONFIG, config)


def write_run(run_dir: Path, run: dict[str, Any]) -> None:
    """The run record (``complete`` false while training)."""
    atomic_write_json(run_dir / RUN, run)


def write_log(run_dir: Path, log: list[dict[str, Any]]) -> None:
    """The per-epoch log, rewritten whole after each epoch."""
    atomic_write_json(run_dir / LOG, log)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU copies (safetensors wants contiguous, unshared)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def write_final(run_dir: Path, model: nn.Module, run: dict[str, Any]) -> Path:
    """The weights, the run record (``complete``: true), then the training state is deleted;
    returns the checkpoint directory."""
    atomic_write_bytes(run_dir / WEIGHTS, safetensors.torch.save(cpu_state(model)))
    write_run(run_dir, {**run, "complete": True})
    (run_dir / STATE).unlink(missing_ok=True)
    return run_dir


# --- training state -------------------------------------------------------------------------


def write_state(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The training state: ``tensors`` and the JSON ``meta`` in one safetensors file, atomically."""
    data = safetensors.torch.save(
        tensors, metadata={STATE_KEY: json.dumps({"format": STATE_FORMAT, **meta})}
    )
    atomic_write_bytes(run_dir / STATE, data)


def read_state_meta(run_dir: Path) -> dict[str, Any]:
    """The JSON part of the training state (reads the header only)."""
    path = run_dir / STATE
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(STATE_KEY)
        meta = json.loads(text) if text else None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign: one line
        raise UsageError(f"training state {path} can't be read: {exc}".splitlines()[0]) from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise UsageError(
            f"training state {path} is not a bench training state (format {STATE_FORMAT})"
        )
    return meta


def read_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state's tensors (CPU) and JSON part."""
    meta = read_state_meta(run_dir)
    try:
        tensors = safetensors.torch.load_file(str(run_dir / STATE), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise UsageError(
            f"training state {run_dir / STATE} can't be read: {exc}".splitlines()[0]
        ) from None
    return tensors, meta


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state split into tensors (``optim/<index>/<key>``) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    strides: dict[str, list[int]] = {}  # memory layouts, restored so that arithmetic repeats
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                name = f"optim/{index}/{key}"
                tensors[name] = value.detach().to("cpu", copy=True).contiguous()
                strides[name] = list(value.stride())
            else:
                other.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other, "strides": strides}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_tensors`. Each buffer gets its saved memory layout back
    (e.g. channels-last), so the resumed arithmetic runs exactly as it would have."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for index, rest in meta["state"].items():
        state.setdefault(int(index), {}).update(rest)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, stride in meta.get("strides", {}).items():
        _, index, key = name.split("/", 2)
        entry = optimizer.state[params[int(index)]]
        value = entry[key]  # already on the parameter's device and dtype
        entry[key] = torch.empty_strided(
            value.shape, stride, dtype=value.dtype, device=value.device
        ).copy_(value)
