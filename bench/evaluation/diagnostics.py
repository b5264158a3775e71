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
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench import norms
from bench.attacks import pgd_step
from bench.evaluation import stats
from bench.evaluation.results import status
from bench.io import model_device
from bench.norms import LINF
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
    Check.BLACK_BOX_PROBE: (
        "AutoAttack checks.py (check_square_sr) and Carlini et al. 2019 (gradient-free attacks "
        "must not beat gradient-based ones), as an always-on Square probe with McNemar's test"
    ),
}

# Thresholds (module constants so that the docs and the tests can quote them).
RANDOMIZED_TOL = 1e-4  # AutoAttack's alpha: L2 distance of L2-normalised logit rows
RANDOMIZED_PASSES = 5  # AutoAttack's n
PROBABILITY_TOL = 1e-5  # AutoAttack's alpha for check_range_output
# Null hypotheses' rates: the share of points on which an attack that is not failing may still
# show the symptom (float rounding, a numerical tie, a random start's bad luck). A check fires
# when its count exceeds what that rate explains at its level (bench.evaluation.stats.ALPHAS).
ZERO_GRADIENT_SHARE = 0.01  # H0: at most 1% of points have an all-zero gradient (float64 CE)
ALPHA = 0.01  # the family's level; each check's own level is stats.ALPHAS[check]
LARGE_BUDGET_EPS = 1.0  # Linf 1 on [0, 1] images: every image is reachable (see norms.reach)
LARGE_BUDGET_ACC = 0.01  # H0: at most 1% of points survive it (numerical ties)
TRACE_WINDOW = 10  # IoAF: the last 10 iterations
TRACE_TOL = 0.05  # IoAF: a rise of more than 5% of the loss's range in that window
COSTLY_MAX_POINTS = 100
INFERENCE_SHARE = 0.01  # H0: at most 1% of inferred robust flags are refuted by a direct attack
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

    @property
    def status(self) -> str:
        """:func:`bench.evaluation.results.status`: flagged, corrected or passed."""
        return status(self.flagged, self.details)

    @property
    def corrections(self) -> dict[str, list[int]]:
        """Eps (as text) -> indices of evaluated points broken there by this check's own attack
        (a remedy or a probe): proofs that lower the worst case at that eps and every larger one."""
        return {e: list(v) for e, v in (self.details.get("corrections") or {}).items() if v}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return {
            "check": self.check,
            "flagged": bool(self.flagged),
            "source": self.source,
            "summary": self.summary,
            "details": _plain(self.details),
            "advice": self.advice,
            "status": self.status,
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
    Proofs, flagged at once: the input cut off from the graph (IoAF's interrupted graph), a NaN
    or infinite gradient. Zero gradients are counted: H0 "at most ``zero_share`` (1%) of the
    points have a zero gradient" (an honest model so confident on a point that even the float64
    cross-entropy rounds its gradient to 0), exact one-sided binomial test at level
    ``stats.ALPHAS['gradients']``; masking (saturated softmax, quantisation) zeroes most points.
    AutoAttack and IoAF warn at a single zero-gradient point.
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
    alpha = stats.level(Check.GRADIENTS)
    p = stats.binomial_p(int(zero.sum()), n, zero_share)
    flagged = bool(nan.any() or inf.any() or p < alpha)
    summary = (
        f"{_pct(_share(bad))} of {n} points have unusable cross-entropy input "
        f"gradients (zero {_pct(s_zero)}, NaN {_pct(s_nan)}, inf {_pct(s_inf)}); "
        f"zero gradients: binomial p = {p:.3g} against at most {_pct(zero_share)} "
        f"(flag if p < {alpha:g}, or any NaN/inf)"
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
        **_test(
            "binomial",
            f"at most {_pct(zero_share)} zero gradients",
            p,
            alpha,
            stats.min_count(n, zero_share, alpha),
        ),
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
    """Exact two-sided McNemar p-value (:func:`bench.evaluation.stats.mcnemar`)."""
    return stats.mcnemar(a_broke_b_not, b_broke_a_not)


def _test(test: str, null: str, p: float, alpha: float, min_count: int | None) -> dict[str, Any]:
    """A finding's statistics: its test, null hypothesis, p-value, level and the smallest count
    that could make it fire."""
    return {"test": test, "null": null, "p_value": p, "alpha": alpha, "min_count": min_count}


def paired(
    weak_name: str,
    weak_flags: torch.Tensor,
    strong_name: str,
    strong_flags: torch.Tensor,
    alpha: float,
) -> tuple[bool, str, dict[str, Any]]:
    """McNemar comparison of two attacks' robust flags on the same points: (flagged, summary,
    details), flagged if the weak one breaks more and p < ``alpha``."""
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
        **_test(
            "McNemar exact",
            f"{weak_name} breaks no more points than {strong_name}",
            p,
            alpha,
            stats.mcnemar_min(alpha),
        ),
    }
    return flagged, summary, details


def compare_attacks(
    check: str,
    weak_name: str,
    weak_flags: torch.Tensor,
    strong_name: str,
    strong_flags: torch.Tensor,
    alpha: float | None = None,
) -> Finding:
    """Flag when the attack that should be weaker breaks significantly more points.

    ``*_flags``: per-point robust flags of equal length (True = the attack failed there).
    ``check``: ``square-vs-whitebox`` (weak = Square, strong = the white-box attacks' worst
    case: a black-box attack must not beat gradient-based ones, AutoAttack ``check_square_sr``)
    or ``iterative-vs-single-step`` (weak = FGSM, strong = an iterative attack such as PGD:
    Carlini et al. 2019). Rule: with b = points broken by the weak attack only and c = by the
    strong one only, flagged iff b > c and the exact McNemar p-value of (b, c) is below
    ``alpha`` (default the check's level in :data:`bench.evaluation.stats.ALPHAS`, 0.001).
    AutoAttack's own rule is an accuracy gap above 0.2 points; the paired test is used
    instead so that one point out of 100 is not an alarm.
    """
    if check not in (Check.SQUARE_VS_WHITEBOX, Check.ITERATIVE_VS_SINGLE_STEP):
        raise ValueError(
            f"check must be 'square-vs-whitebox' or 'iterative-vs-single-step', got {check!r}"
        )
    alpha = stats.level(check) if alpha is None else alpha
    flagged, summary, details = paired(weak_name, weak_flags, strong_name, strong_flags, alpha)
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
    alpha: float | None = None,
    eps: float | None = None,
) -> Finding:
    """Adversarial examples crafted on another model must not beat the white-box attacks.

    ``x_adv_transfer``: examples for ``x`` crafted on a surrogate (e.g. a standard model of the
    same data set) within the same budget; ``whitebox_flags``: per-point robust flags of the
    white-box attacks' worst case on ``target_model`` (True = every white-box attack failed).
    A point is robust to transfer if the target classifies both x and its transfer example
    correctly. Rule (Carlini et al. 2019): as :func:`compare_attacks` with weak = transfer and
    strong = white-box -- flagged iff transfer breaks more points that white-box left standing
    than the reverse, with exact McNemar p < ``alpha`` (default the check's level, 0.001).
    IoAF's "transfer failure" indicator looks at the reverse direction (an example that fools
    the surrogate does not fool the target) and is not computed here. ``eps``: if given, the
    transfer examples are checked to lie within it (and in [0, 1]); a violation is a
    ValueError.
    """
    alpha = stats.level(Check.TRANSFER) if alpha is None else alpha
    device = model_device(target_model)
    x, x_adv = x.detach().to(device), x_adv_transfer.detach().to(device)
    _check_within(x, x_adv, eps)
    y = y.detach().to(device)
    with _eval_mode(target_model), torch.no_grad():
        transfer_flags = (target_model(x).argmax(1) == y) & (target_model(x_adv).argmax(1) == y)
    flagged, summary, details = paired(
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
    inferred_eps: float,
    measured_eps: float,
    direct: torch.Tensor,
    share: float = INFERENCE_SHARE,
    unchecked: int = 0,
) -> Finding:
    """The grid walks ``down`` and ``bisect`` count a point robust at a smaller eps because the
    attacks left it robust at a larger one; that inference holds only if attack success grows
    with the budget (Carlini et al. 2019). ``direct``: robust flags, after a direct attack at
    ``inferred_eps``, of points that every attack left robust at ``measured_eps`` (so counted
    robust at ``inferred_eps`` without being attacked there). Each point broken is a proof that
    its inferred flag is wrong (and that the attacks at ``measured_eps`` missed it: the balls
    are nested); the remedy (:mod:`bench.evaluation.remedies`) corrects them.

    Test: H0 "at most ``share`` (1%) of inferred flags are wrong" (a random start's bad luck at
    the larger eps), exact one-sided binomial test at ``stats.ALPHAS['walk-inference']``.
    Significant, the finding stays flagged only when ``unchecked`` points were inferred robust
    without being checked (their flags are still in doubt); otherwise the remedy's corrections
    stand in for the inference."""
    direct = _as_flags(direct, "direct")
    m, broken = len(direct), int((~direct).sum())
    alpha = stats.level(Check.WALK_INFERENCE)
    p = stats.binomial_p(broken, m, share)
    significant = p < alpha
    flagged = significant and unchecked > 0
    summary = (
        f"{broken} of {m} points counted robust at eps {inferred_eps:.4g} (inferred from eps "
        f"{measured_eps:.4g}) are broken by PGD run there directly; binomial p = {p:.3g} "
        f"against at most {_pct(share)} (significant if p < {alpha:g})"
        + (f"; {unchecked} inferred points unchecked" if unchecked else "")
    )
    details = {
        "inferred_eps": inferred_eps,
        "measured_eps": measured_eps,
        "checked": m,
        "broken": broken,
        "share_limit": share,
        "unchecked": unchecked,
        "significant": significant,
        **_test(
            "binomial",
            f"at most {_pct(share)} of inferred flags wrong",
            p,
            alpha,
            stats.min_count(m, share, alpha),
        ),
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


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The input gradient of the summed per-point ``loss`` ('ce' or 'margin'); zeros where the
    graph is cut, NaN and inf set to 0."""
    return _loss_and_grad(model, x, y, loss)[2]


def _pgd_broken(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    loss: str,
    norm: str = LINF,
) -> torch.Tensor:
    """PGD in ``norm`` from x itself (no random start), steepest-ascent steps; per point, True
    if some iterate (each inside the ball and [0, 1]) is misclassified."""
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    x_adv = x.clone()
    for _ in range(steps):
        _, pred, grad = _loss_and_grad(model, x_adv, y, loss)
        broken |= pred != y
        x_adv = pgd_step(x, x_adv, grad, alpha, eps, norm)
    with torch.no_grad():
        broken |= model(x_adv).argmax(1) != y
    return broken


def check_large_budget(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | None = None,
    steps: int = 50,
    alpha: float | None = None,
    max_acc: float = LARGE_BUDGET_ACC,
    max_points: int = COSTLY_MAX_POINTS,
    norm: str = LINF,
) -> Finding:
    """Under a huge budget, accuracy must fall to about zero.

    Attack: PGD in ``norm`` started at x (no random start, so that it measures what the
    gradients give), ``steps`` (50) steepest-ascent steps of ``alpha`` (2.5 * eps / steps),
    first on the cross-entropy, then on the margin (CW) loss for the points still standing; a
    point counts as broken if any iterate is misclassified. The default eps is the norm's
    :func:`bench.norms.reach` for these images (Linf 1, L2 sqrt(d), L1 d): every image in
    [0, 1] is reachable, so 0% is always attainable (Carlini et al. 2019: unbounded attacks
    must reach 100% success; IoAF: unconstrained attack failure). Test on the first
    ``max_points`` (100) points: H0 "at most ``max_acc`` (1%) of points survive" (a numerical
    tie), exact one-sided binomial test at ``stats.ALPHAS['large-budget']``. IoAF counts any
    surviving point.
    """
    eps = norms.reach(norm, tuple(x.shape[1:])) if eps is None else eps
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
                broken = _pgd_broken(model, x[idx], y[idx], eps, steps, alpha, loss, norm)
                standing[idx] &= ~broken
    acc, clean_acc = _share(standing), _share(clean)
    alpha = stats.level(Check.LARGE_BUDGET)
    p = stats.binomial_p(int(standing.sum()), n, max_acc)
    flagged = p < alpha
    summary = (
        f"accuracy {_pct(acc)} at {norm} eps {eps:g} ({steps}-step PGD on CE then margin loss, "
        f"{n} points, clean {_pct(clean_acc)}); should be about 0: binomial p = {p:.3g} "
        f"against at most {_pct(max_acc)} (flag if p < {alpha:g})"
    )
    details = {
        "n": n,
        "eps": eps,
        "norm": norm,
        "steps": steps,
        "alpha": alpha,
        "losses": ["ce", "margin"],
        "clean_acc": clean_acc,
        "acc": acc,
        "survivors": int(standing.sum()),
        "max_acc": max_acc,
        **_test(
            "binomial",
            f"at most {_pct(max_acc)} survive",
            p,
            alpha,
            stats.min_count(n, max_acc, alpha),
        ),
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
    norm: str = LINF,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD in ``norm`` on the cross-entropy (Madry et al. 2018) that records each point's loss.

    Returns ``(x_adv, losses)``: ``x_adv`` the last iterate (as torchattacks' PGD), on the
    model's device; ``losses[k, i]`` the CE of point i after step k + 1 (shape [steps, n], on
    the CPU). ``random_start``: in the eps-ball (uniform under Linf), drawn on the CPU with
    ``generator``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = model_device(model)
    x, y = x.detach().to(device), y.detach().to(device)
    x_adv = x.clone()
    if random_start and norm == LINF:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        x_adv = (x + eps * noise.to(device)).clamp(0, 1)
    elif random_start:
        g = generator or torch.Generator().manual_seed(0)
        noise = norms.random_in_balls(x, eps, norm, g)
        x_adv = (x + noise.to(device)).clamp(0, 1)
    trace: list[torch.Tensor] = []
    with _eval_mode(model):
        for k in range(steps):
            values, _, grad = _loss_and_grad(model, x_adv, y, "ce")
            if k > 0:
                trace.append(values.cpu())
            x_adv = pgd_step(x, x_adv, grad, alpha, eps, norm)
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
) -> Finding:
    """IoAF "incomplete optimization": the attack's loss is still improving at the end.

    ``losses`` [steps, n]: the loss the attack maximises, per iteration and point (e.g. from
    :func:`pgd_with_trace`). Per point: :func:`incomplete_points` (IoAF's rule: loss rescaled
    to [0, 1], running best, rise > 5% over the last 10 iterations). ``robust``: per-point
    flags (True = the attack failed); if given, only those points are assessed, since on a
    broken point a still-rising CE means nothing. The check never flags by itself: the points
    it finds incomplete are handed to the remedy (:func:`bench.evaluation.remedies.loss_trace`:
    APGD on them), whose breaks correct the number; ``details['incomplete_points']`` lists them.
    With 10 steps or fewer the window is the whole trace, so any progress counts: the check is
    meant for attacks of tens of steps or more.
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
    concerned = (inc & mask).nonzero().flatten()
    count = len(concerned)
    who = "points the attack failed on" if robust is not None else "points"
    summary = (
        f"{count} of {assessed} {who} still improving over the last "
        f"{min(window, losses.shape[0])} of {losses.shape[0]} steps (rise > {_pct(tol)} of the "
        f"loss range): handed to the remedy"
    )
    details = {
        "n": n,
        "assessed": assessed,
        "incomplete": count,
        "share_incomplete": count / assessed if assessed else 0.0,
        "incomplete_points": concerned.tolist(),
        "steps": int(losses.shape[0]),
        "window": window,
        "tol": tol,
        "non_finite_points": int((~finite).sum()),
    }
    return _finding(Check.LOSS_TRACE, False, summary, details, "None needed.")
