"""Checkpoints: ``checkpoints/<run-id>/`` with the weights and everything needed to trust them.

Files, each written atomically:
  ``weights.pt``  the model's ``state_dict`` (tensors only: loaded with ``weights_only=True``)
  ``config.json`` the fully resolved configuration: data set (with its shape), model, defense and
                  every hyperparameter, optimizer, schedule, seed, epochs, train limit
  ``run.json``    library versions, device, training time, final clean accuracy
  ``log.json``    the per-epoch log (loss, clean accuracy, training robust accuracy)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.io import atomic_torch_save, atomic_write_json

WEIGHTS, CONFIG, RUN, LOG = "weights.pt", "config.json", "run.json", "log.json"


@dataclass
class Checkpoint:
    """A checkpoint directory read back: its configuration, run record and per-epoch log."""

    path: Path
    config: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)

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

    def build_model(self) -> nn.Module:
        """A fresh model of this checkpoint's architecture for its data set (untrained)."""
        from models import create_model

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
        weights = self.path / WEIGHTS
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"checkpoint {self.path} has no {WEIGHTS} (training did not finish?)") from None
        except Exception as exc:  # a truncated or foreign file: never fall back to full unpickling
            raise UsageError(f"checkpoint {weights} can't be read as weights: {exc}".splitlines()[0]) from None
        if not isinstance(state, dict):
            raise UsageError(f"checkpoint {weights} does not hold a state_dict")
        load_state(model, state, f"{self.model_name} ({self.path.name})")
        return model.to(device).eval()


def load_state(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """``load_state_dict`` with a one-line UsageError naming missing, unexpected or misshapen keys."""
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


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory (or its ``weights.pt``); missing or corrupt is a UsageError."""
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.name == WEIGHTS:
        p = p.parent
    if not p.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if not p.is_dir():
        raise UsageError(f"checkpoint {path} is not a checkpoint directory")
    config = _read_json(p / CONFIG, required=True)
    needed = {"run_id", "dataset", "model", "defense", "dataset_info"}
    if not isinstance(config, dict) or not needed <= set(config):
        raise UsageError(f"{p / CONFIG} lacks {sorted(needed - set(config or {}))}: corrupt checkpoint")
    if not (p / WEIGHTS).is_file():
        raise UsageError(f"checkpoint {p} has no {WEIGHTS} (training did not finish?)")
    run = _read_json(p / RUN, required=False) or {}
    log = _read_json(p / LOG, required=False) or []
    return Checkpoint(p, config, run, log)


def find_checkpoints(root: str | Path) -> list[Path]:
    """Every finished checkpoint directory under ``root`` (at any depth, e.g. ``quick/``),
    sorted by path. A checkpoint directory is not searched further."""
    r = Path(root)
    if not r.is_dir():
        return []
    found: list[Path] = []
    for d in sorted(p for p in r.iterdir() if p.is_dir()):
        if (d / CONFIG).is_file():
            if (d / WEIGHTS).is_file():
                found.append(d)
        elif not d.is_symlink():  # a linked checkpoint counts; a linked tree is not walked (loops)
            found.extend(find_checkpoints(d))
    return found


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """The resolved configuration, written first so that a partial run can be identified."""
    atomic_write_json(run_dir / CONFIG, config)


def write_log(run_dir: Path, log: list[dict[str, Any]]) -> None:
    """The per-epoch log, rewritten whole after each epoch."""
    atomic_write_json(run_dir / LOG, log)


def write_final(run_dir: Path, model: nn.Module, run: dict[str, Any]) -> Path:
    """The weights (CPU tensors) and the run record; returns the checkpoint directory."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(run_dir / WEIGHTS, state)
    atomic_write_json(run_dir / RUN, run)
    return run_dir
