"""Sources: any model in, one :class:`Source` out, the object the evaluator works on.

Four kinds of model come in:

``checkpoint``  a bench checkpoint directory (:func:`from_checkpoint`), read with
                :mod:`bench.checkpoint`.
``factory``     ``bench eval --model-factory SPEC [--weights FILE] --dataset D``
                (:func:`from_factory`). SPEC is ``package.module:function`` (imported with
                :func:`importlib.import_module`: its folder must be on ``sys.path``, e.g. via
                ``PYTHONPATH``; bench adds nothing) or ``path/to/file.py:function`` (the file is
                imported by path under a private module name; its folder is not put on
                ``sys.path``, so it can import installed packages but not its neighbours). The
                attribute may be dotted (``module:Class.build``). The factory is called with no
                arguments, except that a parameter named ``num_classes`` receives the data set's
                number of classes and one named ``dataset`` its bench name. It must return an
                ``nn.Module``. Weights load without running code from the file: ``.safetensors``
                with the safetensors package, anything else with ``torch.load(weights_only=True)``;
                a plain state dict or a dict holding one under ``"state_dict"`` or ``"model"``
                (a DataParallel ``module.`` prefix is removed).
``robustbench`` an entry of RobustBench's model zoo (:func:`from_robustbench`), loaded by
                robustbench's own ``load_model`` from ``<model_dir>/<dataset>/<threat_model>/
                <name>.pt`` (robustbench downloads it where it is missing and a network exists;
                ``model_dir`` defaults to ``<data dir>/robustbench-models``, never the working
                directory, whose ``./models`` would be bench's own package here).
``module``      an ``nn.Module`` handed over in Python (:func:`from_module`).

Every source's model is checked the same way: in eval mode on the CPU, a zero batch of two
images of the data set's shape must give finite logits of shape ``(2, num_classes)``. Every
bad input is a one-line :class:`~bench.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

import safetensors.torch
import torch
from torch import nn

from bench.checkpoint import load_state, read_checkpoint
from bench.compat import import_robustbench
from bench.data import DatasetInfo, dataset_info
from bench.errors import UsageError
from bench.params import INT_MAX
from bench.paths import data_dir
from bench.vocab import SourceKind
from bench.weights import fingerprint_model

KINDS: tuple[str, ...] = tuple(k.value for k in SourceKind)  # the values, as stored
EXTERNAL = "external"  # the defense of a model bench did not train
CHECK_BATCH = 2  # images in the zero batch every model must classify
SPEC_FORMS = "package.module:function or path/to/file.py:function"
FACTORY_KEYWORDS = ("num_classes", "dataset")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")

# bench data-set names -> RobustBench's BenchmarkDataset values; threat models as spelled there.
ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")


@dataclass
class Source:
    """A model ready for the evaluator, with where it came from and what produced it."""

    model: nn.Module  # eval mode, on the CPU, logits on NCHW images in [0, 1]
    run_id: str  # its label on the leaderboard
    dataset: str  # a name of bench's data-set registry
    fingerprint: str  # bench.weights.fingerprint_model(model) after loading
    kind: str  # one of KINDS
    path: str  # checkpoint directory, factory spec or zoo name
    config: dict[str, Any] = field(default_factory=dict)  # JSON; has dataset, model, defense
    run: dict[str, Any] = field(default_factory=dict)  # run.json-like record

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"source kind {self.kind!r} is not one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------- shared helpers


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain_name(text: str) -> str:
    """A readable label made plain (letters, digits, ``. _ + -``; no leading dot or dash)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip(".-_+")[:128]
    return name or "model"


