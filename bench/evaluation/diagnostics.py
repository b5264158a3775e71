"""Attack-failure diagnostics: checks that catch a model that fakes robustness.

Each check returns a :class:`Finding` whose ``source`` names where its rule comes from:

* AutoAttack's ``checks.py`` (Croce & Hein 2020, github.com/fra31/auto-attack):
  ``check_randomized``, ``check_range_output``, ``check_zero_gradients``, ``check_square_sr``;
* Pintor et al. 2022, "Indicators of Attack Failure: Debugging and Improving Optimization of
  Adversarial Examples" (IoAF, NeurIPS 2022; github.com/pralab/IndicatorsOfAttackFailure,
  ``src/indicators/indicators.py``): unavailable gradients, incomplete optimization,
  unconstrained attack failure, transfer failure;
* Carlini et al. 2019, "On Evaluating Adversarial Robustness" (arXiv:1902.06705): iterative
  attacks must beat single-step ones, unbounded attacks must reach 100% success, transfer
  attacks must not beat white-box ones;
* ART's ``loss_gradient_check`` (Adversarial Robustness Toolbox, ``art/metrics/gradient_check.py``):
  per-point zero, NaN or infinite loss gradients.

Cheap checks (:func:`run_cheap`: a handful of forward passes and one backward pass on at most
a few hundred points) are meant to run with every evaluation; comparison checks work on the
per-point robust flags an evaluation already has (True = the attack failed on that point);
costly checks (:func:`check_large_budget`, :func:`pgd_with_trace`) run attacks of their own on
at most 100 points. Nothing here picks a device: inputs go to the model's device.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench.io import model_device
from bench.vocab import Check

#: The checks that make findings (AutoAttack's warnings and the transfer matrix are stored apart).
CHECKS: tuple[str, ...] = tuple(
    c.value for c in Check if c not in (Check.AUTOATTACK_CHECKS, Check.TRANSFER_MATRIX)
)

SOURCES: dict[str, str] = {
    Check.RANDOMIZED: "AutoAttack checks.py (check_randomized)",
    Check.PROBABILITIES: "AutoAttack checks.py (check_range_output)",
    Check.GRADIENTS: (
        "AutoAttack checks.py (check_zero_gradients); IoAF, Pintor et al. 2022 (unavailable "
        "gradients); ART art/metrics/gradient_check.py (loss_gradient_check)"
    ),
    Check.SQUARE_VS_WHITEBOX: (
        "AutoAttack checks.py (check_square_sr), with McNemar's exact test in place of its "
        "0.2-point accuracy margin"
    ),
    Check.ITERATIVE_VS_SINGLE_STEP: (
        "Carlini et al. 2019, On Evaluating Adversarial Robustness (iterative attacks must "
        "beat single-step ones)"
    ),
    Check.LARGE_BUDGET: (
        "Carlini et al. 2019, On Evaluating Adversarial Robustness (unbounded attacks must reach "
        "100% success); IoAF, Pintor et al. 2022 (unconstrained attack failure)"
    ),
    Check.LOSS_TRACE: "IoAF, Pintor et al. 2022 (incomplete optimization)",
    Check.TRANSFER: (
        "Carlini et al. 2019, On Evaluating Adversarial Robustness (transfer attacks must not "
        "beat white-box ones); cf. IoAF, Pintor et al. 2022 (transfer failure)"
    ),
    Check.WALK_INFERENCE: (
        "Carlini et al. 2019, On Evaluating Adversarial Robustness (attack success must increase "
        "with the distortion bound)"
    ),
}

# Thresholds (module constants so that the README and the tests can quote them).
RANDOMIZED_TOL = 1e-4  # AutoAttack's alpha: L2 distance of L2-normalised logit rows
RANDOMIZED_PASSES = 5  # AutoAttack's n
PROBABILITY_TOL = 1e-5  # AutoAttack's alpha for check_range_output
ZERO_GRADIENT_SHARE = 0.01  # flag when more than 1% of points have an all-zero gradient
ALPHA = 0.01  # significance level of the McNemar comparisons
LARGE_BUDGET_EPS = 1.0  # Linf 1 on [0, 1] images: every image is reachable (unbounded)
LARGE_BUDGET_ACC = 0.01  # flag when accuracy under it stays above 1%
TRACE_WINDOW = 10  # IoAF: the last 10 iterations
TRACE_TOL = 0.05  # IoAF: a rise of more than 5% of the loss's range in that window
TRACE_SHARE = 0.10  # flag when more than 10% of the assessed points are incomplete
COSTLY_MAX_POINTS = 100
INFERENCE_SHARE = 0.01  # flag when more than 1% of the inferred robust flags checked are refuted
CHEAP_MAX_POINTS = 200


@dataclass
class Finding:
    """The result of one check: ``flagged`` means "this evaluation may overstate robustness"."""

    check: str
    flagged: bool
    source: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return {
            "check": self.check,
            "flagged": bool(self.flagged),
            "source": self.source,
            "summary": self.summary,
            "details": _plain(self.details),
            "advice": self.advice,
        }


def _plain(value: Any) -> Any:
    """Tensors, numpy-like scalars and tuples turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
        return value.item()
    return value


