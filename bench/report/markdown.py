"""``leaderboard.md``: settings, per section (data set and threat model) a ranked table at the
ranking eps, the worst case at every eps, the flags with their legend, and every model's full
curves with intervals. Eps are written as their norm writes them (``8/255`` under Linf, ``0.5``
under L2 and L1), and text outside Linf names the norm (``at L2 eps = 0.5``)."""

from __future__ import annotations

import json
from typing import Iterable

from bench.evaluation.results import Estimate, WorstPoint, estimate
from bench.norms import L1, L2, LINF
from bench.params import format_eps, plural
from bench.report import crossnorm, heatmap, robustbench
from bench.report.model import (
    AUTOATTACK,
    WORST,
    Entry,
    Model,
    Ranked,
    Variant,
    entries,
    norm_of,
    norm_order,
    rank,
)
from bench.report.text import (
    DASH,
    aa_attack_list,
    ci,
    ci_many,
    eps_label,
    format_seconds,
    joined,
    table,
    variant_labels,
)
from bench.store import ANY, eps_key
from bench.vocab import Check, SourceKind

#: What each flag means and what to run next (shown under each table that carries a flag).
FLAG_LEGEND: dict[str, tuple[str, str]] = {
    Check.RANDOMIZED: (
        "repeated forward passes on the same input disagree (AutoAttack checks.py)",
        "evaluate with `--aa-version rand` and `eotpgd`; bench does so by itself",
    ),
    Check.PROBABILITIES: (
        "the model outputs probabilities, not logits (AutoAttack checks.py)",
        "return logits; attacks on the CE of probabilities are weakened",
    ),
    Check.GRADIENTS: (
        "zero, NaN or infinite input gradients on some points (AutoAttack checks.py; "
        "Pintor et al. 2022, unavailable gradients)",
        "use an adaptive attack (BPDA, a differentiable surrogate), or `square`",
    ),
    Check.SQUARE_VS_WHITEBOX: (
        "the black-box Square attack broke significantly more points than "
        "the white-box attacks (AutoAttack checks.py; McNemar's exact test at level 0.001)",
        "gradient masking likely: run an adaptive attack",
    ),
    Check.ITERATIVE_VS_SINGLE_STEP: (
        "an iterative attack did significantly worse than FGSM "
        "(Carlini et al. 2019; McNemar's exact test at level 0.001)",
        "gradient masking or a broken attack: rerun with `bench eval --diagnose`",
    ),
    Check.LARGE_BUDGET: (
        "accuracy does not fall to about zero under a very large budget "
        "(Carlini et al. 2019; Pintor et al. 2022, unconstrained attack failure)",
        "the attacks are failing, not the model succeeding: adaptive attack",
    ),
    Check.LOSS_TRACE: (
        "the attack loss was still improving at its last steps (Pintor et al. "
        "2022, incomplete optimization); bench's APGD remedy corrects the number instead",
        "rerun with more steps, e.g. `--set pgd.steps=100`",
    ),
    Check.BLACK_BOX_PROBE: (
        "the always-on Square probe (300 queries) broke significantly more points than every "
        "white-box attack (AutoAttack checks.py; McNemar's exact test at level 0.002): the "
        "gradients mislead",
        "run an adaptive attack (BPDA, EOT, a surrogate's gradients) and full Square",
    ),
    Check.TRANSFER: (
        "examples crafted on another model break points the white-box attacks left "
        "standing significantly (Carlini et al. 2019; McNemar's exact test at level 0.001)",
        "the white-box attacks fail on this model: adaptive attack",
    ),
    Check.WALK_INFERENCE: (
        "points counted robust at a smaller eps because the attacks left them robust at the "
        "largest one are broken by PGD run there directly, significantly more than 1% of them, "
        "and some inferred points were not checked (Carlini et al. 2019); checked ones are "
        "corrected",
        "rerun with `bench eval --walk up` (every eps measured) and adaptive attacks",
    ),
    Check.AUTOATTACK_CHECKS: (
        "a warning of AutoAttack's own checks.py during the evaluation",
        "read AutoAttack's flags_doc.md for the message",
    ),
    "catastrophic-overfitting": (
        "single-step adversarial training collapsed: held-out PGD "
        "accuracy fell while FGSM accuracy held (Wong et al. 2020)",
        "retrain with FGSM-RS at a smaller step, or PGD-AT",
    ),
}


