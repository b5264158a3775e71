"""Pictures computed from the checkpoints at report time, never needed for a number: input
gradients and adversarial examples of a fixed handful of test images (Tsipras et al. 2019,
figures 2 and 3).

* The images: the first image of each class among the first :data:`POOL` test points, in
  order, :data:`K` of them; the same for every checkpoint of a data set.
* Input gradients: the cross-entropy's gradient with respect to the input
  (:func:`bench.evaluation.diagnostics.input_gradients`), in eval mode.
* Adversarial examples: per image, the example of the first stored attack (in :data:`ORDER`)
  that broke it at the largest eps of the grid, rerun on that image at the eps where that
  attack's walk first broke it (the balls are nested, so it is an example at the largest eps
  too), with the stored seed; and bench's PGD (:data:`LARGE_STEPS` steps) at a large eps
  (:func:`large_eps`), far above the grid as in the source's figure 3.
* One set of pictures per section (data set and threat model): a section's attacks are rerun,
  and its large-eps PGD run, in that section's norm.

A checkpoint is found by the path its run row records; it is skipped with a note when it is
gone, is not a bench checkpoint, or holds other weights than the evaluated ones. The tensors are
cached under ``<out>/cache/<fingerprint>-pictures-<key>.safetensors`` (``key``: a hash of the
images, the attacks rerun and the settings), so a later report needs neither the checkpoint
nor any attack. Only the handful of images is held in memory.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import safetensors.torch
import torch
from torch import nn

from bench.attacks import ATTACKS, collect_warnings, make_attack
from bench.data import dataset_info, load_dataset
from bench.errors import UsageError
from bench.evaluation import diagnostics as dg
from bench.evaluation.walk import batch_seed, check_budget, predict
from bench.io import atomic_write_bytes
from bench.norms import LINF, budget
from bench.params import format_eps
from bench.report import CACHE_DIR, figures
from bench.report.model import WORST, Model, Variant
from bench.report.text import DISPLAY, eps_label, safe_name, slug
from bench.sources import from_checkpoint
from bench.store import RunRow, canonical
from bench.vocab import SourceKind

K = 6  # images per figure
POOL = 100  # they are chosen among the first POOL test points
LARGE_STEPS = 100
ORDER = ("fgsm", "pgd", "mifgsm", "apgd", "eotpgd", "deepfool", "cw", "fab", "autoattack", "square")
CACHE_VERSION = 1
TENSORS = ("grad", "x_first", "x_large", "pred_clean", "pred_first", "pred_large", "rerun_ok")

Plan = dict[str, Any] | str  # how the first attack broke an image, or why there is none


def large_eps(dataset: str, norm: str = LINF) -> float:
    """The large budget of the PGD column: under Linf 0.3 on the 28x28 greyscale sets, else
    32/255; under L2 and L1 four times the data set's default budget (as 32/255 is to 8/255)."""
    if norm != LINF:
        return 4 * budget(dataset, norm).eps
    return 0.3 if dataset in ("mnist", "fashion-mnist") else 32 / 255


