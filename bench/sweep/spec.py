"""Sweep files: a whole study (training configurations crossed with seeds, and the evaluations to
run on each checkpoint) in one TOML (or YAML) file, checked before anything runs.

Layout (every key optional unless marked; see ``sweeps/`` for complete files)::

    [sweep]                  name (required, a plain name), seeds = [0, 1], out, data_dir, download
    [train]                  defaults of every variant: dataset, model, epochs, train_limit,
                             batch_size, lr, momentum, weight_decay, schedule, eval_n, augment,
                             norm (the threat model of the defenses that take one)
    [params.<defense>]       default parameters of every variant of that defense
    [[variant]]              name (required), defense (required), params = {...}, any [train] key
    [[eval]]                 attacks (required), eps, n, batch_size, seed, shards, params =
                             {attack = {key = value}}, name, norm (Linf, L2 or L1; default
                             Linf; eps is then required unless Linf)

Every name and value goes through the validators ``bench train`` and ``bench eval`` use. Paths
(``out``, ``data_dir``) are relative to the sweep file's directory; ``out`` defaults to
``<home>/reports/sweeps/<name>`` and holds ``checkpoints/``, ``results.sqlite``, ``report/`` and
``tasks.jsonl`` (where and when each task ran). A job is identified by a hash
of its resolved configuration (:func:`train_identity`), so a rerun finds what is done. This module
never imports Ray (:mod:`bench.sweep.driver` runs the jobs).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from bench import checkpoint, paths
from bench.attacks import check_attack_norm, make_attack
from bench.data import dataset_info
from bench.defenses import DEFENSES, build_defense, defense_params
from bench.errors import UsageError
from bench.evaluation.plan import shard_ranges
from bench.models import MODELS, create_model
from bench.norms import LINF, check_norm, default_grid
from bench.params import format_eps, parse_eps_grid
from bench.store import WALKS, canonical, eps_key
from bench.train import SCHEDULES, TrainConfig, check_numbers, run_dir_of
from bench.vocab import Walk

HASH_SCHEME = 1  # bump when the identity of a job changes meaning
ID_CHARS = 8  # hex digits of the job id in run ids
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

TOP_KEYS = ("sweep", "train", "params", "variant", "eval")
SWEEP_KEYS = ("name", "seeds", "out", "data_dir", "download")
#: TrainConfig fields a sweep may set, with the TOML types they accept.
TRAIN_KEYS: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "model": (str,),
    "epochs": (int,),
    "train_limit": (int,),
    "batch_size": (int,),
    "lr": (int, float),
    "momentum": (int, float),
    "weight_decay": (int, float),
    "schedule": (str,),
    "eval_n": (int,),
    "augment": (bool,),
}
NORM_KEY = "norm"  # in [train], a variant and [[eval]]: not a TrainConfig field
VARIANT_KEYS = ("name", "defense", "params", NORM_KEY, *TRAIN_KEYS)
EVAL_KEYS = (
    "name", "attacks", "eps", "n", "batch_size", "seed", "shards", "walk", "params", NORM_KEY
)  # fmt: skip
TYPE_NAMES = {int: "whole number", float: "number", str: "string", bool: "boolean (true/false)"}
EVAL_DEFAULTS: dict[str, Any] = {
    "eps": "0:8/255:1/255",
    "n": 1000,
    "batch_size": 500,
    "seed": 0,
    "shards": 1,
    "walk": Walk.BISECT,
}


class SweepError(UsageError):
    """A bad sweep file: one line naming the file and the key."""

    def __init__(self, file: Path, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


# ------------------------------------------------------------------------------ the plan


@dataclass
class EvalSpec:
    """One ``[[eval]]`` block: the attacks with their string parameters, grid, n, batches."""

    name: str
    attacks: list[tuple[str, dict[str, str]]]
    eps: list[float]
    n: int
    batch_size: int
    seed: int
    shards: int
    walk: str = Walk.BISECT  # how each attack walks the grid (bench eval --walk): up, down, bisect
    norm: str = LINF  # the threat model (bench eval --norm)

    def identity(self) -> dict[str, Any]:
        """What the stored rows depend on (not ``shards``: sharding never changes a flag). Linf
        keeps the identity it had before norms, so that a rerun finds its jobs done."""
        made = self.make_attacks()
        out = {
            "attacks": [[a.label, a.params] for a in made],
            "eps": [eps_key(e) for e in self.eps],
            "n": self.n,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "walk": self.walk,
        }
        return out if self.norm == LINF else out | {"norm": self.norm}

    def make_attacks(self) -> list[Any]:
        """The :class:`bench.attacks.Attack` objects (built anew: they hold closures)."""
        return [make_attack(name, dict(params), self.norm) for name, params in self.attacks]

    def batches(self) -> int:
        """Fixed batches of the evaluated points."""
        return math.ceil(self.n / self.batch_size)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[k0, k1)`` batch ranges of the shards, as the evaluation plan cuts them."""
        return shard_ranges(self.batches(), self.shards)