OVERLAP, FLAGS = "intervals overlap with rank", "flags"
#: The ranked table's text columns after its numbers (left-aligned; the rest right-aligned).
TEXT = (OVERLAP, FLAGS)


def header(sets: dict[str, tuple[int, list[Model]]], rank_by: str) -> list[str]:
    """The settings recorded in the rows, as a bullet list."""
    models = [m for _, ms in sets.values() for m in ms]
    rows = [r for m in models for c in m.curves.values() for r in c.values()]
    variants = {v for m in models for v in m.curves}
    labels = variant_labels(variants)
    versions: dict[str, set[str]] = {}
    for r in rows:
        for lib, ver in r.versions.items():
            versions.setdefault(lib, set()).add(str(ver))
    lines = [
        "# Robustness leaderboard",
        "",
        "Settings, as recorded in the results store:",
        "",
        f"- Models: {len({m.run_id for m in models})} ("
        + ", ".join(f"{k}: {len(v[1])}" for k, v in sets.items())
        + ")",
        _threat_line(models),
        "- Ranking eps: "
        + ", ".join(
            f"{k} {format_eps(v[0] / 1e9, norm_of(v[1]))}"
            for k, v in sets.items()
            if v[0] is not None
        ),
        f"- Ranking basis: {_basis_text(rank_by)}",
        _grid_line(rows),
        f"- Test points n: {joined(m.n for m in models)} (the first n points of each test split; "
        "every number of a row comes from the same n points)",
        f"- Training epochs: {joined(m.run.epochs for m in models)}",
        _train_images_line(models),
        f"- Attack seeds: {joined(r.seed for r in rows)}; "
        f"batch sizes: {joined(r.batch_size for r in rows)} "
        "(batch k at eps e seeded from (seed, e, k))",
        "- Intervals: 95% Wilson score intervals, in %; seeds of one configuration: mean ± std "
        "[hull of their intervals]",
    ]
    lines += _aa_lines(rows)
    plain = sorted((v for v in variants if v.attack != ANY), key=lambda v: v.sort_key)
    lines.append("- Attack parameters: " + "; ".join(f"{labels[v]} `{v.params}`" for v in plain))
    lines.append(f"- Device: {joined(r.device for r in rows)}")
    lines.append(
        "- Library versions: "
        + (
            ", ".join(f"{lib} {' / '.join(sorted(vs))}" for lib, vs in sorted(versions.items()))
            or DASH
        )
    )
    return lines


def _train_images_line(models: list[Model]) -> str:
    """The training-set sizes the runs record (a model trained on 500 images is no full one)."""
    known = joined(m.train_images for m in models)
    if known == DASH:
        return "- Training images: not recorded (zoo, factory and Python API models record none)"
    return f"- Training images: {known} (per row in the tables; {DASH}: not recorded)"


#: How the settings name each threat model.
NORM_NAMES = {LINF: "L-infinity", L2: "L2", L1: "L1"}


def _norms(items: Iterable[str]) -> list[str]:
    """Distinct norms, Linf, L2, L1 first."""
    return sorted(set(items), key=norm_order)


def _threat_line(models: list[Model]) -> str:
    """The threat model (or models: then how their sections are named)."""
    norms = _norms(m.norm for m in models) or [LINF]
    if len(norms) == 1:
        name = NORM_NAMES.get(norms[0], norms[0])
        return f"- Threat model: {name}, eps on the pixel scale of images in [0, 1]"
    return (
        "- Threat models: "
        + ", ".join(NORM_NAMES.get(n, n) for n in norms)
        + ", eps on the pixel scale of images in [0, 1]; one section per data set and threat "
        "model, Linf named by its data set, the others `<data set> <norm>`; the numbers of "
        "different threat models are never compared"
    )