def _finding(
    check: str, flagged: bool, summary: str, details: dict[str, Any], advice: str
) -> Finding:
    return Finding(check, bool(flagged), SOURCES[check], summary, _plain(details), advice)


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; the model's former mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _share(mask: torch.Tensor) -> float:
    """The exact share of True entries (count / n, not a float32 mean)."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _as_flags(flags: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(flags).detach().cpu().flatten()
    if t.dtype != torch.bool:
        t = t != 0
    if t.numel() == 0:
        raise ValueError(f"{name}: no points")
    return t


# ------------------------------------------------------------------------ cheap checks


def check_randomized(
    model: nn.Module, x: torch.Tensor, passes: int = RANDOMIZED_PASSES, tol: float = RANDOMIZED_TOL
) -> Finding:
    """Repeated forward passes in eval mode on the same batch must agree.

    Rule (AutoAttack ``check_randomized``): ``passes`` (5) forward passes; each output row is
    divided by its L2 norm; flagged if, for some point and some pair of passes, the L2 distance
    of the normalised rows exceeds ``tol`` (1e-4), or if the predicted class of some point
    changes between passes (AutoAttack compares the number of correct points; without labels we
    compare the predictions, which is stricter). Normalising makes the tolerance relative, so
    the float nondeterminism of a deterministic model (about 1e-7) stays far below it while
    inference-time noise or dropout, even small, does not.
    """
    if passes < 2:
        raise ValueError(f"passes must be >= 2, got {passes}")
    x = x.detach().to(model_device(model))
    with _eval_mode(model), torch.no_grad():
        outs = [model(x).detach().double() for _ in range(passes)]
    rows = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    diff = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for i in range(passes - 1):
        for j in range(i + 1, passes):
            diff = torch.maximum(diff, (rows[i] - rows[j]).norm(dim=1))
    preds = torch.stack([o.argmax(dim=1) for o in outs])
    flips = (preds != preds[0]).any(dim=0)
    differ = diff > tol
    n = len(x)
    share, flip_share = _share(differ), _share(flips)
    flagged = bool(differ.any() or flips.any())
    summary = (
        f"{_pct(share)} of {n} points' logits differ between {passes} forward passes "
        f"(max normalised L2 difference {float(diff.max()):.2g}, tolerance {tol:g}); "
        f"{_pct(flip_share)} change their predicted class"
    )
    details = {
        "n": n,
        "passes": passes,
        "tol": tol,
        "share_differ": share,
        "share_prediction_changes": flip_share,
        "max_normalised_diff": float(diff.max()),
    }
    advice = (
        "Evaluate as a randomized defense: AutoAttack version='rand' (APGD with EOT) or EOT-PGD, "
        "and report accuracy averaged over several runs."
        if flagged
        else "None needed: the model is deterministic at inference."
    )
    return _finding(Check.RANDOMIZED, flagged, summary, details, advice)


def check_probabilities(model: nn.Module, x: torch.Tensor, tol: float = PROBABILITY_TOL) -> Finding:
    """The model must return logits, not probabilities.

    Rule (AutoAttack ``check_range_output``): flagged if every output lies in (-tol, 1 + tol)
    and every row sums to 1 within ``tol`` (1e-5). Log-probabilities (every row's logsumexp
    equal to 0 within ``tol``) are reported in ``details`` but NOT flagged: log_softmax only
    shifts each row by a constant, so cross-entropy, the margin (CW) loss and DLR -- all
    shift-invariant -- and their gradients are exactly those of the logits.
    """
    x = x.detach().to(model_device(model))
    with _eval_mode(model), torch.no_grad():
        out = model(x).detach().double()
    n, k = out.shape[0], out.shape[-1]
    row_sum_err = (out.sum(dim=-1) - 1.0).abs()
    flagged = bool(out.max() < 1 + tol and out.min() > -tol and (row_sum_err < tol).all())
    log_probs = bool(out.max() < tol and (torch.logsumexp(out, dim=-1).abs() < tol).all())
    if flagged:
        summary = (
            f"outputs of all {n} points are in [0, 1] and each row sums to 1: "
            "probabilities, not logits"
        )
    elif log_probs:
        summary = (
            f"outputs of all {n} points are log-probabilities "
            "(not flagged: same gradients as logits)"
        )
    else:
        summary = (
            f"outputs look like logits (range [{float(out.min()):.3g}, {float(out.max()):.3g}])"
        )
    details = {
        "n": n,
        "classes": k,
        "min": float(out.min()),
        "max": float(out.max()),
        "max_row_sum_error": float(row_sum_err.max()),
        "tol": tol,
        "log_probabilities": log_probs,
    }
    advice = (
        "Attack the logits: remove the final softmax (or take the log) before running the attacks."
        if flagged
        else "None needed."
    )
    return _finding(Check.PROBABILITIES, flagged, summary, details, advice)


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Per-point gradient of the cross-entropy (summed over the batch, so each point's gradient
    does not depend on the batch size) with respect to the input, in eval mode; None when the
    input is not part of the graph or backward fails (IoAF's "interrupted computational graph").
    Parameters' ``.grad`` are left untouched."""
    device = model_device(model)
    xr = x.detach().to(device).clone().requires_grad_(True)
    with _eval_mode(model), torch.enable_grad():
        out = model(xr)
        # The loss in float64: an honest model's very confident point keeps a tiny non-zero
        # gradient (float32 softmax would round it to 0), while a saturated or masked model's
        # gradient stays exactly 0 (logits scaled by 1e4 overflow float64's range too).
        loss = F.cross_entropy(out.double(), y.detach().to(device), reduction="sum")
        if not loss.requires_grad:
            return None
        try:
            (grad,) = torch.autograd.grad(loss, xr, allow_unused=True)
        except RuntimeError:  # e.g. an op without a backward
            return None
    return None if grad is None else grad.detach()