def _check_name(name: str) -> str:
    """An explicit run id must already be plain: it names files and store rows."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise UsageError(
            f"run id {name!r} must be a plain name (letters, digits, . _ + -, not starting with "
            f". or -), e.g. {plain_name(str(name))!r}"
        )
    return name


def check_logits(model: nn.Module, info: DatasetInfo, what: str) -> None:
    """A zero batch of ``info``'s shape must give finite logits ``(2, num_classes)``."""
    shape = (CHECK_BATCH, info.channels, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises becomes one line
        raise UsageError(
            f"{what} can't take {info.name} images {list(shape)}: {_one_line(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{what} returns a {type(out).__name__}, not a tensor of logits")
    expected = (CHECK_BATCH, info.num_classes)
    if tuple(out.shape) != expected:
        raise UsageError(
            f"{what} gives logits of shape {tuple(out.shape)} for {CHECK_BATCH} {info.name} "
            f"images; expected {expected} ({info.num_classes} classes)"
        )
    if not bool(torch.isfinite(out).all()):
        raise UsageError(f"{what} gives non-finite logits (nan or inf) on an all-zero batch")


def _finish(model: nn.Module, info: DatasetInfo, what: str, **fields_: Any) -> Source:
    """Eval mode, CPU, fingerprint, the logits check, then the :class:`Source`."""
    model = model.to("cpu").eval()
    fingerprint = fingerprint_model(model)
    check_logits(model, info, what)
    return Source(model=model, dataset=info.name, fingerprint=fingerprint, **fields_)


# ----------------------------------------------------------------------------- checkpoint, module


def from_checkpoint(path: str | os.PathLike[str]) -> Source:
    """A finished bench checkpoint directory (or its weights file) as a Source.

    Missing, corrupt or incomplete checkpoints and weights that don't fit are UsageErrors
    raised by :mod:`bench.checkpoint`."""
    try:
        ckpt = read_checkpoint(path)
    except OSError as exc:  # e.g. config.json is a directory
        raise UsageError(f"checkpoint {path} can't be read: {_one_line(exc)}") from None
    if not isinstance(ckpt.run, dict):
        raise UsageError(
            f"{ckpt.path / 'run.json'} holds a JSON {type(ckpt.run).__name__}, not an "
            "object: corrupt checkpoint"
        )
    _check_recorded_numbers(ckpt.path, ckpt.config, ckpt.run)
    try:
        model = ckpt.load_model("cpu")
        info = dataset_info(ckpt.dataset)
    except UsageError:  # already one line (an unknown name is also a KeyError)
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # wrong-typed config keys
        raise UsageError(f"{ckpt.path / 'config.json'} is corrupt ({_one_line(exc)})") from None
    return _finish(
        model,
        info,
        f"checkpoint {ckpt.path}",
        run_id=ckpt.run_id,
        kind=SourceKind.CHECKPOINT,
        path=str(ckpt.path),
        config=dict(ckpt.config),
        run=dict(ckpt.run),
    )


def _check_recorded_numbers(path: Path, config: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """The numbers the store records from a checkpoint (epochs, train limit, training time)
    must be absent or usable: whole numbers that fit SQLite's INTEGER, a finite time."""
    for key in ("epochs", "train_limit"):
        value = config.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT_MAX
        ):
            raise UsageError(
                f"{path / 'config.json'}: {key} {_short_repr(value)} is not a whole "
                f"number in 0..{INT_MAX}: corrupt checkpoint"
            )
    seconds = run.get("train_seconds")
    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
    ):
        raise UsageError(
            f"{path / 'run.json'}: train_seconds {_short_repr(seconds)} is not a "
            "finite number: corrupt checkpoint"
        )


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_module(model: nn.Module, dataset: str, name: str) -> Source:
    """An ``nn.Module`` given in Python (moved to the CPU and put in eval mode, in place)
    that classifies images of ``dataset``; ``name`` is its run id and must be plain."""
    info = dataset_info(dataset)
    run_id = _check_name(name)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {name!r} is a {type(model).__name__}, not a torch.nn.Module")
    cls = type(model)
    config = {
        "dataset": dataset,
        "model": cls.__name__,
        "defense": EXTERNAL,
        "module": f"{cls.__module__}.{cls.__qualname__}",
        "run_id": run_id,
    }
    return _finish(
        model,
        info,
        f"model {name!r}",
        run_id=run_id,
        kind=SourceKind.MODULE,
        path=f"module:{config['module']}",
        config=config,
        run={},
    )


# ----------------------------------------------------------------------------- factories


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``(module or file, attribute, is_file)`` from ``package.module:function`` or
    ``path/to/file.py:function`` (the last colon splits, so ``C:\\x.py:f`` works)."""
    target, sep, attr = str(spec).rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    ok_attr = bool(attr) and all(p.isidentifier() for p in attr.split("."))
    ok_target = bool(target) and (is_file or all(p.isidentifier() for p in target.split(".")))
    if not (sep and ok_attr and ok_target):
        raise UsageError(f"model factory {spec!r} must be written {SPEC_FORMS}")
    return target, attr, is_file


def _file_hint(module: str, attr: str) -> str:
    """When ``a.b`` can't be imported but ``a/b.py`` exists here, the path spec that works."""
    candidate = Path(*module.split(".")).with_suffix(".py")
    if candidate.is_file():
        return f"; {candidate} exists here: use --model-factory {candidate.as_posix()}:{attr}"
    return "; is its folder on PYTHONPATH?"