def _grid_line(rows: list) -> str:
    """The eps evaluated, per norm when there are several."""
    norms = _norms(r.norm for r in rows)

    def grid(norm: str) -> str:
        values = sorted({r.eps for r in rows if r.norm == norm})
        return ", ".join(format_eps(e, norm) for e in values)

    if len(norms) <= 1:
        return "- Eps grid: " + grid(norms[0] if norms else LINF)
    return "- Eps grid: " + "; ".join(f"{n} {grid(n)}" for n in norms)


def _aa_lines(rows: list) -> list[str]:
    aa = sorted({json.dumps(r.params, sort_keys=True) for r in rows if r.attack == AUTOATTACK})
    if not aa:
        return ["- AutoAttack: not run"]
    return [
        f"- AutoAttack version {json.loads(t).get('version', DASH)}: "
        f"{', '.join(aa_attack_list(json.loads(t))) or DASH} (params `{t}`)"
        for t in aa
    ]


def _basis_text(rank_by: str) -> str:
    if rank_by in ("worst-case", ANY):
        return (
            "worst case at the ranking eps, over every attack run there, counted only when "
            "standard AutoAttack is among them (AutoAttack rand for a randomized model)"
        )
    if rank_by == AUTOATTACK:
        return "standard AutoAttack at the ranking eps (rand for a randomized model)"
    return f"{rank_by} at the ranking eps" if rank_by != "clean" else "clean accuracy"


def _gap(e: Entry, key: int) -> str:
    """FGSM accuracy minus worst-case accuracy (points): how much a weak attack overstates."""
    fgsm = [v for v in e.first.curves if v.attack == "fgsm"]
    if not fgsm:
        return DASH
    a, w = e.values(fgsm[0], key), e.values(WORST, key)
    if a is None or w is None:
        return DASH
    return f"{100 * (sum(x.acc for x in a) - sum(x.acc for x in w)) / len(a):.1f}"


def rank_cell(r: Ranked) -> str:
    """``1``, or ``not ranked: <why>`` (no ranking basis, or unreliable: flagged)."""
    return str(r.place) if r.place is not None else f"not ranked: {r.reason or 'no basis'}"


def overlap_cell(r: Ranked) -> str:
    """The ranks whose intervals overlap this one's, ``none``, or ``n/a (not ranked)``."""
    if r.place is None:
        return "n/a (not ranked)"
    return ", ".join(map(str, r.overlaps)) or "none"


def _worst_cell(e: Entry, key: int) -> str:
    """The worst case with its interval, the attacks missing there, and any correction."""
    missing = sorted(
        {a for m in e.models for a in (m.worst.get(key).missing if m.worst.get(key) else [])}
    )
    worst = ci_many(e.values(WORST, key)) + (" ⚠ missing: " + ", ".join(missing) if missing else "")
    return worst + _corrected_note([m.worst.get(key) for m in e.models])


def _training_cells(m: Model) -> list[str]:
    """n evaluated, training images, epochs and training time (– where unknown)."""
    return [
        str(m.n),
        DASH if m.train_images is None else str(m.train_images),
        DASH if m.run.epochs is None else str(m.run.epochs),
        format_seconds(m.run.train_seconds),
    ]


def _row(r: Ranked, columns: list[Variant], key: int) -> list[str]:
    e, m = r.entry, r.entry.first
    names = ", ".join(f"`{x.run_id}`" for x in e.models)
    return (
        [rank_cell(r), m.run.defense, m.run.model, names, ci_many(e.clean())]
        + [ci_many(e.values(v, key)) for v in columns]
        + [_worst_cell(e, key), _gap(e, key), overlap_cell(r), ", ".join(e.flags) or "none"]
        + _training_cells(m)
    )


def fallback_note(key: int, rank_eps: float | None) -> str:
    """Why a section is not ranked at ``--rank-eps``: it has no row at that eps."""
    if rank_eps is None or key == eps_key(rank_eps):
        return ""
    return (
        f" `--rank-eps {format_eps(rank_eps) if rank_eps <= 1 else f'{rank_eps:g}'}` "
        "was not evaluated in this section: "
        "it is ranked at its default eps."
    )