def check_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, zero_share: float = ZERO_GRADIENT_SHARE
) -> Finding:
    """Input gradients of the cross-entropy must exist, be finite and be non-zero.

    Per point, as ART's ``loss_gradient_check``: zero (every component exactly 0, which is
    AutoAttack's ``check_zero_gradients`` test), NaN (any component) or inf (any component).
    Flagged if the input is cut off from the graph (IoAF's interrupted graph: every point
    counts as unavailable), if any point has a NaN or infinite gradient, or if more than
    ``zero_share`` (1%) of the points have a zero gradient. AutoAttack and IoAF warn at a single
    zero-gradient point; we allow 1%, and evaluate the cross-entropy on the logits in float64,
    because an honest model can be so confident on a point that float32 softmax rounds its
    gradient to 0, whereas masking (saturated softmax, quantisation, non-differentiable
    preprocessing) zeroes the gradient of most points in any precision.
    """
    n = len(x)
    grad = input_gradients(model, x, y)
    if grad is None:
        summary = f"no input gradient at all on {n} points: the input is cut off from the graph"
        details = {
            "n": n,
            "graph_interrupted": True,
            "share_zero": 1.0,
            "share_nan": 0.0,
            "share_inf": 0.0,
            "share_unavailable": 1.0,
            "zero_share_threshold": zero_share,
        }
        advice = (
            "Make the model differentiable end to end, or attack it with BPDA "
            "(a differentiable approximation of the broken part) and with black-box attacks."
        )
        return _finding(Check.GRADIENTS, True, summary, details, advice)
    flat = grad.reshape(n, -1)
    zero = (flat == 0).all(dim=1)
    nan = torch.isnan(flat).any(dim=1)
    inf = torch.isinf(flat).any(dim=1)
    bad = zero | nan | inf
    s_zero, s_nan, s_inf = _share(zero), _share(nan), _share(inf)
    flagged = bool(nan.any() or inf.any() or s_zero > zero_share)
    summary = (
        f"{_pct(_share(bad))} of {n} points have unusable cross-entropy input "
        f"gradients (zero {_pct(s_zero)}, NaN {_pct(s_nan)}, inf {_pct(s_inf)}; "
        f"threshold: zero on more than {_pct(zero_share)}, or any NaN/inf)"
    )
    details = {
        "n": n,
        "graph_interrupted": False,
        "share_zero": s_zero,
        "share_nan": s_nan,
        "share_inf": s_inf,
        "share_unavailable": _share(bad),
        "zero_points": int(zero.sum()),
        "zero_share_threshold": zero_share,
    }
    advice = (
        "Gradient-based attacks are blind here: add a margin/DLR-loss attack (APGD-DLR, CW loss), "
        "BPDA for non-differentiable parts, and Square (black-box)."
        if flagged
        else "None needed."
    )
    return _finding(Check.GRADIENTS, flagged, summary, details, advice)