@dataclass
class TrainJob:
    """One training run: a variant at one seed."""

    variant: str
    cfg: Any  # bench.train.TrainConfig, with out_dir and run_id set
    identity: dict[str, Any]
    job_id: str

    @property
    def run_dir(self) -> Path:
        """The checkpoint directory of this job."""
        return Path(str(self.cfg.out_dir)) / str(self.cfg.run_id)

    def describe(self) -> str:
        """The configuration on one line (for the dry run and failure reports)."""
        c = self.identity
        params = " ".join(f"{k}={v}" for k, v in sorted(c["defense_params"].items()))
        return (
            f"{self.cfg.run_id}: {c['dataset']} {c['model']} {c['defense']} [{params}] "
            f"epochs={c['epochs']} train_limit={c['train_limit']} seed={c['seed']}"
        )


@dataclass
class EvalJob:
    """One evaluation block run on one training job's checkpoint."""

    train: TrainJob
    spec: EvalSpec
    job_id: str

    def describe(self) -> str:
        """The evaluation on one line (for the dry run and failure reports)."""
        names = ",".join(a.display for a in self.spec.make_attacks())
        grid = ",".join(format_eps(e, self.spec.norm) for e in self.spec.eps)
        return (
            f"{self.train.cfg.run_id} / eval {self.spec.name}: {names} {self.spec.norm} "
            f"eps={grid} n={self.spec.n} "
            f"batch={self.spec.batch_size} seed={self.spec.seed} walk={self.spec.walk} "
            f"shards={len(self.spec.shard_ranges())}"
        )


@dataclass
class Sweep:
    """A checked sweep file: where everything goes, and every job."""

    file: Path
    name: str
    out: Path
    data_dir: Path | None
    download: bool
    trains: list[TrainJob] = field(default_factory=list)
    evals: list[EvalJob] = field(default_factory=list)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def db(self) -> Path:
        return self.out / "results.sqlite"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"


# ------------------------------------------------------------------------------ hashing


def _plain_json(obj: Any) -> Any:
    """JSON round trip: tuples become lists, as in a saved config.json."""
    return json.loads(json.dumps(obj, sort_keys=True))