def _import_module(module: str, attr: str) -> ModuleType:
    """``importlib.import_module``; any failure is one line naming the module."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError or whatever the module raises
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        hint = (
            _file_hint(module, attr) if missing and (module + ".").startswith(missing + ".") else ""
        )
        raise UsageError(
            f"model factory module {module!r} can't be imported ({_one_line(exc)}){hint}"
        ) from None


def _import_file(target: str) -> ModuleType:
    """Import ``path/to/file.py`` under a private name derived from its resolved path."""
    path = Path(target).expanduser()
    if not path.is_file():
        raise UsageError(f"model factory file {target} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", resolved.stem)
    name = f"_bench_factory_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"model factory file {target} is not a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that classes defined there can be found by their module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(name, None)
        raise UsageError(
            f"model factory file {target} can't be imported ({_one_line(exc)})"
        ) from None
    return module


def _functions_of(module: ModuleType) -> list[str]:
    """Public callables defined in ``module`` itself (for error messages)."""
    return sorted(
        k
        for k, v in vars(module).items()
        if not k.startswith("_")
        and callable(v)
        and getattr(v, "__module__", None) == module.__name__
    )


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable a factory spec names; UsageError when it can't be imported, is missing or
    is not callable."""
    target, attr, is_file = parse_spec(spec)
    module = _import_file(target) if is_file else _import_module(target, attr)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            there = _functions_of(module)[:8]
            listed = f"; callables there: {', '.join(there)}" if there else ""
            raise UsageError(f"model factory {spec!r}: {target} has no attribute {attr!r}{listed}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"model factory {spec!r}: {attr} is a {type(obj).__name__}, not callable")
    return obj


def factory_kwargs(fn: Callable[..., Any], info: DatasetInfo) -> dict[str, Any]:
    """``num_classes`` and ``dataset`` for the factory parameters of those names, else nothing."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return {}
    values = {"num_classes": info.num_classes, "dataset": info.name}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: values[k] for k in FACTORY_KEYWORDS if k in params and params[k].kind in named}


def call_factory(fn: Callable[..., Any], spec: str, info: DatasetInfo) -> nn.Module:
    """Call the factory; it must return an ``nn.Module``."""
    try:
        model = fn(**factory_kwargs(fn, info))
    except Exception as exc:  # noqa: BLE001 - the factory's own failure, as one line
        raise UsageError(f"model factory {spec!r} raised {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _read_weights_file(path: Path) -> Any:
    """The file's content, never running code: safetensors, or torch.load(weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise unpickling_error(exc, f"weights {path}") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign: never fall back to full pickle
        raise UsageError(f"weights {path} can't be read: {_one_line(exc)}") from None


def unpickling_error(exc: pickle.UnpicklingError, what: str) -> UsageError:
    """torch's weights-only unpickler failed: a refused global (code), or a corrupt pickle."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return UsageError(
            f"{what} are a pickle that asks for {refused.group(1)}; refused (loaded with "
            "weights_only=True: only tensors and plain containers are built, nothing executed; "
            "save model.state_dict(), not the model)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1).strip() if detail else _one_line(exc)
    return UsageError(f"{what} can't be read: not a valid weights pickle ({reason})")


def _is_state(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the one under ``"state_dict"`` or ``"model"``."""
    if _is_state(obj):
        return dict(obj)
    found = f"a {type(obj).__name__}"
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if _is_state(obj.get(key)):
                return dict(obj[key])
        found = f"a dict with keys {sorted(map(str, obj))[:6]}"
    raise UsageError(
        f"weights {path} hold {found}, not a state dict (names to tensors, or a dict holding one "
        "under 'state_dict' or 'model')"
    )


def load_weights_into(model: nn.Module, weights: str | os.PathLike[str], what: str) -> Path:
    """Load a weights file into ``model`` (UsageError if missing, unreadable or misfitting);
    returns the resolved path."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise UsageError(f"weights file {weights} does not exist")
    if not path.is_file():
        raise UsageError(f"weights file {weights} is not a file")
    state = state_dict_of(_read_weights_file(path), path)
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(
        k.startswith("module.") for k in own
    ):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    load_state(model, state, what)
    return path.resolve()


def from_factory(
    spec: str,
    weights: str | os.PathLike[str] | None,
    dataset: str,
    name: str | None = None,
) -> Source:
    """``--model-factory SPEC [--weights FILE] --dataset D`` as a Source.

    The run id is ``name`` (must be plain) or, by default, the function's name, followed by
    ``-<weights file stem>`` when weights are given, made plain."""
    info = dataset_info(dataset)
    _, attr, _ = parse_spec(spec)
    run_id = _check_name(name) if name is not None else _default_factory_id(attr, weights)
    model = call_factory(resolve_factory(spec), spec, info)
    resolved = load_weights_into(model, weights, spec) if weights is not None else None
    config = {
        "factory": spec,
        "weights": None if resolved is None else str(resolved),
        "dataset": dataset,
        "model": spec,
        "defense": EXTERNAL,
        "run_id": run_id,
    }
    return _finish(
        model,
        info,
        f"model factory {spec!r}",
        run_id=run_id,
        kind=SourceKind.FACTORY,
        path=spec,
        config=config,
        run={},
    )


def _default_factory_id(attr: str, weights: str | os.PathLike[str] | None) -> str:
    label = attr.split(".")[-1]
    return plain_name(label if weights is None else f"{label}-{Path(weights).stem}")


# ----------------------------------------------------------------------------- RobustBench


def robustbench_keys(dataset: str, threat_model: str) -> tuple[str, str]:
    """bench's data-set name and a threat model (any case) as RobustBench spells them."""
    if dataset not in ROBUSTBENCH_DATASETS:
        dataset_info(dataset)  # an unknown name lists bench's data sets
        raise UsageError(
            f"RobustBench's model zoo has no {dataset} models; "
            f"valid: {', '.join(ROBUSTBENCH_DATASETS)}"
        )
    threats = {t.lower(): t for t in ROBUSTBENCH_THREATS}
    if str(threat_model).lower() not in threats:
        raise UsageError(
            f"unknown RobustBench threat model {threat_model!r}; "
            f"valid: {', '.join(ROBUSTBENCH_THREATS)}"
        )
    return ROBUSTBENCH_DATASETS[dataset], threats[str(threat_model).lower()]


def default_zoo_dir() -> Path:
    """Where RobustBench weights go by default: ``<data dir>/robustbench-models`` (the data
    directory follows ``$BENCH_DATA_DIR`` and ``$BENCH_HOME``)."""
    return data_dir() / "robustbench-models"


def _robustbench() -> ModuleType:
    """``robustbench.utils``, imported quietly (it warns about pkg_resources and torch.jit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_robustbench()
        return importlib.import_module("robustbench.utils")


def zoo_entries(ds: str, tm: str) -> dict[str, Any]:
    """RobustBench's registry for one data set and threat model (name -> entry)."""
    _robustbench()
    # here: robustbench is slow to import, and needs the alias _robustbench() sets up first
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    by_threat = model_dicts[BenchmarkDataset(ds)]
    if ThreatModel(tm) not in by_threat:
        have = ", ".join(t.value for t in by_threat)
        raise UsageError(f"RobustBench has no {ds} {tm} models; threat models for {ds}: {have}")
    return dict(by_threat[ThreatModel(tm)])


def _check_zoo_name(name: str, ds: str, tm: str, entries: Mapping[str, Any]) -> None:
    if name in entries:
        return
    names = list(entries)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    shown = close + [n for n in names if n not in close][: 6 - len(close)]
    raise UsageError(
        f"unknown RobustBench {ds} {tm} model {name!r}; valid names include "
        f"{', '.join(shown)} ({len(names)} in all)"
    )


def zoo_weights_paths(
    model_dir: Path, ds: str, tm: str, name: str, entry: Mapping[str, Any]
) -> list[Path]:
    """Where robustbench's load_model reads an entry's weights (ensembles: one file per member)."""
    base = model_dir / ds / tm / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(ids))]
    return [base]


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` that doesn't choose, robustbench's included, runs weights_only."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.pop(k, None) for k in keys}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load_zoo_model(utils: ModuleType, name: str, model_dir: Path, ds: str, tm: str) -> nn.Module:
    """robustbench.utils.load_model, weights_only, its failures as one line."""
    try:
        with _weights_only_loads(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = utils.load_model(
                model_name=name, model_dir=str(model_dir), dataset=ds, threat_model=tm
            )
    except pickle.UnpicklingError as exc:
        raise unpickling_error(exc, f"RobustBench weights of {name} in {model_dir}") from None
    except Exception as exc:  # noqa: BLE001 - download failures, misfits, corrupt files
        raise UsageError(
            f"RobustBench could not load {ds} {tm} model {name} from {model_dir} "
            f"({_one_line(exc)}); "
            f"offline, put its weights at {model_dir / ds / tm / (name + '.pt')}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"RobustBench returned a {type(model).__name__} for {name}, not a model")
    return model


def _number(value: Any, key: str, path: Path) -> float | None:
    """A model-info accuracy (RobustBench writes them as strings) as a float, None if absent."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"model-info file {path}: {key} {value!r} is not a number") from None


def published_numbers(
    model_info_dir: str | os.PathLike[str] | None, ds: str, tm: str, name: str
) -> tuple[dict[str, Any] | None, str | None]:
    """``(published, note)`` from ``<DIR>/<dataset>/<threat_model>/<name>.json``.

    robustbench's readers (``list_available_models``, ``get_leaderboard_*``) look only in
    ``./model_info`` of the working directory, so the file is read here, into robustbench's
    own :class:`~robustbench.utils.ModelInfo` (keys it does not know are ignored)."""
    if model_info_dir is None:
        return (
            None,
            "no --model-info directory given (the robustbench wheel ships no model_info files)",
        )
    root = Path(model_info_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"--model-info {model_info_dir} is not a directory")
    path = root / ds / tm / f"{name}.json"
    if not path.is_file():
        return None, f"no model-info file {path}"
    info = _read_model_info(path)
    acc_field = "corruptions_acc" if tm == "corruptions" else "autoattack_acc"
    published = {
        "clean_acc": _number(info.clean_acc, "clean_acc", path),
        "autoattack_acc": _number(info.autoattack_acc, "autoattack_acc", path),
        "eps": info.eps,
        "source": f"model-info file {path.resolve()}",
    }
    if acc_field != "autoattack_acc":
        published[acc_field] = _number(getattr(info, acc_field), acc_field, path)
    if info.architecture is not None:
        published["architecture"] = info.architecture
    return published, None


def _read_model_info(path: Path) -> Any:
    """A RobustBench model-info JSON as robustbench.utils.ModelInfo."""
    from robustbench.utils import ModelInfo  # here: robustbench is slow to import; zoo models only

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"model-info file {path} can't be read: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"model-info file {path} holds a {type(raw).__name__}, not a JSON object")
    known = {f.name for f in fields(ModelInfo)}
    return ModelInfo(**{k: v for k, v in raw.items() if k in known})


def from_robustbench(
    name: str,
    threat_model: str,
    dataset: str,
    model_dir: str | os.PathLike[str] | None = None,
    model_info_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> Source:
    """A RobustBench model-zoo entry, loaded by ``robustbench.utils.load_model`` from
    ``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (default :func:`default_zoo_dir`).

    robustbench downloads missing weights; with ``download=False`` a missing file is a
    UsageError instead. Every ``torch.load`` robustbench makes runs with weights_only (forced
    for the call), so a weights file can't run code. RobustBench models take images in [0, 1]
    and normalise inside themselves, as bench's do. Published accuracies come from
    ``model_info_dir`` (see :func:`published_numbers`)."""
    info = dataset_info(dataset)
    ds, tm = robustbench_keys(dataset, threat_model)
    utils = _robustbench()
    entries = zoo_entries(ds, tm)
    _check_zoo_name(name, ds, tm, entries)
    root = Path(model_dir).expanduser() if model_dir is not None else default_zoo_dir()
    files = zoo_weights_paths(root, ds, tm, name, entries[name])
    missing = [str(p) for p in files if not p.is_file()]
    if missing and not download:
        raise UsageError(
            f"RobustBench weights of {name} not found at {missing[0]} (download is off)"
        )
    published, note = published_numbers(model_info_dir, ds, tm, name)
    model = _load_zoo_model(utils, name, root, ds, tm)
    config = {
        "robustbench": name,
        "threat_model": tm,
        "model_dir": str(root.resolve()),
        "dataset": dataset,
        "model": name,
        "defense": EXTERNAL,
        "run_id": plain_name(name),
    }
    run: dict[str, Any] = {"published": published, "robustbench_version": _version("robustbench")}
    if note is not None:
        run["published_note"] = note
    return _finish(
        model,
        info,
        f"RobustBench model {name}",
        run_id=plain_name(name),
        kind=SourceKind.ROBUSTBENCH,
        path=name,
        config=config,
        run=run,
    )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