@dataclass
class Visuals:
    """What the pictures step produced: PNGs by file name, their order per data set, their
    captions, notes on what was skipped, the cache files used (relative to the report) and the
    seconds it took."""

    files: dict[str, bytes] = field(default_factory=dict)
    shown: dict[str, list[str]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------- what to show


def pick(
    dataset: str, data_dirs: Sequence[Path | None]
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The handful: the first image of each class among the first POOL test points."""
    test, errors = None, []
    for d in data_dirs:  # the first data directory that holds the test split
        try:
            test = load_dataset(dataset, "test", d, limit=POOL, download=False)
            break
        except UsageError as exc:
            errors.append(str(exc))
    if test is None:
        raise UsageError(errors[-1] if errors else f"no data directory for {dataset}")
    idx: list[int] = []
    for i, c in enumerate(test.y.tolist()):
        if c not in {int(test.y[j]) for j in idx}:
            idx.append(i)
        if len(idx) == K:
            break
    return idx, test.images(torch.tensor(idx)), test.y[idx].clone()


def _order(v: Variant) -> tuple[int, str]:
    return (ORDER.index(v.attack) if v.attack in ORDER else len(ORDER), v.params)


def plan(m: Model, idx: list[int]) -> list[Plan]:
    """Per image: the first stored attack that broke it at the model's largest eps, with the
    eps where its walk first broke it, or why there is none."""
    key = max(m.eps_keys, default=0)
    variants = sorted((v for v in m.curves if v != WORST and key in m.curves[v]), key=_order)
    return [_first_break(m, variants, key, i) for i in idx]


def _first_break(m: Model, variants: list[Variant], key: int, i: int) -> Plan:
    """How the first of ``variants`` that broke point ``i`` at ``key`` did it, or why none did."""
    if key == 0:
        return "no eps > 0 evaluated"
    if i >= m.n:
        return f"not among the {m.n} points evaluated"
    for v in variants:
        row = m.curves[v][key]
        if row.flags[i] == "0":
            first = min(k for k, r in m.curves[v].items() if r.flags[i] == "0")
            if first == 0:
                return "misclassified when clean"
            return {
                "attack": v.attack,
                "params": v.params_dict,
                "eps": m.curves[v][first].eps,
                "seed": row.seed,
                "batch_size": row.batch_size,
            }
    return f"no attack broke it at {eps_label(m.norm)} {format_eps(key / 1e9, m.norm)}"


def caption(p: Plan, clean_ok: bool, rerun_ok: bool, norm: str = LINF) -> str:
    """What the middle row of a strip shows for one image."""
    if isinstance(p, str):
        return p
    if not clean_ok:
        return "misclassified when clean"
    name = DISPLAY.get(p["attack"], p["attack"])
    if p["attack"] == "autoattack":
        name += f" {p['params'].get('version', '')}"
    return f"{name} at {format_eps(p['eps'], norm)}" + ("" if rerun_ok else " (rerun failed)")


# ------------------------------------------------------------------------- computing


def rebuild(p: dict[str, Any], norm: str = LINF) -> Any:
    """The stored attack with its stored parameters (defaults left to the attack's own rules),
    in the threat model ``norm``."""
    defaults = ATTACKS[p["attack"]].defaults
    values = {}
    for k, v in p["params"].items():
        if defaults.get(k) == v or (k == "attacks" and p["params"].get("version") != "custom"):
            continue
        values[k] = (
            ",".join(map(str, v))
            if isinstance(v, list)
            else str(v).lower()
            if isinstance(v, bool)
            else str(v)
        )
    return make_attack(p["attack"], values, norm)


def _rerun(
    net: nn.Module, p: dict[str, Any], x: torch.Tensor, y: torch.Tensor, i: int, norm: str
) -> torch.Tensor | None:
    """The attack's example for one image (seeded as its batch was), or None if it can't run."""
    try:
        attack = rebuild(p, norm)
        with collect_warnings():
            x_adv = attack.run(
                net,
                x,
                y,
                p["eps"],
                batch_seed(p["seed"], p["eps"], i // p["batch_size"]),
                index=torch.tensor([i]),
            ).cpu()
        check_budget(x, x_adv, p["eps"], norm=norm)
    except Exception:  # noqa: BLE001 - a picture, never a number: shown as "rerun failed"
        return None
    return x_adv


def compute(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: list[int],
    plans: list[Plan],
    seed: int,
    eps_large: float,
    norm: str = LINF,
) -> dict[str, torch.Tensor]:
    """Gradients, the first attack's examples and large-eps PGD's (in ``norm``), with
    predictions."""
    grad = dg.input_gradients(net, x, y)
    pred_clean = predict(net, x)
    x_first, ok = x.clone(), torch.zeros(len(x), dtype=torch.uint8)
    for j, p in enumerate(plans):  # one image at a time: the handful only
        if isinstance(p, dict) and bool(pred_clean[j] == y[j]):
            adv = _rerun(net, p, x[j : j + 1], y[j : j + 1], idx[j], norm)
            if adv is not None:
                x_first[j], ok[j] = adv[0], 1
    pgd = make_attack("pgd", {"steps": str(LARGE_STEPS)}, norm)
    x_large = pgd.run(net, x, y, eps_large, seed, index=torch.tensor(idx)).cpu()
    return {
        "grad": torch.zeros_like(x) if grad is None else grad.float().cpu(),
        "x_first": x_first,
        "x_large": x_large,
        "pred_clean": pred_clean,
        "pred_first": predict(net, x_first),
        "pred_large": predict(net, x_large),
        "rerun_ok": ok,
    }


# ------------------------------------------------------------------------- checkpoints, cache


def load_net(run: RunRow) -> tuple[nn.Module | None, str]:
    """The evaluated weights from the run's checkpoint, or None and why not."""
    if run.kind != SourceKind.CHECKPOINT:
        return (
            None,
            f"`{run.run_id}`: pictures are made for bench checkpoints only "
            f"(this is a {run.kind} model)",
        )
    if not Path(run.path).is_absolute():
        return None, f"`{run.run_id}`: its recorded path {run.path} is not absolute: no pictures"
    try:
        src = from_checkpoint(run.path)
    except UsageError as exc:
        return (
            None,
            f"`{run.run_id}`: checkpoint {run.path} is gone or unreadable ({exc}): no pictures",
        )
    if src.fingerprint != run.fingerprint:
        return None, (
            f"`{run.run_id}`: checkpoint {run.path} now holds other weights "
            f"({src.fingerprint[7:19]}) than the evaluated ones ({run.fingerprint[7:19]}): "
            "no pictures"
        )
    return src.model, ""


def cache_name(m: Model, idx: list[int], plans: list[Plan], seed: int, eps_large: float) -> str:
    """``cache/<fingerprint>-pictures-<key>.safetensors``: the key hashes what the tensors hold
    (the norm outside Linf, so that Linf keys stay those of before bench knew other norms)."""
    what = [CACHE_VERSION, m.run.dataset, idx, plans, seed, eps_large, LARGE_STEPS]
    what += [] if m.norm == LINF else [m.norm]
    key = hashlib.sha256(canonical(what).encode()).hexdigest()[:12]
    return (
        f"{CACHE_DIR}/{m.run.fingerprint.removeprefix('sha256:')[:16]}-pictures-{key}.safetensors"
    )


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the file is damaged or lacks one of :data:`TENSORS`."""
    try:
        got = safetensors.torch.load(path.read_bytes())
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
        return None
    return got if set(TENSORS) <= set(got) else None


def pictures(
    m: Model, idx: list[int], x: torch.Tensor, y: torch.Tensor, out: Path, v: Visuals
) -> tuple[list[Plan], dict[str, torch.Tensor]] | None:
    """One checkpoint's tensors: from the cache, else computed from its checkpoint (and cached)."""
    plans = plan(m, idx)
    seed = next((r.seed for c in m.curves.values() for r in c.values()), 0)
    eps_large = large_eps(m.run.dataset, m.norm)
    name = cache_name(m, idx, plans, seed, eps_large)
    cached = _read_cache(out / name) if (out / name).is_file() else None
    if cached is None:
        net, why = load_net(m.run)
        if net is None:
            v.notes.append(why)
            return None
        try:
            cached = compute(net, x, y, idx, plans, seed, eps_large, m.norm)
        except Exception as exc:  # noqa: BLE001 - a picture, never a number: the report goes on
            v.notes.append(
                f"`{m.run_id}`: computing its pictures failed ({type(exc).__name__}: {exc})"
            )
            return None
        data = safetensors.torch.save({k: t.contiguous() for k, t in cached.items()})
        atomic_write_bytes(out / name, data)
    v.cache.append(name)
    return plans, cached


# ------------------------------------------------------------------------- figures


def _data_dirs(explicit: str | Path | None, models: list[Model]) -> list[Path | None]:
    """Where to look for the test images: --data-dir, else each checkpoint's own data directory
    (when absolute), else bench's default."""
    if explicit is not None:
        return [Path(explicit)]
    dirs: list[Path | None] = []
    for m in models:
        d = (m.run.config or {}).get("data_dir")
        if isinstance(d, str) and Path(d).is_absolute() and Path(d) not in dirs:
            dirs.append(Path(d))
    return dirs + [None]


def dataset_figures(
    name: str, models: list[Model], out: Path, data_dir: str | Path | None, v: Visuals
) -> None:
    """The gradient figure and one adversarial strip per checkpoint of one section (``name``:
    the section, whose models share a data set and a threat model)."""
    ckpts = [m for m in models if m.run.kind == SourceKind.CHECKPOINT]
    v.notes += [load_net(m.run)[1] for m in models if m.run.kind != SourceKind.CHECKPOINT]
    if not ckpts:
        return
    dataset = ckpts[0].run.dataset
    try:
        idx, x, y = pick(dataset, _data_dirs(data_dir, ckpts))
    except UsageError as exc:
        v.notes.append(
            f"{name}: the test images for the pictures were not found ({exc}); pass --data-dir"
        )
        return
    classes = list(dataset_info(dataset).classes)
    shown = [(m, got) for m in ckpts if (got := pictures(m, idx, x, y, out, v)) is not None]
    if not shown:
        return
    _gradients(name, [(m, t) for m, (_, t) in shown], idx, x, y, classes, v)
    for m, (plans, t) in shown:
        _strip(name, m, x, y, classes, plans, t, v)


def _gradients(
    name: str,
    shown: list[tuple[Model, dict[str, torch.Tensor]]],
    idx: list[int],
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    v: Visuals,
) -> None:
    """The input-gradient figure of a section's checkpoints, with its caption, into ``v``."""
    gname = f"gradients-{slug(name)}.png"
    labels = [
        m.run.defense
        + (f" ({m.run_id})" if sum(o.run.defense == m.run.defense for o, _ in shown) > 1 else "")
        for m, _ in shown
    ]
    v.files[gname] = figures.gradients_png(
        name, x, y, classes, [(lab, t["grad"]) for lab, (_, t) in zip(labels, shown)]
    )
    v.shown.setdefault(name, []).append(gname)
    v.captions[gname] = (
        f"Loss gradient with respect to the input, {name}, test images {idx} (each map "
        "scaled to its 99th percentile of |gradient|; grey is zero)"
    )


def _strip(
    name: str,
    m: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    plans: list[Plan],
    t: dict[str, torch.Tensor],
    v: Visuals,
) -> None:
    """The adversarial strip of one checkpoint, with its caption, into ``v``."""
    caps = [
        caption(p, bool(t["pred_clean"][j] == y[j]), bool(t["rerun_ok"][j]), m.norm)
        for j, p in enumerate(plans)
    ]
    eps_l = f"{eps_label(m.norm)} {format_eps(large_eps(m.run.dataset, m.norm), m.norm)}"
    fname = f"adversarial-{slug(name)}-{safe_name(m.run_id)}.png"
    v.shown.setdefault(name, []).append(fname)
    v.files[fname] = figures.strip_png(
        f"{m.run.defense} ({m.run_id})" + ("" if m.norm == LINF else f", {m.norm}"),
        x,
        y,
        classes,
        t,
        caps,
        eps_l,
        format_eps(max(m.eps_keys, default=0) / 1e9, m.norm),
    )
    v.captions[fname] = (
        f"{m.run_id}: clean images; the example of the first attack that broke each "
        "at the grid's largest eps (the store keeps only per-point flags, so the example "
        "is recomputed from the checkpoint: that attack rerun with its stored seed at the "
        f"eps where it first broke the image); PGD ({LARGE_STEPS} steps) at {eps_l}, "
        "far above the grid. Labels: the model's prediction (green: correct, red: wrong)"
    )


def build(
    sets: dict[str, tuple[int, list[Model]]], out: Path, data_dir: str | Path | None = None
) -> Visuals:
    """Every section's pictures, computed on the CPU where not cached under ``out``."""
    started = time.perf_counter()
    v = Visuals()
    for name, (_, models) in sets.items():
        dataset_figures(name, models, out, data_dir, v)
    v.notes = list(dict.fromkeys(v.notes))  # a model of two sections is noted once
    v.seconds = time.perf_counter() - started
    return v