def job_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a job's identity."""
    text = json.dumps({"scheme": HASH_SCHEME, **identity}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


IDENTITY_KEYS = (
    "dataset",
    "model",
    "defense",
    "defense_params",
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
)


def train_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a training configuration that decide its weights (resolved defense
    parameters included); the same from a job and from the config.json it wrote. A Linf
    ``norm`` parameter is left out: the identity of every job made before norms existed."""
    out = {k: config.get(k) for k in IDENTITY_KEYS}
    if "augment" in config:  # a config.json's "augment" is what was applied; a job's, asked
        out["augment"] = checkpoint.requested_augment(config)
    params = out.get("defense_params")
    if isinstance(params, dict) and params.get(NORM_KEY) == LINF:
        out["defense_params"] = {k: v for k, v in params.items() if k != NORM_KEY}
    return _plain_json(out)


# ------------------------------------------------------------------------------ reading


def read_file(path: Path) -> dict[str, Any]:
    """The sweep file as a dict: TOML (stdlib), or YAML when named .yaml/.yml (needs PyYAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"sweep file {path} can't be read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _read_yaml(path, text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(path, "", f"not valid TOML: {exc}") from None


def _read_yaml(path: Path, text: str) -> dict[str, Any]:
    """A YAML sweep file (safe loader: plain data only) as a dict."""
    try:
        import yaml  # here: PyYAML is optional (.yaml sweep files only)
    except ImportError:
        raise UsageError(
            f"{path}: YAML sweep files need PyYAML (pip install pyyaml); or write TOML"
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(path, "", "not valid YAML: " + " ".join(str(exc).split())) from None
    if not isinstance(doc, dict):
        raise SweepError(path, "", "the top level must be a mapping of sections")
    return doc


# ------------------------------------------------------------------------------ checking values


class Checker:
    """Key-path-aware checks of one file's values; every failure is a :class:`SweepError`."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> SweepError:
        return SweepError(self.file, key, message)

    def table(self, value: Any, key: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        """A table whose keys are all in ``allowed`` (None: any string key)."""
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"key {k!r} is not a string")
            if allowed is not None and k not in allowed:
                raise self.fail(
                    f"{key}.{k}" if key else k, f"unknown key; valid: {', '.join(allowed)}"
                )
        return value

    def typed(self, value: Any, key: str, types: tuple[type, ...]) -> Any:
        """``value`` of one of ``types`` (a bool is not a number here)."""
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(dict.fromkeys(TYPE_NAMES[t] for t in types))
            raise self.fail(key, f"must be a {names}, got {value!r}")
        return value

    def whole(self, value: Any, key: str, low: int, high: int = 2**63 - 1) -> int:
        """A whole number in ``low..high``."""
        self.typed(value, key, (int,))
        if not low <= value <= high:
            raise self.fail(key, f"must be a whole number in {low}..{high}, got {value}")
        return int(value)

    def plain(self, value: Any, key: str) -> str:
        """A plain name (letters, digits, . _ + -): it names directories and store rows."""
        if not isinstance(value, str) or not _PLAIN.fullmatch(value):
            raise self.fail(
                key, f"{value!r} must be a plain name (letters, digits, . _ + -; at most 64)"
            )
        return value

    def path(self, value: Any, key: str) -> Path:
        """A path, relative to the sweep file's directory."""
        self.typed(value, key, (str,))
        return paths.resolve(self.file.parent / Path(value).expanduser(), f"{self.file}: {key}")

    def guarded(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, with any UsageError it raises re-raised as naming ``key``."""
        try:
            return fn()
        except SweepError:
            raise
        except UsageError as exc:
            raise self.fail(key, str(exc)) from None


def text_value(value: Any) -> str:
    """A TOML value as the string the command line would give (lists joined by commas)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(text_value(v) for v in value)
    return str(value)


def string_params(ck: Checker, table: Any, key: str) -> dict[str, str]:
    """A parameter table (``params = {...}``) as strings."""
    out = {}
    for k, v in ck.table(table, key, None).items():
        if isinstance(v, dict) or v is None:
            raise ck.fail(f"{key}.{k}", f"must be a string, number, boolean or list, got {v!r}")
        out[k.replace("-", "_")] = text_value(v)
    return out


# ------------------------------------------------------------------------------ sections


def sweep_section(
    ck: Checker, doc: dict[str, Any], out: str | None
) -> tuple[str, list[int], Path, Path | None, bool]:
    """``[sweep]``: name, seeds, out (``out`` argument first), data_dir, download."""
    s = ck.table(doc.get("sweep", {}), "sweep", SWEEP_KEYS)
    if "name" not in s:
        raise ck.fail("sweep.name", "is required (a plain name)")
    name = ck.plain(s["name"], "sweep.name")
    seeds = seed_list(ck, s.get("seeds", [0]))
    if out is not None:
        where = paths.resolve(out, "--out")
    elif "out" in s:
        where = ck.path(s["out"], "sweep.out")
    else:
        where = paths.reports_dir() / "sweeps" / name
    data = ck.path(s["data_dir"], "sweep.data_dir") if "data_dir" in s else None
    download = ck.typed(s.get("download", True), "sweep.download", (bool,))
    return name, seeds, where, data, download


def seed_list(ck: Checker, value: Any) -> list[int]:
    """A non-empty list of distinct seeds in 0..2**63-1."""
    if not isinstance(value, list) or not value:
        raise ck.fail("sweep.seeds", f"must be a non-empty list of whole numbers, got {value!r}")
    seeds: list[int] = []
    for i, s in enumerate(value):
        seed = ck.whole(s, f"sweep.seeds[{i}]", 0)
        if seed in seeds:
            raise ck.fail(f"sweep.seeds[{i}]", f"seed {seed} is listed twice")
        seeds.append(seed)
    return seeds


def train_values(ck: Checker, table: dict[str, Any], key: str) -> dict[str, Any]:
    """The TrainConfig keys of a ``[train]`` table or a variant, type-checked."""
    out = {}
    for k, types in TRAIN_KEYS.items():
        if k in table:
            out[k] = ck.typed(table[k], f"{key}.{k}" if key else k, types)
    return out


def defense_defaults(
    ck: Checker, doc: dict[str, Any], norm: str | None = None
) -> dict[str, dict[str, str]]:
    """``[params.<defense>]``: default parameters per defense (the defense name checked), each
    checked under [train]'s ``norm`` where the defense takes one (a budget is read in it)."""
    table = ck.table(doc.get("params", {}), "params", None)
    out = {}
    for name, values in table.items():
        ck.guarded(f"params.{name}", lambda: DEFENSES[name])
        given = string_params(ck, values, f"params.{name}")
        extra = {NORM_KEY: norm} if norm and NORM_KEY in DEFENSES[name].defaults else {}
        check_params(ck, name, {**given, **extra}, f"params.{name}")
        out[name] = given
    return out


def check_params(ck: Checker, defense: str, params: dict[str, str], key: str) -> dict[str, str]:
    """Each parameter of ``defense`` checked alone, so that a bad one is named by its key
    (``<key>.<name>``), in the threat model the parameters name (a budget is read in its
    norm); a bad combination is caught when the variant is built."""
    norm = {NORM_KEY: params[NORM_KEY]} if NORM_KEY in params else {}
    for name, value in params.items():
        ck.guarded(f"{key}.{name}", lambda: build_defense(defense, {name: value, **norm}))
    return params


def variant_norm(
    ck: Checker, v: dict[str, Any], key: str, defense: str, base: str | None
) -> dict[str, str]:
    """The ``norm`` parameter a variant trains with: its own ``norm``, else [train]'s, for the
    defenses that take one (a [train] norm passes over the others; a variant's own ``norm`` on a
    defense without one is refused). Linf adds nothing: the defenses' default."""
    own = sweep_norm(ck, v[NORM_KEY], f"{key}.{NORM_KEY}") if NORM_KEY in v else None
    takes = NORM_KEY in DEFENSES[defense].defaults
    if own is not None and not takes and own != LINF:
        raise ck.fail(f"{key}.{NORM_KEY}", f"defense {defense} trains for no threat model")
    norm = own or base
    return {NORM_KEY: norm} if takes and norm not in (None, LINF) else {}


def variant_tables(ck: Checker, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``[[variant]]``: a non-empty list of tables with known keys and distinct names."""
    items = doc.get("variant")
    if not isinstance(items, list) or not items:
        raise ck.fail("variant", "the sweep needs at least one [[variant]] (name, defense, params)")
    names: set[str] = set()
    for i, v in enumerate(items):
        key = f"variant[{i}]"
        ck.table(v, key, VARIANT_KEYS)
        for required in ("name", "defense"):
            if required not in v:
                raise ck.fail(f"{key}.{required}", "is required")
        if ck.plain(v["name"], f"{key}.name") in names:
            raise ck.fail(f"{key}.name", f"variant {v['name']!r} is listed twice")
        names.add(v["name"])
    return items


# ------------------------------------------------------------------------------ training jobs


class ModelCache:
    """Models built once per (model, data set) to check placements against them (VGG-19 is
    20M parameters: one build per variant would make a dry run slow)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], Any] = {}

    def get(self, model: str, info: Any) -> Any:
        """The model ``model`` built for data set ``info`` (built once)."""
        key = (model, info.name)
        if key not in self.models:
            self.models[key] = create_model(
                model,
                channels=info.channels,
                num_classes=info.num_classes,
                image_size=info.image_size,
                mean=info.mean,
                std=info.std,
            )
        return self.models[key]


def check_train_values(ck: Checker, values: dict[str, Any], key: str) -> None:
    """The numbers and names of a training table, as ``bench train`` checks them (no data
    needed); a failure names ``<key>.<field>``."""
    cfg = TrainConfig(**values)
    if cfg.schedule not in SCHEDULES:
        raise ck.fail(
            f"{key}.schedule", f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}"
        )
    try:
        check_numbers(cfg)
    except UsageError as exc:  # "--epochs must be ...": the flag names the field
        flag, _, rest = str(exc).partition(" ")
        raise ck.fail(f"{key}.{flag.lstrip('-').replace('-', '_')}", rest) from None
    info = ck.guarded(f"{key}.dataset", lambda: dataset_info(cfg.dataset))
    ck.guarded(f"{key}.model", lambda: MODELS[cfg.model])
    if cfg.train_limit is not None and cfg.train_limit > info.train_size:
        raise ck.fail(
            f"{key}.train_limit",
            f"{cfg.train_limit} is larger than the train split of "
            f"{cfg.dataset} ({info.train_size} points)",
        )


def _check_train(cfg: Any, cache: ModelCache) -> Any:
    """What else ``bench train`` checks before training: the defense and its parameters, the
    model for the data set, the placement of hooks, the run directory. Returns the defense."""
    defense = build_defense(cfg.defense, cfg.defense_params)
    model = cache.get(cfg.model, dataset_info(cfg.dataset))
    defense.attach(model)
    defense.detach()
    run_dir_of(cfg)
    return defense


def _base_config(
    sweep: Sweep, values: dict[str, Any], defense: str, params: dict[str, str], seed: int
) -> Any:
    """The TrainConfig of one variant at one seed, writing into the sweep's checkpoints."""
    return TrainConfig(
        defense=defense,
        defense_params=params,
        seed=seed,
        data_dir=str(sweep.data_dir) if sweep.data_dir else None,
        download=sweep.download,
        out_dir=str(sweep.checkpoints),
        **values,
    )


def train_job(
    ck: Checker, sweep: Sweep, spec: dict[str, Any], seed: int, cache: ModelCache
) -> TrainJob:
    """The job of one variant at one seed, checked; its run id is ``<variant>-s<seed>-<id>``."""
    key = spec["key"]
    cfg = _base_config(sweep, spec["values"], spec["defense"], spec["params"], seed)
    defense = ck.guarded(key, lambda: _check_train(cfg, cache))
    resolved = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    resolved["defense_params"] = defense_params(defense)
    identity = train_identity(resolved)
    job_id = job_hash(identity)
    cfg.run_id = f"{spec['name']}-s{seed}-{job_id[:ID_CHARS]}"
    return TrainJob(spec["name"], cfg, identity, job_id)


def variant_specs(ck: Checker, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant's training values ([train] overridden by the variant) and parameters
    ([params.<defense>] overridden by the variant's own)."""
    table = ck.table(doc.get("train", {}), "train", (*TRAIN_KEYS, NORM_KEY))
    base = train_values(ck, table, "train")
    base_norm = sweep_norm(ck, table[NORM_KEY], f"train.{NORM_KEY}") if NORM_KEY in table else None
    check_train_values(ck, base, "train")
    defaults = defense_defaults(ck, doc, base_norm)
    specs = []
    for i, v in enumerate(variant_tables(ck, doc)):
        key = f"variant[{i}]"
        defense = ck.typed(v["defense"], f"{key}.defense", (str,))
        ck.guarded(f"{key}.defense", lambda: _known_defense(defense))
        own = string_params(ck, v.get("params", {}), f"{key}.params")
        own.update(variant_norm(ck, v, key, defense, base_norm))  # eps is read in this norm
        own = check_params(ck, defense, own, f"{key}.params")
        params = {**defaults.get(defense, {}), **own}
        values = {**base, **train_values(ck, v, key)}
        check_train_values(ck, values, key)
        specs.append(
            {"key": key, "name": v["name"], "defense": defense, "params": params, "values": values}
        )
    return specs


def _known_defense(name: str) -> None:
    """UsageError (listing the valid names) unless ``name`` is a registered defense."""
    DEFENSES[name]


# ------------------------------------------------------------------------------ evaluations


def eval_attacks(
    ck: Checker, e: dict[str, Any], key: str, norm: str = LINF
) -> list[tuple[str, dict[str, str]]]:
    """``attacks`` and ``params``: each attack known (with a version for ``norm``), listed once,
    its parameters valid."""
    names = e.get("attacks")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ck.fail(f"{key}.attacks", f"must be a non-empty list of attack names, got {names!r}")
    for j, name in enumerate(names):
        ck.guarded(f"{key}.attacks[{j}]", lambda: check_attack_norm(name, norm))
        if names.index(name) != j:
            raise ck.fail(f"{key}.attacks[{j}]", f"attack {name} is listed twice")
    params = ck.table(e.get("params", {}), f"{key}.params", tuple(names))
    out = []
    for name in names:
        values = string_params(ck, params.get(name, {}), f"{key}.params.{name}")
        ck.guarded(f"{key}.params.{name}", lambda: make_attack(name, values, norm))
        out.append((name, values))
    return out


def eval_grid(ck: Checker, value: Any, key: str, norm: str = LINF) -> list[float]:
    """``eps``: a grid string as ``bench eval --eps`` takes, or a list of values."""
    if isinstance(value, list):
        if not value or any(isinstance(v, (bool, dict, list)) for v in value):
            raise ck.fail(
                key, f"must be a grid string or a non-empty list of eps values, got {value!r}"
            )
        value = ",".join(str(v) for v in value)
    ck.typed(value, key, (str,))
    grid = ck.guarded(key, lambda: parse_eps_grid(value, norm))
    return grid if grid[0] == 0.0 else [0.0, *grid]  # eps 0 (clean accuracy) is always walked


def eval_spec(ck: Checker, e: Any, i: int) -> EvalSpec:
    """One ``[[eval]]`` block, checked."""
    key = f"eval[{i}]"
    ck.table(e, key, EVAL_KEYS)
    v = {**EVAL_DEFAULTS, **e}
    name = ck.plain(v.get("name", str(i)), f"{key}.name")
    norm = sweep_norm(ck, e.get(NORM_KEY, LINF), f"{key}.{NORM_KEY}")
    if norm != LINF and "eps" not in e:  # the Linf default grid means nothing under L2/L1
        raise ck.fail(
            f"{key}.eps",
            f"is required under {norm} (e.g. CIFAR-10's {default_grid('cifar10', norm)}, "
            f"MNIST's {default_grid('mnist', norm)}; docs/threat-models.md)",
        )
    attacks = eval_attacks(ck, e, key, norm)
    grid = eval_grid(ck, v["eps"], f"{key}.eps", norm)
    n = ck.whole(v["n"], f"{key}.n", 1)
    batch = ck.whole(v["batch_size"], f"{key}.batch_size", 1)
    seed = ck.whole(v["seed"], f"{key}.seed", 0)
    shards = eval_shards(ck, v["shards"], f"{key}.shards", n, batch)
    walk = eval_walk(ck, v["walk"], f"{key}.walk")
    return EvalSpec(name, attacks, grid, n, batch, seed, shards, walk, norm)


def eval_shards(ck: Checker, value: Any, key: str, n: int, batch: int) -> int:
    """``shards``: at most one per batch (n points in batches of batch_size), said so."""
    batches = math.ceil(n / batch)
    if isinstance(value, int) and not isinstance(value, bool) and value > batches:
        raise ck.fail(
            key,
            f"must be a whole number in 1..{batches}: one shard holds at least one batch, and "
            f"n = {n} in batches of {batch} makes {batches}, got {value}",
        )
    return ck.whole(value, key, 1, batches)


def sweep_norm(ck: Checker, value: Any, key: str) -> str:
    """A ``norm`` key: Linf, L2 or L1 (any case)."""
    ck.typed(value, key, (str,))
    return ck.guarded(key, lambda: check_norm(value))


def eval_walk(ck: Checker, value: Any, key: str) -> str:
    """``walk``: one of bench eval's walks (up, down, bisect)."""
    ck.typed(value, key, (str,))
    if value not in WALKS:
        raise ck.fail(key, f"must be one of {', '.join(WALKS)}, got {value!r}")
    return value


def eval_specs(ck: Checker, doc: dict[str, Any]) -> list[EvalSpec]:
    """``[[eval]]`` blocks: at least one; no two store the same result row."""
    items = doc.get("eval")
    if not isinstance(items, list) or not items:
        raise ck.fail("eval", "the sweep needs at least one [[eval]] (attacks, eps, n)")
    specs = [eval_spec(ck, e, i) for i, e in enumerate(items)]
    _no_shared_rows(ck, specs)
    return specs


def _no_shared_rows(ck: Checker, specs: list[EvalSpec]) -> None:
    """Two blocks that would write one store row (same attack and parameters, n and eps) are
    refused: the second would replace the first's row. Names must differ too."""
    seen: dict[tuple[Any, ...], int] = {}
    names: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in names:
            raise ck.fail(f"eval[{i}].name", f"eval {spec.name!r} is listed twice")
        names.add(spec.name)
        for a in spec.make_attacks():
            for e in spec.eps:
                row = (a.label, canonical(a.params), spec.norm, spec.n, eps_key(e))
                if row in seen and seen[row] != i:
                    raise ck.fail(
                        f"eval[{i}].attacks",
                        f"{a.display} at n={spec.n}, eps {e:.6g} is "
                        f"also in eval[{seen[row]}] (one store row each: change n or the grid)",
                    )
                seen[row] = i


def _check_n(ck: Checker, sweep: Sweep, specs: list[EvalSpec]) -> None:
    """Each block's n fits the test split of every data set trained."""
    for i, spec in enumerate(specs):
        for job in sweep.trains:
            size = dataset_info(job.cfg.dataset).test_size
            if spec.n > size:
                raise ck.fail(
                    f"eval[{i}].n",
                    f"{spec.n} is larger than the {job.cfg.dataset} test split ({size} points)",
                )


# ------------------------------------------------------------------------------ loading


def load_sweep(path: str | Path, out: str | None = None) -> Sweep:
    """Read and check a sweep file and expand its jobs; a UsageError naming the key if anything
    is wrong. Nothing is written. ``out`` overrides ``[sweep] out``."""
    file = paths.resolve(path, "sweep file")
    if not file.is_file():
        raise UsageError(
            f"sweep file {file} does not exist"
            if not file.exists()
            else f"sweep file {file} is not a file"
        )
    doc = read_file(file)
    ck = Checker(file)
    ck.table(doc, "", TOP_KEYS)
    name, seeds, where, data, download = sweep_section(ck, doc, out)
    sweep = Sweep(file, name, where, data, download)
    cache = ModelCache()
    for spec in variant_specs(ck, doc):
        sweep.trains.extend(train_job(ck, sweep, spec, seed, cache) for seed in seeds)
    _no_twins(ck, sweep.trains, len(seeds))
    specs = eval_specs(ck, doc)
    _check_n(ck, sweep, specs)
    for job in sweep.trains:
        sweep.evals.extend(
            EvalJob(job, s, job_hash({"train": job.job_id, "eval": s.identity()})) for s in specs
        )
    return sweep


def _no_twins(ck: Checker, trains: list[TrainJob], per_variant: int) -> None:
    """Two variants that resolve to one configuration would train the same weights twice."""
    seen: dict[str, int] = {}
    for i, job in enumerate(trains):
        v = i // per_variant
        if job.job_id in seen:
            raise ck.fail(
                f"variant[{v}]",
                f"trains the same configuration as variant[{seen[job.job_id]}] "
                f"({trains[seen[job.job_id] * per_variant].variant!r}) once defaults are filled in",
            )
        seen[job.job_id] = v


def describe(sweep: Sweep) -> list[str]:
    """The dry run's lines: where things go, then every job with its id."""
    lines = [
        f"sweep {sweep.name} ({sweep.file}): {len(sweep.trains)} training jobs, "
        f"{len(sweep.evals)} evaluation jobs",
        f"  checkpoints {sweep.checkpoints}",
        f"  store {sweep.db}",
        f"  report {sweep.report_dir}",
    ]
    lines += [f"train {j.job_id[:ID_CHARS]}  {j.describe()}" for j in sweep.trains]
    lines += [f"eval  {j.job_id[:ID_CHARS]}  {j.describe()}" for j in sweep.evals]
    return lines