def run_cheap(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_points: int = CHEAP_MAX_POINTS
) -> list[Finding]:
    """The cheap checks (randomized, probabilities, gradients) on the first ``max_points``
    points: 5 + 1 forward passes and 1 forward-backward pass."""
    x, y = x[:max_points], y[:max_points]
    return [check_randomized(model, x), check_probabilities(model, x), check_gradients(model, x, y)]


# ------------------------------------------------------------------- comparison checks


def mcnemar(a_broke_b_not: int, b_broke_a_not: int) -> float:
    """Exact two-sided McNemar p-value: under H0 each discordant pair falls either way with
    probability 1/2, so p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))."""
    b, c = int(a_broke_b_not), int(b_broke_a_not)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def _compare(
    weak_name: str,
    weak_flags: torch.Tensor,
    strong_name: str,
    strong_flags: torch.Tensor,
    alpha: float,
) -> tuple[bool, str, dict[str, Any]]:
    """McNemar comparison of two attacks' robust flags; flagged if the weak one is ahead."""
    weak = _as_flags(weak_flags, weak_name)
    strong = _as_flags(strong_flags, strong_name)
    if weak.shape != strong.shape:
        raise ValueError(f"{weak_name} has {weak.numel()} flags, {strong_name} {strong.numel()}")
    weak_only = int((~weak & strong).sum())  # broken by the weaker attack only
    strong_only = int((weak & ~strong).sum())
    p = mcnemar(weak_only, strong_only)
    flagged = weak_only > strong_only and p < alpha
    n = weak.numel()
    acc_w, acc_s = _share(weak), _share(strong)
    summary = (
        f"{weak_name} {_pct(acc_w)} vs {strong_name} {_pct(acc_s)} robust accuracy on {n} points; "
        f"{weak_only} broken only by {weak_name}, {strong_only} only by {strong_name}; "
        f"McNemar p = {p:.3g} (flag if p < {alpha:g} with {weak_name} ahead)"
    )
    details = {
        "n": n,
        "weak": weak_name,
        "strong": strong_name,
        "weak_acc": acc_w,
        "strong_acc": acc_s,
        "broken_only_by_weak": weak_only,
        "broken_only_by_strong": strong_only,
        "p_value": p,
        "alpha": alpha,
    }
    return flagged, summary, details