def dataset_section(
    name: str,
    key: int,
    models: list[Model],
    rank_by: str,
    matrices: Iterable[heatmap.Matrix] = (),
    rank_eps: float | None = None,
) -> list[str]:
    """The ranked table of one section, its notes and legend, the transfer matrices."""
    norm = norm_of(models)
    eps = format_eps(key / 1e9, norm)
    variants = {v for m in models for v in m.curves}
    labels = variant_labels(variants)
    columns = sorted(
        (v for v in variants if any(key in m.curves.get(v, {}) for m in models)),
        key=lambda v: v.sort_key,
    )
    head = (
        ["rank", "defense", "model", "run id", "clean"]
        + [labels[v] for v in columns]
        + [
            "worst case",
            "attack gap (FGSM − worst)",
            OVERLAP,
            FLAGS,
            "n",
            "training images",
            "epochs",
            "training time",
        ]
    )
    ranked = rank(entries(models), key, rank_by)
    lines = [
        f"## {name}",
        "",
        f"Accuracy in % (95% interval) at {eps_label(norm)} = {eps}; ranked by "
        f"{_basis_text(rank_by)}.{fallback_note(key, rank_eps)}",
        "",
    ]
    lines += table(head, [_row(r, columns, key) for r in ranked], right_from=4, text=TEXT)
    lines += [
        "",
        "Rows whose intervals overlap are not separated: their order may be chance. "
        "The attack gap is FGSM accuracy minus worst-case accuracy, in points. A row that is "
        "not ranked says why in its rank cell; flags name the checks that flagged the "
        "evaluation (none: no check did). Training images: as the run's config records them.",
    ]
    lines += _legend({f for r in ranked for f in r.entry.flags})
    for mx in matrices:
        lines += [
            "",
            "Transfer matrix (`bench eval --transfer-matrix`), accuracy in % (95% interval):",
            "",
        ]
        lines += heatmap.markdown(mx)
    lines += published_section(models, key)
    lines += [""] + worst_by_eps(models)
    return lines + [""]


def published_section(models: list[Model], key: int) -> list[str]:
    """RobustBench zoo models: their published clean and AutoAttack accuracy beside ours (at
    the published eps), and a note for those evaluated without ``--model-info``."""
    zoo = [m for m in models if m.run.kind == SourceKind.ROBUSTBENCH]
    if not zoo:
        return []
    head = [
        "run id",
        "eps",
        "clean (ours)",
        "clean (published)",
        "AutoAttack (ours)",
        "AutoAttack (published)",
        "n (ours)",
    ]
    body, notes = [], []
    for m in zoo:
        pub = robustbench.published(m)
        if pub is None:
            notes.append(
                f"- `{m.run_id}`: no published numbers "
                f"({robustbench.published_note(m) or 'none recorded'})."
            )
            continue
        k = robustbench.published_key(m, key)
        basis = m.basis_variant(k)
        body.append(
            [
                f"`{m.run_id}`",
                format_eps(k / 1e9, m.norm),
                ci(m.clean),
                _num(pub.get("clean_acc")),
                ci(m.at(basis, k)) if basis is not None else DASH,
                _num(pub.get("autoattack_acc")),
                str(m.n),
            ]
        )
    lines = [
        "",
        "RobustBench models, published clean / AutoAttack accuracy (%) beside ours (their "
        "model-info files; published numbers are on the full test set):",
        "",
    ]
    if body:
        lines += table(head, body, right_from=1)
    return lines + ([""] + notes if body and notes else notes)


