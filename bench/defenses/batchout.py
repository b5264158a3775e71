"""BatchOut: feature-space augmentation towards other samples of the same mini-batch.

At each hooked layer with output X (a batch of m), partners R are drawn and the perturbed
samples become ``X + eta * (X[R] - X)``; the direction is detached, so no gradient flows
through the partner. Labels are unchanged (unlike mixup). Algorithm 1 of the BatchOut paper
perturbs only the first k samples with partners drawn with replacement and eta ~ U[0, 0.15];
the report in our sources adds two variants (every sample perturbed, mutual pairing) and
explores placement (skip initial layers, alternate layers), same-class partners and
magnitudes drawn from a small set.

The perturbation is applied by forward hooks on the blocks named in ``model.feature_layers``,
so it works on any model whose ``forward`` we don't control (ResNets). A forward pre-hook on
the model root draws what a whole forward pass shares (eta; the mutual pairing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from bench.defenses.base import Defense
from bench.errors import UsageError
from bench.params import parse_number

SAMPLES = ("first-k", "all")
PAIRINGS = ("random", "mutual")
PARTNERS = ("any", "same-class")

#: A parsed magnitude: ("fixed", (v,)), ("uniform", (lo, hi)) or ("choice", (a, b, ...)).
MagnitudeSpec = tuple[str, tuple[float, ...]]
#: A parsed placement: ("names", names), ("after", D), ("alternate", D) or ("all", None).
LayerSpec = tuple[str, Any]


# --- parsing (ValueError on bad strings: build_dataclass turns it into a UsageError) ----------


def _number(text: str, what: str) -> float:
    try:
        return parse_number(text, what)
    except UsageError as exc:  # keep __post_init__'s contract: ValueError for bad values
        raise ValueError(str(exc)) from None


def parse_magnitude(text: str) -> MagnitudeSpec:
    """``"0.3"`` (fixed), ``"uniform:LO:HI"`` or ``"choice:A,B,C"``; numbers may be fractions."""
    s = text.strip()
    head, sep, rest = s.partition(":")
    mode = head.strip().lower()
    if not sep:
        return "fixed", (_number(s, "magnitude"),)
    if mode == "uniform":
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError(f"magnitude {text!r}: write uniform:LO:HI, e.g. uniform:0:0.15")
        lo, hi = (_number(p, "magnitude bound") for p in parts)
        if lo > hi:
            raise ValueError(f"magnitude {text!r}: LO is above HI")
        return "uniform", (lo, hi)
    if mode == "choice":
        items = [p for p in rest.split(",") if p.strip()]
        if not items:
            raise ValueError(f"magnitude {text!r}: write choice:A,B,..., e.g. choice:-0.2,0,0.3")
        return "choice", tuple(_number(p, "magnitude value") for p in items)
    raise ValueError(
        f"magnitude {text!r}: write a number, uniform:LO:HI or choice:A,B,... (e.g. uniform:0:0.15)"
    )


def parse_layers(text: str) -> LayerSpec:
    """``"names:a,b"``, ``"after:D"``, ``"alternate:D"`` or ``"all"`` (checked against a model
    later)."""
    s = text.strip()
    head, sep, rest = s.partition(":")
    mode = head.strip().lower()
    if mode == "all" and not sep:
        return "all", None
    if mode == "names" and sep:
        names = tuple(n.strip() for n in rest.split(",") if n.strip())
        if not names:
            raise ValueError(f"layers {text!r}: names: needs at least one layer name")
        return "names", names
    if mode in ("after", "alternate") and sep:
        try:
            depth = int(rest.strip())
        except ValueError:
            raise ValueError(f"layers {text!r}: the depth must be a whole number") from None
        if depth < 0:
            raise ValueError(f"layers {text!r}: the depth must be >= 0")
        return mode, depth
    raise ValueError(f"layers {text!r}: write names:a,b / after:D / alternate:D / all")


def select_layers(spec: str | LayerSpec, feature_layers: list[str]) -> list[str]:
    """The names of ``feature_layers`` that a placement selects, in depth order.

    Raises UsageError naming the bad layer or depth and listing the valid layers.
    """
    kind, arg = parse_layers(spec) if isinstance(spec, str) else spec
    layers = list(feature_layers)
    valid = ", ".join(f"{i}:{n}" for i, n in enumerate(layers)) or "(none)"
    if kind == "all":
        selected = layers
    elif kind == "names":
        unknown = [n for n in arg if n not in layers]
        if unknown:
            raise UsageError(
                f"batchout layer {unknown[0]!r} is not a feature layer; valid: {valid}"
            )
        wanted = set(arg)
        selected = [n for n in layers if n in wanted]
    else:
        step = 1 if kind == "after" else 2
        selected = layers[arg::step]
    if not selected:
        raise UsageError(
            f"batchout layers {kind}:{arg} selects no layer (depth {arg} but the model has "
            f"{len(layers)} feature layers, index 0 first); valid: {valid}"
        )
    return selected


# --- drawing (torch's global RNG, so the training loop's seed governs it) ---------------------


def draw_magnitude(spec: MagnitudeSpec) -> float:
    """One eta: the fixed value, a uniform draw in [LO, HI], or one element of the set."""
    kind, values = spec
    if kind == "fixed":
        return values[0]
    if kind == "uniform":
        lo, hi = values
        # A CPU scalar draw: no device synchronisation when training on CUDA.
        return lo + (hi - lo) * float(torch.rand(()))
    return values[int(torch.randint(len(values), ()))]


def _class_positions(labels: torch.Tensor, shuffle: bool) -> tuple[torch.Tensor, ...]:
    """Samples grouped by label: ``order`` (position -> sample), each position's group start and
    size.

    With ``shuffle`` the order within each class is random. Built without ``.item()`` so it
    stays on the labels' device without synchronising.
    """
    m = labels.shape[0]
    device = labels.device
    perm = torch.randperm(m, device=device) if shuffle else torch.arange(m, device=device)
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    pos = torch.arange(m, device=device)
    new = torch.ones(m, dtype=torch.bool, device=device)
    new[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group = torch.cumsum(new.long(), 0) - 1
    start = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), 0).values
    counts = torch.zeros(m, dtype=torch.long, device=device).scatter_add_(
        0, group, torch.ones_like(group)
    )
    return order, pos, start, counts[group]


def draw_partners(
    m: int,
    pairing: str,
    labels: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Partner indices R (LongTensor [m]) for a batch of ``m``.

    ``random``: uniform with replacement (Algorithm 1; a sample may be its own partner).
    ``mutual``: a random involution, R[R[i]] == i, from a random permutation paired two by two;
    with an odd count one sample is left as its own partner. With ``labels``, partners are drawn
    only within each class (a class with one member pairs with itself).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if labels is not None:
        if labels.shape != (m,):
            raise ValueError(f"labels of shape {tuple(labels.shape)} for a batch of {m}")
        device = labels.device
    if pairing == "random" and labels is None:
        return torch.randint(0, m, (m,), device=device)
    if labels is None:  # mutual over the whole batch: one group
        labels = torch.zeros(m, dtype=torch.long, device=device)
    order, pos, start, size = _class_positions(labels, shuffle=pairing == "mutual")
    if pairing == "random":
        offset = (torch.rand(m, device=labels.device) * size).long()
        target = start + torch.minimum(offset, size - 1)
    else:
        rank = pos - start
        even = rank % 2 == 0
        target = torch.where(even & (rank + 1 < size), pos + 1, pos)
        target = torch.where(~even, pos - 1, target)
    partners = torch.empty(m, dtype=torch.long, device=labels.device)
    partners[order] = order[target]
    return partners


def k_count(k: float, m: int) -> int:
    """How many samples first-k mode perturbs: k*m rounded half up (0.5*3 -> 2), at most m."""
    return min(m, int(math.floor(k * m + 0.5)))


def batchout(
    x: torch.Tensor, partners: torch.Tensor, eta: float, count: int | None = None
) -> torch.Tensor:
    """``x + eta * (x[R] - x)`` for the first ``count`` samples (all when None); a new tensor.

    The direction is detached: the gradient with respect to ``x`` is the identity, as in
    Algorithm 1 where d is a fixed perturbation of the activations.
    """
    d = (x[partners] - x).detach()
    if count is None or count >= x.shape[0]:
        return x + eta * d
    # Concatenate rather than multiply by a mask: unperturbed samples stay bit-identical.
    return torch.cat([x[:count] + eta * d[:count], x[count:]], dim=0)


# --- the defense -------------------------------------------------------------------------------


@dataclass
class BatchOut(Defense):
    """BatchOut: cross-entropy with feature-space interpolation towards batch partners.

    Defaults are Algorithm 1 of the paper: the first k samples perturbed, partners drawn with
    replacement anew at each layer, any class, eta ~ U[0, 0.15]. k = 0.5 is our assumption (the
    paper's value is not in our sources). eta is drawn once per forward pass (per batch) and
    shared by all hooked layers, as the report draws n once per batch. Placement defaults to
    every feature layer but the first (the report: initial layers hurt convergence).

    ``samples``: first-k | all. ``pairing``: random | mutual (one involution per pass, shared
    by all layers). ``partners``: any | same-class. ``magnitude``: X | uniform:LO:HI |
    choice:A,B,... ``layers``: names:a,b | after:D | alternate:D | all (index 0 = first block of
    ``model.feature_layers``).
    """

    samples: str = "first-k"
    k: float = 0.5
    pairing: str = "random"
    partners: str = "any"
    magnitude: str = "uniform:0:0.15"
    layers: str = "after:1"

    def __post_init__(self) -> None:
        for name, allowed in (("samples", SAMPLES), ("pairing", PAIRINGS), ("partners", PARTNERS)):
            value = str(getattr(self, name)).strip().lower()
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
            setattr(self, name, value)
        if not (math.isfinite(self.k) and 0.0 < self.k <= 1.0):
            raise ValueError(
                f"k must be in (0, 1] (the fraction of the batch perturbed), got {self.k}"
            )
        # Parsed once here so that a bad string fails before training starts.
        self._magnitude: MagnitudeSpec = parse_magnitude(self.magnitude)
        self._layers: LayerSpec = parse_layers(self.layers)
        self._handles: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        self._labels: torch.Tensor | None = None
        self._pass_partners: torch.Tensor | None = None
        #: The layers hooked by :meth:`attach`, in depth order.
        self.hooked_layers: list[str] = []
        # The last drawn state, for inspection: per-pass eta, per-layer partners, the batch mask.
        self.last_eta: float | None = None
        self.last_partners: dict[str, torch.Tensor] = {}
        self.last_mask: torch.Tensor | None = None

    def attach(self, model: nn.Module) -> None:
        """Hook the selected feature layers of ``model`` and its root (replaces earlier hooks)."""
        self.detach()
        feature_layers = getattr(model, "feature_layers", None)
        if not feature_layers:
            raise UsageError(
                f"batchout needs a model with feature_layers; {type(model).__name__} has none"
            )
        modules = dict(model.named_modules())
        missing = [n for n in feature_layers if n not in modules]
        if missing:  # a model bug rather than a user error, but say which name
            raise UsageError(
                f"feature layer {missing[0]!r} is not a submodule of {type(model).__name__}"
            )
        selected = select_layers(self._layers, list(feature_layers))
        self._model = model
        self._handles.append(model.register_forward_pre_hook(self._begin_pass, with_kwargs=True))
        for name in selected:
            self._handles.append(modules[name].register_forward_hook(self._layer_hook(name)))
        self.hooked_layers = selected

    def detach(self) -> None:
        """Remove every hook; the model is as before :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._model = None
        self._labels = None
        self._pass_partners = None
        self.hooked_layers = []

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The hooks read the labels for same-class partners; cleared so they never go stale.
        self._labels = y
        try:
            logits = model(x)
        finally:
            self._labels = None
        return F.cross_entropy(logits, y)

    # -- hooks -----------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self._model is not None and self._model.training

    def _class_labels(self, m: int) -> torch.Tensor | None:
        """The batch labels when partners must share them, else None."""
        if self.partners != "same-class":
            return None
        if self._labels is None:
            raise RuntimeError(
                "batchout partners=same-class needs labels: train through BatchOut.loss()"
            )
        if self._labels.shape[0] != m:
            raise RuntimeError(f"batchout: {self._labels.shape[0]} labels for a batch of {m}")
        return self._labels

    def _begin_pass(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Root pre-hook: draw what every hooked layer of this forward pass shares."""
        self._pass_partners = None
        if not self._active():
            return None  # eval: nothing drawn, so evaluation leaves the RNG untouched
        self.last_partners = {}
        self.last_mask = None
        self.last_eta = draw_magnitude(self._magnitude)
        if self.pairing == "mutual":
            batch = next(
                (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None
            )
            if batch is None:
                raise RuntimeError(
                    "batchout pairing=mutual: the model was called without a tensor input"
                )
            m = batch.shape[0]
            self._pass_partners = draw_partners(m, "mutual", self._class_labels(m), batch.device)
        return None

    def _layer_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not self._active():
                return output
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"batchout layer {name!r} returns {type(output).__name__}, not a tensor"
                )
            if self.last_eta is None:
                raise RuntimeError(
                    f"batchout layer {name!r} ran outside a forward pass of the attached model"
                )
            m = output.shape[0]
            if self.pairing == "mutual":
                partners = self._pass_partners
                if partners is None or partners.shape[0] != m:
                    raise RuntimeError(
                        f"batchout layer {name!r}: batch of {m} differs from the model input's"
                    )
                partners = partners.to(output.device)
            else:  # Algorithm 1: a fresh draw at each layer
                partners = draw_partners(m, "random", self._class_labels(m), output.device).to(
                    output.device
                )
            count = None if self.samples == "all" else k_count(self.k, m)
            mask = torch.zeros(m, dtype=torch.bool, device=output.device)
            mask[: m if count is None else count] = True
            self.last_partners[name] = partners
            self.last_mask = mask
            return batchout(output, partners, self.last_eta, count)

        return hook
