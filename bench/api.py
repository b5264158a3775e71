"""The Python API: evaluate any ``nn.Module`` in one call.

    import bench
    result = bench.evaluate_model(model, dataset="cifar10", n=1000,
                                  attacks=["fgsm", "pgd", "autoattack"], eps="0:8/255:1/255")
    print(result.table())          # accuracies with n and 95% intervals, flags
    result.as_dict()               # run_id, fingerprint, n, seed, eps_grid, norm, ...;
                                   # clean and robust[attack][eps] = {"acc", "ci95", "k", "n"}
                                   # in %; unreliable, corrected, findings (docs/any-model.md)

The model takes NCHW images in [0, 1] and returns logits (normalization inside the model, as in
RobustBench). Points are the first ``n`` of the data set's test split, or ``x``/``y`` given
directly (the table then says the points are the caller's). Results go to a store (and so to
``bench report``) only when ``store`` is given. Errors are :class:`~bench.errors.UsageError`
naming the keyword at fault (``n must be ...``), as the command line names its flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from bench.attacks import ATTACKS, Attack, attack_names, make_attacks
from bench.commands.eval import eps_grid_for
from bench.errors import UsageError
from bench.evaluation.local import evaluate_target
from bench.evaluation.outcome import Evaluation
from bench.evaluation.plan import Settings, check_settings
from bench.evaluation.targets import Target, attach_points
from bench.io import pick_device
from bench.norms import L1, check_norm
from bench.params import API, parse_eps_grid
from bench.sources import from_module
from bench.store import Store


def _text(value: Any) -> str:
    """A parameter value as the attack's parser reads it (lists comma-separated)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _params(
    params: dict[str, dict[str, Any]] | None, names: list[str]
) -> dict[str, dict[str, str]]:
    """``params`` as text, per attack; every attack it names must be among ``names``."""
    if not isinstance(params or {}, dict):
        raise UsageError("params must be a dict of dicts, e.g. {'pgd': {'steps': 20}}")
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    for name, kv in (params or {}).items():
        ATTACKS[name]  # unknown name -> UsageError listing the valid ones
        if name not in out:
            raise UsageError(f"params names attack {name}, not among attacks {','.join(names)}")
        if not isinstance(kv, dict):
            raise UsageError(f"params[{name!r}] must be a dict, e.g. {{'steps': 20}}")
        out[name] = {str(k).replace("-", "_"): _text(v) for k, v in kv.items()}
    return out


def _attacks(
    attacks: Sequence[str] | str, params: dict[str, dict[str, Any]] | None, norm: str
) -> list[Attack]:
    """The attacks made for ``norm`` with their ``params`` (UsageError if any is bad)."""
    names = attack_names([attacks] if isinstance(attacks, str) else list(attacks), "attacks")
    return make_attacks(names, _params(params, names), norm)


def _grid(eps: str | float | Sequence[float] | None, norm: str, dataset: str) -> list[float]:
    if eps is None:
        return eps_grid_for(None, norm, {dataset})
    if isinstance(eps, str):
        return parse_eps_grid(eps, norm)
    return [float(e) for e in ([eps] if isinstance(eps, (int, float)) else eps)]


def _target(
    model: nn.Module,
    dataset: str,
    name: str,
    n: int,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    data_dir: str | Path | None,
) -> Target:
    source = from_module(model, dataset, name)
    if x is None and y is None:
        return attach_points(source, n, data_dir, download=True, names=API)
    if x is None or y is None or len(x) != len(y):
        raise UsageError("give both x and y, of equal length (or neither, for the test split)")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise UsageError("x must be images in [0, 1] (normalization belongs inside the model)")
    xs, ys = x.detach().cpu().float(), y.detach().cpu().long()
    return Target(source, xs, ys, len(y), given=True)


def evaluate_model(
    model: nn.Module,
    *,
    dataset: str = "fashion-mnist",
    n: int = 1000,
    attacks: Sequence[str] | str | None = None,
    eps: str | float | Sequence[float] | None = None,
    norm: str = "Linf",
    params: dict[str, dict[str, Any]] | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    name: str = "model",
    store: str | Path | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | None = None,
    diagnose: bool = False,
    transfer_from: nn.Module | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate ``model`` with ``attacks`` (default FGSM, PGD and AutoAttack; PGD and AutoAttack
    under L1) over the eps grid ``eps`` (``"0:8/255:1/255"``, a
    number or a list; None: the data set's default grid under ``norm``, 0..8/255 under Linf)
    under threat model ``norm`` (``"Linf"``, ``"L2"`` or ``"L1"``) and return the
    :class:`~bench.evaluate.Evaluation`: per-attack, per-eps
    flags and accuracies with 95% intervals, the worst case, the diagnostics' findings.
    ``params``: attack parameters, e.g. ``{"pgd": {"steps": 20}}``. The always-on probes run
    too (Square; transfer from ``transfer_from`` when given, e.g. a standard model of the data
    set); remedies and probes correct the worst case. Bad input: UsageError."""
    norm = check_norm(norm)
    if store is not None and (x is not None or y is not None):
        # a store's rows are ranked beside test-split evaluations, and points the caller chose
        # can make a model look more robust than the test split would
        raise UsageError(
            "store= keeps evaluations on a data set's test split, which the report ranks; x, y "
            "are your own points: leave out store=, or x and y (then the first n test points)"
        )
    if attacks is None:  # FGSM, PGD and AutoAttack; under L1, which has no FGSM, the last two
        attacks = ("pgd", "autoattack") if norm == L1 else ("fgsm", "pgd", "autoattack")
    settings = Settings(
        _attacks(attacks, params, norm),
        _grid(eps, norm, dataset),
        batch_size,
        seed,
        progress=progress,
        diagnose=diagnose,
        transfer_from=transfer_from,
        norm=norm,
    )
    check_settings(settings.attacks, settings.eps_grid, batch_size, seed, API)
    dev = pick_device(device, API)
    target = _target(model, dataset, name, n, x, y, data_dir)
    if store is None:
        return evaluate_target(target, settings, dev)
    with Store(store) as db:
        db.check_writable()
        return evaluate_target(target, settings, dev, db)