def _num(value: object) -> str:
    """A published accuracy (a number, or RobustBench's string) with two decimals."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}"
    return DASH if value is None else str(value)


def _legend(flags: Iterable[str]) -> list[str]:
    flags = sorted(flags)
    if not flags:
        return []
    out = ["", "Flags (a flagged evaluation is marked unreliable and not ranked):", ""]
    for f in flags:
        meaning, todo = FLAG_LEGEND.get(
            f, ("a check flagged the evaluation", "see docs/diagnostics.md")
        )
        out.append(f"- **{f}**: {meaning}. Next: {todo}.")
    return out


def _corrected_note(points: Iterable[WorstPoint | None]) -> str:
    """`` (corrected: -2.0 pts by black-box-probe)`` where remedies or probes lowered the worst
    case (the attacks named had overstated it by that much), else ""."""
    done = [w for w in points if w is not None and w.overstated]
    if not done:
        return ""
    drop = max(100 * w.overstated / len(w.flags) for w in done)
    by = sorted({c for w in done for c in w.corrected_by})
    return f" (corrected: −{drop:.1f} pts by {', '.join(by)})"


def worst_by_eps(models: list[Model]) -> list[str]:
    """The worst case of every model at every eps of the section's grid."""
    norm = norm_of(models)
    keys = sorted({k for m in models for k in m.worst})
    head = ["run id", "n"] + [format_eps(k / 1e9, norm) for k in keys]
    body = [[f"`{m.run_id}`", str(m.n)] + [ci(m.at(WORST, k)) for k in keys] for m in models]
    return [f"Worst case (%, 95% interval) at every {eps_label(norm)} evaluated:", ""] + table(
        head, body, right_from=1
    )


def curves_section(sets: dict[str, tuple[int, list[Model]]]) -> list[str]:
    """Per model, accuracy with its interval at every eps, one row per attack."""
    lines = ["## Full curves", "", "Accuracy in % (95% interval) at every eps evaluated.", ""]
    for name, (_, models) in sets.items():
        labels = variant_labels({v for m in models for v in m.curves})
        for m in models:
            lines += _curve_table(name, m, labels)
    return lines


def _trained_on(m: Model) -> str:
    """``trained on 500 images, `` where the run records it, else ""."""
    return "" if m.train_images is None else f"trained on {plural(m.train_images, 'image')}, "


def _curve_table(name: str, m: Model, labels: dict[Variant, str]) -> list[str]:
    keys = m.eps_keys
    body = [
        [labels[v]] + [ci(m.at(v, k)) if k in m.curves[v] else DASH for k in keys]
        for v in sorted(m.curves, key=lambda v: v.sort_key)
    ]
    body.append(["worst case"] + [ci(m.at(WORST, k)) for k in keys])
    fp = m.run.fingerprint.removeprefix("sha256:")[:12]
    other = f"; also evaluated at n = {', '.join(map(str, m.other_ns))}" if m.other_ns else ""
    lines = [
        f"### {name} / {m.run.defense} / `{m.run_id}`",
        "",
        f"Model {m.run.model}, weights `{fp}`, {_trained_on(m)}clean accuracy {ci(m.clean)}, "
        f"n = {m.n}{other}.",
        "",
    ]
    lines += table(["attack"] + [format_eps(k / 1e9, m.norm) for k in keys], body, right_from=1)
    for k in keys:
        w = m.worst[k]
        if w.overstated:
            lines += [
                "",
                f"- corrected at {eps_label(m.norm)} {format_eps(w.eps, m.norm)}: the attacks "
                "above counted "
                f"{plural(w.overstated, 'point')} robust that {', '.join(w.corrected_by)} broke; "
                "worst case "
                f"{ci(estimate(w.before))} -> {ci(w.estimate)}",
            ]
    for f in m.findings:
        if f.flagged:
            lines += ["", f"- flag **{f.check}**: {f.summary}"]
    return lines + [""]


def render(
    sets: dict[str, tuple[int, list[Model]]],
    rank_by: str = "worst-case",
    matrices: dict[str, list[heatmap.Matrix]] | None = None,
    rank_eps: float | None = None,
) -> str:
    """The whole ``leaderboard.md``; ``rank_eps``: the eps ``--rank-eps`` asked for, if any."""
    lines = header(sets, rank_by) + [""]
    for name, (key, models) in sets.items():
        mxs = (matrices or {}).get(name, [])
        lines += dataset_section(name, key, models, rank_by, mxs, rank_eps)
    lines += crossnorm.section(sets)
    lines += curves_section(sets)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


__all__ = ["FLAG_LEGEND", "Estimate", "render"]