def compare_attacks(
    check: str,
    weak_name: str,
    weak_flags: torch.Tensor,
    strong_name: str,
    strong_flags: torch.Tensor,
    alpha: float = ALPHA,
) -> Finding:
    """Flag when the attack that should be weaker breaks significantly more points.

    ``*_flags``: per-point robust flags of equal length (True = the attack failed there).
    ``check``: ``square-vs-whitebox`` (weak = Square, strong = the white-box attacks' worst
    case: a black-box attack must not beat gradient-based ones, AutoAttack ``check_square_sr``)
    or ``iterative-vs-single-step`` (weak = FGSM, strong = an iterative attack such as PGD:
    Carlini et al. 2019). Rule: with b = points broken by the weak attack only and c = by the
    strong one only, flagged iff b > c and the exact McNemar p-value of (b, c) is below
    ``alpha`` (0.01). AutoAttack's own rule is an accuracy gap above 0.2 points; the paired
    test is used instead so that one point out of 100 is not an alarm.
    """
    if check not in (Check.SQUARE_VS_WHITEBOX, Check.ITERATIVE_VS_SINGLE_STEP):
        raise ValueError(
            f"check must be 'square-vs-whitebox' or 'iterative-vs-single-step', got {check!r}"
        )
    flagged, summary, details = _compare(weak_name, weak_flags, strong_name, strong_flags, alpha)
    if check == Check.SQUARE_VS_WHITEBOX:
        advice = (
            "The white-box attacks are failing (masked gradients?): run Square with more "
            "queries and restarts, and an adaptive attack (BPDA/EOT)."
        )
    else:
        advice = (
            "The iterative attack is failing (masked or noisy gradients, bad step size?): "
            "check the gradients and the loss trace, try APGD and a margin loss."
        )
    return _finding(check, flagged, summary, details, advice if flagged else "None needed.")


def _check_within(x: torch.Tensor, x_adv: torch.Tensor, eps: float | None) -> None:
    """ValueError unless ``x_adv`` has x's shape and, if ``eps`` is given, lies within eps of x
    and in [0, 1] (tolerance 1e-6, as the evaluator's budget check)."""
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv_transfer has shape {tuple(x_adv.shape)}, x {tuple(x.shape)}")
    if eps is None or not x.numel():
        return
    delta = float((x_adv - x).abs().max())
    if delta > eps + 1e-6 or float(x_adv.min()) < -1e-6 or float(x_adv.max()) > 1 + 1e-6:
        raise ValueError(
            f"transfer examples leave the budget: max|x_adv - x| = {delta:.6g} (eps {eps:.6g}), "
            f"range [{float(x_adv.min()):.6g}, {float(x_adv.max()):.6g}] (allowed [0, 1])"
        )


