"""Remedies: where a check finds that the attacks stopped short, a stronger attack on the points
concerned, whose breaks correct the number instead of only advising a rerun.

A point a remedy breaks is a proof (an adversarial example inside the budget), so it lowers the
worst case at that eps and at every larger one (the balls are nested), whatever its count. The
finding records those points (``details['corrections']``: eps as text -> point indices) and
whether they are significantly many (``details['overstated']``: McNemar's exact test of the
remedy's breaks against none the other way, at the check's level in
:data:`bench.evaluation.stats.ALPHAS`): then the row says by how much the attacks had overstated
robustness. The report and the terminal table apply the corrections
(:func:`bench.evaluation.results.corrected`).

* loss-trace (IoAF incomplete optimization; Pintor et al. 2022 advise more iterations or APGD):
  the check's own 100-step PGD breaks some points the attacks left (recorded), and APGD-CE then
  APGD-DLR (Croce & Hein 2020, 100 steps each) attack the points whose loss was still rising.
* walk-inference (Carlini et al. 2019): the points inferred robust, attacked directly at every
  eps they were inferred at.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from bench import norms
from bench.attacks import Attack, make_attack, pgd_step
from bench.evaluation import diagnostics as dg
from bench.evaluation import stats
from bench.evaluation.walk import attack_points, check_budget
from bench.io import model_device
from bench.norms import LINF
from bench.params import format_eps

#: The loss-trace remedy: APGD on the cross-entropy, then on the DLR loss (AutoAttack's pair).
LOSS_TRACE_ATTACKS = (("apgd", {"loss": "ce", "steps": "100"}), ("apgd", {"loss": "dlr"}))


def apgd_breaks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    eps: float,
    seed: int,
    norm: str = LINF,
) -> torch.Tensor:
    """Which of the points ``idx`` APGD-CE then APGD-DLR (on those CE left) break at ``eps``
    in ``norm``."""
    standing = torch.ones(len(idx), dtype=torch.bool)
    for name, params in LOSS_TRACE_ATTACKS:
        todo = idx[standing]
        if len(todo):
            standing[standing.clone()] &= attack_points(
                model, make_attack(name, params, norm), x, y, todo, eps, seed
            )
    return idx[~standing]


SMOOTH_STEPS = 20  # smoothed PGD: sign steps of 2.5 * eps / steps
SMOOTH_SAMPLES = 8  # noisy copies whose gradients are averaged at each step (always-on)
SMOOTH_SAMPLES_ESCALATED = 64  # where a probe found evidence: a gradient shattered with
# amplitude a*w (the planted x + 0.004 sin(2000 x): 8) needs about (a*w)^2 samples
SMOOTH_SIGMA = 0.5  # the noise's size in units of eps (per pixel: eps / norms.reach, see below)
SMOOTH_CHUNK = 8  # noisy copies per forward pass (one batch of 8 x the points)


def smoothed_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int,
    samples: int = SMOOTH_SAMPLES,
    norm: str = LINF,
) -> torch.Tensor:
    """Per point (on the CPU): still classified correctly after PGD in ``norm`` on the margin
    (CW) loss whose gradient is averaged over ``samples`` Gaussian copies of the input (std per
    pixel ``SMOOTH_SIGMA * eps`` under Linf; under L2 and L1 ``SMOOTH_SIGMA * eps`` divided by
    :func:`bench.norms.reach` (sqrt(d), d), so that the noise's size in the norm is about
    ``SMOOTH_SIGMA * eps``): Expectation over Transformation applied to input noise (Athalye et
    al. 2018), which averages out gradients shattered at a scale finer than the noise, as a
    high-frequency input transform or a masking ensemble member makes them. Every iterate is
    inside the eps-ball and [0, 1]; a point counts as broken if any iterate is misclassified."""
    device = model_device(model)
    x, y = x.detach().to(device), y.detach().to(device)
    g = torch.Generator().manual_seed(seed)
    broken = torch.zeros(len(x), dtype=torch.bool, device=device)
    x_adv, step = x.clone(), 2.5 * eps / SMOOTH_STEPS
    sigma = SMOOTH_SIGMA * eps / norms.reach(norm, tuple(x.shape[1:])) ** (norm != LINF)
    for _ in range(SMOOTH_STEPS):
        grad = torch.zeros_like(x)
        for lo in range(0, samples, SMOOTH_CHUNK):  # copies in batches of up to 8 (memory)
            k = min(SMOOTH_CHUNK, samples - lo)
            noise = torch.randn((k, *x.shape), generator=g, dtype=x.dtype).to(device)
            noisy = (x_adv[None] + sigma * noise).clamp(0, 1).flatten(0, 1)
            g_all = dg.input_gradient(model, noisy, y.repeat(k), "margin")
            grad += g_all.view(k, *x.shape).sum(dim=0)  # each copy's gradient is its own
        x_adv = pgd_step(x, x_adv, grad, step, eps, norm)
        check_budget(x, x_adv, eps, attack="smoothed-pgd", norm=norm)
        with torch.no_grad():
            broken |= model(x_adv).argmax(1) != y
    return (~broken).cpu()


def record(finding: dg.Finding, eps: float, broken: Sequence[int], standing: int) -> None:
    """Add points ``broken`` at ``eps`` to ``finding``'s corrections, with McNemar's test of
    them against the ``standing`` points the attacks had left among those tried."""
    fixes = finding.details.setdefault("corrections", {})
    key = format_eps(eps)
    fixes[key] = sorted(set(fixes.get(key, [])) | {int(i) for i in broken})
    k = len(fixes[key])
    alpha = stats.level(finding.check)
    p = stats.mcnemar(k, 0)
    over = finding.details.setdefault("overstated", {})
    over[key] = {
        "points": k,
        "of": standing,
        "p_value": p,
        "alpha": alpha,
        "significant": p < alpha,
    }


def loss_trace(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    finding: dg.Finding,
    eps: float,
    seed: int,
    norm: str = LINF,
) -> dg.Finding:
    """APGD-CE then APGD-DLR at ``eps`` in ``norm`` on the points the loss-trace check found
    still improving (``details['incomplete_points']``, indices into ``x``); their breaks
    recorded."""
    idx = torch.tensor(finding.details.get("incomplete_points", []), dtype=torch.long)
    broken = apgd_breaks(model, x, y, idx, eps, seed, norm).tolist()
    record(finding, eps, broken, int(finding.details["assessed"]))
    finding.details["remedy"] = "APGD-CE (100 steps) then APGD-DLR (100 steps) on these points"
    finding.summary += f"; APGD broke {len(broken)} of them at eps {eps:.4g}"
    return finding


def inference(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    finding: dg.Finding,
    plan: tuple[list[float], torch.Tensor],
    attack: Attack,
    seed: int,
) -> dg.Finding:
    """The walk-inference remedy: ``plan`` = (the eps the points were inferred robust at, the
    points' indices); the points broken by the check itself are recorded, then each other
    inferred eps is attacked directly on those points."""
    eps_list, idx = plan
    checked = finding.details["inferred_eps"]
    for eps in eps_list:
        if eps == checked:
            broken = finding.details.get("broken_points", [])
        else:
            ok = attack_points(model, attack, x, y, idx, eps, seed)
            broken = idx[~ok].tolist()
        record(finding, eps, broken, len(idx))
    finding.details["remedy"] = f"{attack.display} run directly at every inferred eps"
    return finding


def summary_line(finding: dg.Finding) -> str:
    """How many points the finding's corrections broke, eps by eps, in one line."""
    over: dict[str, Any] = finding.details.get("overstated", {})
    parts = [
        f"eps {e}: {v['points']} of {v['of']} broken"
        + (" (significant)" if v["significant"] else "")
        for e, v in over.items()
        if v["points"]
    ]
    return "; ".join(parts) or "nothing broken"
