"""The cross-norm table: each model of a data set evaluated under several threat models, its
worst case under each at that section's ranking eps, side by side.

A model trained for one norm is known to be weak under another (Tramèr and Boneh 2019;
MultiRobustBench 2023); the per-norm leaderboards rank within a norm only, and this table shows
the same models across them. Nothing is ranked here, and no number is combined across norms:
each cell is one section's worst case, with its n and 95% interval, marked where that section
could not rank the model (no standard AutoAttack there, or a flag).
"""

from __future__ import annotations

from bench.defenses import DEFENSES
from bench.norms import LINF
from bench.params import format_eps
from bench.report.model import WORST, Model
from bench.report.text import DASH, ci, table

NORM = "norm"  # the defense parameter that names the threat model a defense trains for
#: What a cell says when its section could not rank the model.
NO_BASIS, FLAGGED = "no standard AutoAttack", "flagged"


def _trained_for(m: Model) -> str:
    """The threat model a model was trained for: its defense's ``norm`` (Linf for an
    adversarial defense trained before bench knew norms), a zoo entry's threat model, else
    "none" (a defense that trains for no threat model)."""
    config = m.run.config or {}
    params = config.get("defense_params") or m.run.defense_params or {}
    params = params if isinstance(params, dict) else {}
    takes = m.run.defense in DEFENSES.names() and NORM in DEFENSES[m.run.defense].defaults
    norm = params.get(NORM) or (LINF if takes else None)
    if norm and "eps" in params:
        return f"{norm} at {format_eps(float(params['eps']), norm)}"
    return str(norm or config.get("threat_model") or "none")


def _cell(m: Model | None, key: int) -> str:
    """One model's worst case at ``key``, with why it could not be ranked, if so."""
    if m is None:
        return DASH
    text = ci(m.at(WORST, key))
    why = [FLAGGED] if m.unreliable else []
    if m.basis_variant(key) is None:
        why.append(NO_BASIS)
    return text + (f" [{', '.join(why)}]" if why else "")


def _by_dataset(
    sets: dict[str, tuple[int, list[Model]]],
) -> dict[str, list[tuple[str, int, list[Model]]]]:
    """Data set -> its sections as (norm, ranking eps key, models), in the sets' order."""
    out: dict[str, list[tuple[str, int, list[Model]]]] = {}
    for key, models in sets.values():
        if models:
            out.setdefault(models[0].run.dataset, []).append((models[0].norm, key, models))
    return out


def table_lines(dataset: str, sections: list[tuple[str, int, list[Model]]]) -> list[str]:
    """The cross-norm table of one data set whose models were evaluated under several norms."""
    heads = [f"worst case, {norm} eps {format_eps(k / 1e9, norm)}" for norm, k, _ in sections]
    runs = sorted({m.run_id: m for _, _, ms in sections for m in ms}.items())
    rows = []
    for run_id, m in runs:
        per = [{x.run_id: x for x in ms}.get(run_id) for _, _, ms in sections]
        cells = [_cell(x, k) for x, (_, k, _) in zip(per, sections)]
        ns = sorted({x.n for x in per if x is not None})
        rows.append(
            [f"`{run_id}`", m.run.defense, _trained_for(m), ci(m.clean), *cells]
            + [", ".join(map(str, ns))]
        )
    head = ["run id", "defense", "trained for", "clean", *heads, "n"]
    return [
        f"## {dataset}: across threat models",
        "",
        "Each model's worst case (%, 95% interval) under every threat model it was evaluated "
        "in, at that section's ranking eps; nothing is ranked or combined across norms. A cell "
        f"says [{NO_BASIS}] or [{FLAGGED}] where its section could not rank the model.",
        "",
        *table(head, rows, right_from=3),
        "",
    ]


def section(sets: dict[str, tuple[int, list[Model]]]) -> list[str]:
    """The cross-norm tables of every data set evaluated under two norms or more ([] if none)."""
    out: list[str] = []
    for dataset, sections in _by_dataset(sets).items():
        if len({norm for norm, _, _ in sections}) > 1:
            out += table_lines(dataset, sections)
    return out