def check_transfer(
    target_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv_transfer: torch.Tensor,
    whitebox_flags: torch.Tensor,
    alpha: float = ALPHA,
    eps: float | None = None,
) -> Finding:
    """Adversarial examples crafted on another model must not beat the white-box attacks.

    ``x_adv_transfer``: examples for ``x`` crafted on a surrogate (e.g. a standard model of the
    same data set) within the same budget; ``whitebox_flags``: per-point robust flags of the
    white-box attacks' worst case on ``target_model`` (True = every white-box attack failed).
    A point is robust to transfer if the target classifies both x and its transfer example
    correctly. Rule (Carlini et al. 2019): as :func:`compare_attacks` with weak = transfer and
    strong = white-box -- flagged iff transfer breaks more points that white-box left standing
    than the reverse, with exact McNemar p < ``alpha`` (0.01). IoAF's "transfer failure"
    indicator looks at the reverse direction (an example that fools the surrogate does not fool
    the target) and is not computed here. ``eps``: if given, the transfer examples are checked
    to lie within it (and in [0, 1]); a violation is a ValueError.
    """
    device = model_device(target_model)
    x, x_adv = x.detach().to(device), x_adv_transfer.detach().to(device)
    _check_within(x, x_adv, eps)
    y = y.detach().to(device)
    with _eval_mode(target_model), torch.no_grad():
        transfer_flags = (target_model(x).argmax(1) == y) & (target_model(x_adv).argmax(1) == y)
    flagged, summary, details = _compare(
        "transfer", transfer_flags.cpu(), "white-box", whitebox_flags, alpha
    )
    standing = int(_as_flags(whitebox_flags, "white-box").sum())
    details["whitebox_standing"] = standing
    details["share_of_standing_broken_by_transfer"] = (
        details["broken_only_by_weak"] / standing if standing else 0.0
    )
    advice = (
        (
            "The white-box attacks are failing where a surrogate's examples succeed (gradient "
            "masking): use adaptive attacks (BPDA, EOT, margin loss) and report the worst case "
            "including transfer."
        )
        if flagged
        else "None needed."
    )
    return _finding(Check.TRANSFER, flagged, summary, details, advice)


def check_inference(
    inferred_eps: float, measured_eps: float, direct: torch.Tensor, share: float = INFERENCE_SHARE
) -> Finding:
    """The grid walks ``down`` and ``bisect`` count a point robust at a smaller eps because the
    attacks left it robust at a larger one; that inference holds only if attack success grows
    with the budget (Carlini et al. 2019). ``direct``: robust flags, after a direct attack at
    ``inferred_eps``, of points that every attack left robust at ``measured_eps`` (so counted
    robust at ``inferred_eps`` without being attacked there). Each point broken is a proof that
    its inferred flag is wrong (and that the attacks at ``measured_eps`` missed it: the balls
    are nested). Flagged when more than ``share`` of the checked points are broken."""
    direct = _as_flags(direct, "direct")
    m, broken = len(direct), int((~direct).sum())
    flagged = m > 0 and broken / m > share
    summary = (
        f"{broken} of {m} points counted robust at eps {inferred_eps:.4g} (inferred from eps "
        f"{measured_eps:.4g}) are broken by PGD run there directly "
        f"({_pct(broken / m if m else 0.0)}; "
        f"flag above {_pct(share)})"
    )
    details = {
        "inferred_eps": inferred_eps,
        "measured_eps": measured_eps,
        "checked": m,
        "broken": broken,
        "share_limit": share,
    }
    advice = (
        (
            "The attacks are not monotone in eps on this model (gradient masking, or a step size "
            "that suits one budget only): the inferred robust flags overstate robustness at the "
            "smaller eps, and the attacks missed these points at the larger one. Rerun with "
            "--walk up (every eps measured) and stronger or adaptive attacks."
        )
        if flagged
        else "None needed."
    )
    return _finding(Check.WALK_INFERENCE, flagged, summary, details, advice)


# ------------------------------------------------------------------------ costly checks


def _margin_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point: best other logit minus the true one (CW loss; > 0 means misclassified)."""
    true = out.gather(1, y[:, None]).squeeze(1)
    other = out.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(dim=1).values - true


def _attack_loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "ce":
        return F.cross_entropy(out.float(), y, reduction="none")
    if name == "margin":
        return _margin_loss(out.float(), y)
    raise ValueError(f"loss must be 'ce' or 'margin', got {name!r}")


def _loss_and_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-point loss, predictions and the input gradient of the summed loss (zeros where the
    graph is cut)."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xr)
        values = _attack_loss(loss, out, y)
        grad = None
        if values.requires_grad:
            (grad,) = torch.autograd.grad(values.sum(), xr, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else torch.nan_to_num(grad.detach())
    return values.detach(), out.detach().argmax(1), grad


def _pgd_broken(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    loss: str,
) -> torch.Tensor:
    """Linf PGD from x itself (no random start), sign steps; per point, True if some iterate
    (each inside the ball and [0, 1]) is misclassified."""
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    for _ in range(steps):
        _, pred, grad = _loss_and_grad(model, x_adv, y, loss)
        broken |= pred != y
        x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        broken |= model(x_adv).argmax(1) != y
    return broken


def check_large_budget(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = LARGE_BUDGET_EPS,
    steps: int = 50,
    alpha: float | None = None,
    max_acc: float = LARGE_BUDGET_ACC,
    max_points: int = COSTLY_MAX_POINTS,
) -> Finding:
    """Under a huge Linf budget, accuracy must fall to about zero.

    Attack: Linf PGD started at x (no random start, so that it measures what the gradients
    give), ``steps`` (50) sign steps of ``alpha`` (2.5 * eps / steps), first on the
    cross-entropy, then on the margin (CW) loss for the points still standing; a point counts
    as broken if any iterate is misclassified. With eps = 1 (the default) every image in
    [0, 1] is reachable, so 0% is always attainable (Carlini et al. 2019: unbounded attacks
    must reach 100% success; IoAF: unconstrained attack failure). Rule: flagged if accuracy on
    the first ``max_points`` (100) points stays above ``max_acc`` (1%). IoAF counts any
    surviving point; 1% allows one point in 100 for a numerical tie.
    """
    if not 0 < eps or steps < 1:
        raise ValueError(f"eps must be > 0 and steps >= 1, got eps {eps}, steps {steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    device = model_device(model)
    x, y = x[:max_points].detach().to(device), y[:max_points].detach().to(device)
    n = len(x)
    with _eval_mode(model):
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        standing = clean.clone()
        for loss in ("ce", "margin"):
            idx = standing.nonzero().flatten()
            if len(idx):
                standing[idx] &= ~_pgd_broken(model, x[idx], y[idx], eps, steps, alpha, loss)
    acc, clean_acc = _share(standing), _share(clean)
    flagged = acc > max_acc
    summary = (
        f"accuracy {_pct(acc)} at Linf eps {eps:g} ({steps}-step PGD on CE then margin loss, "
        f"{n} points, clean {_pct(clean_acc)}); should be about 0 (flag above {_pct(max_acc)})"
    )
    details = {
        "n": n,
        "eps": eps,
        "steps": steps,
        "alpha": alpha,
        "losses": ["ce", "margin"],
        "clean_acc": clean_acc,
        "acc": acc,
        "survivors": int(standing.sum()),
        "max_acc": max_acc,
    }
    advice = (
        (
            "Gradient-based attacks fail even without a budget (masked or obfuscated "
            "gradients): use BPDA/EOT, a black-box attack (Square) and transfer from a "
            "standard model."
        )
        if flagged
        else "None needed."
    )
    return _finding(Check.LARGE_BUDGET, flagged, summary, details, advice)


def pgd_with_trace(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linf PGD on the cross-entropy (Madry et al. 2018) that records each point's loss.

    Returns ``(x_adv, losses)``: ``x_adv`` the last iterate (as torchattacks' PGD), on the
    model's device; ``losses[k, i]`` the CE of point i after step k + 1 (shape [steps, n], on
    the CPU). ``random_start``: uniform in the eps-ball, drawn on the CPU with ``generator``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = model_device(model)
    x, y = x.detach().to(device), y.detach().to(device)
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        x_adv = (x + eps * noise.to(device)).clamp(0, 1)
    trace: list[torch.Tensor] = []
    with _eval_mode(model):
        for k in range(steps):
            values, _, grad = _loss_and_grad(model, x_adv, y, "ce")
            if k > 0:
                trace.append(values.cpu())
            x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            trace.append(_attack_loss("ce", model(x_adv), y).detach().cpu())
    return x_adv.detach(), torch.stack(trace)


def incomplete_points(
    losses: torch.Tensor, window: int = TRACE_WINDOW, tol: float = TRACE_TOL
) -> torch.Tensor:
    """IoAF's per-point incomplete-optimization indicator for a maximised loss ``losses``
    [steps, n]: the trace is rescaled to [0, 1] by its own min and max, replaced by its running
    best (running max: the attacker maximises), and a point is incomplete if that running best
    still rose by more than ``tol`` (5%) over the last ``window`` (10) iterations. A constant
    trace is complete. Points with a non-finite loss are False here."""
    if losses.dim() != 2 or losses.shape[0] < 2:
        raise ValueError(f"losses must be [steps >= 2, n], got shape {tuple(losses.shape)}")
    t = losses.detach().double().cpu()
    lo, hi = t.min(dim=0).values, t.max(dim=0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    best = ((t - lo) / span).cummax(dim=0).values
    w = min(window, t.shape[0])
    rise = best[-1] - best[-w]
    return (rise > tol) & torch.isfinite(t).all(dim=0)


def check_loss_trace(
    losses: torch.Tensor,
    robust: torch.Tensor | None = None,
    window: int = TRACE_WINDOW,
    tol: float = TRACE_TOL,
    max_share: float = TRACE_SHARE,
) -> Finding:
    """IoAF "incomplete optimization": the attack's loss is still improving at the end.

    ``losses`` [steps, n]: the loss the attack maximises, per iteration and point (e.g. from
    :func:`pgd_with_trace`). Per point: :func:`incomplete_points` (IoAF's rule: loss rescaled
    to [0, 1], running best, rise > 5% over the last 10 iterations). ``robust``: per-point
    flags (True = the attack failed); if given, only those points are assessed, since on a
    broken point a still-rising CE means nothing. Flagged if more than ``max_share`` (10%) of
    the assessed points are incomplete (IoAF reports the per-point indicator; the 10% share is
    ours). With 10 steps or fewer the window is the whole trace, so any progress counts: the
    check is meant for attacks of tens of steps or more.
    """
    inc = incomplete_points(losses, window, tol)
    n = inc.numel()
    finite = torch.isfinite(losses.detach().cpu()).all(dim=0)
    mask = finite.clone()
    if robust is not None:
        r = _as_flags(robust, "robust")
        if r.numel() != n:
            raise ValueError(f"robust has {r.numel()} flags, losses {n} points")
        mask &= r
    assessed = int(mask.sum())
    count = int((inc & mask).sum())
    share = count / assessed if assessed else 0.0
    flagged = share > max_share
    who = "points the attack failed on" if robust is not None else "points"
    summary = (
        f"{_pct(share)} of {assessed} {who} still improving over the last "
        f"{min(window, losses.shape[0])} of {losses.shape[0]} steps (rise > {_pct(tol)} of the "
        f"loss range; flag above {_pct(max_share)})"
    )
    details = {
        "n": n,
        "assessed": assessed,
        "incomplete": count,
        "share_incomplete": share,
        "steps": int(losses.shape[0]),
        "window": window,
        "tol": tol,
        "max_share": max_share,
        "non_finite_points": int((~finite).sum()),
    }
    advice = (
        ("The attack stopped too early: run more iterations or a larger/adaptive step size (APGD).")
        if flagged
        else "None needed."
    )
    return _finding(Check.LOSS_TRACE, flagged, summary, details, advice)
