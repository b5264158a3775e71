"""``bench report``: leaderboard, curves, plots and RobustBench-style JSON from the results store.

A pure function of the store: it reads result and run rows only (never checkpoints), and the same
store gives byte-identical ``leaderboard.md`` and JSON files (no clock, no absolute paths).

Rows are grouped per checkpoint into *variants*: an attack name with its parameters (``any`` is one
variant whatever its parameters say it covers). A checkpoint evaluated on several ``n`` uses, per
variant, the rows of its largest ``n``. Variants of one attack name that differ in parameters get
labels that show the differing parameters; numbers of different variants are never merged.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.errors import UsageError
from bench.params import eps_in_255, format_eps
from bench.store import ANY, ResultRow, RunRow, Store, canonical, eps_key

AUTOATTACK = "autoattack"
LEADERBOARD = "leaderboard.md"
DASH = "–"

# Display names of attacks; others are shown as stored.
DISPLAY = {
    "fgsm": "FGSM",
    "pgd": "PGD",
    "pgdl2": "PGD-L2",
    "apgd": "APGD",
    "apgdt": "APGD-T",
    "cw": "CW",
    "fab": "FAB",
    "square": "Square",
    "mifgsm": "MI-FGSM",
    "bim": "BIM",
    "ffgsm": "FFGSM",
    "tpgd": "TPGD",
    "eotpgd": "EOT-PGD",
    "deepfool": "DeepFool",
    ANY: "worst case (any)",
}

# The attacks each AutoAttack version runs (autoattack.AutoAttack), when the row doesn't say.
AA_ATTACKS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
}


@dataclass(frozen=True, order=True)
class Variant:
    """An attack with its parameters (canonical JSON); ``any`` has params ``""``."""

    attack: str
    params: str

    @property
    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.params) if self.params else {}

    @property
    def sort_key(self) -> tuple[int, str, str]:
        """Plain attacks by name, then AutoAttack, then the worst case."""
        group = 2 if self.attack == ANY else 1 if self.attack == AUTOATTACK else 0
        return (group, self.attack, self.params)


def variant_of(row: ResultRow) -> Variant:
    """The variant a result row belongs to."""
    return Variant(row.attack, "" if row.attack == ANY else canonical(row.params))


@dataclass
class Checkpoint:
    """One checkpoint: its run row and, per variant, the rows of its largest n keyed by eps_key."""

    run: RunRow
    curves: dict[Variant, dict[int, ResultRow]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def rows(self) -> list[ResultRow]:
        """The chosen rows, by variant then eps."""
        out = []
        for v in sorted(self.curves, key=lambda v: v.sort_key):
            curve = self.curves[v]
            out += [curve[k] for k in sorted(curve)]
        return out

    @property
    def ns(self) -> list[int]:
        return sorted({r.n for r in self.rows()})

    @property
    def clean_acc(self) -> float:
        """Clean accuracy of the row with the most points (the first such row, in order)."""
        rows = self.rows()
        best = max(r.n for r in rows)
        return next(r.clean_acc for r in rows if r.n == best)

    @property
    def max_eps_key(self) -> int:
        return max(k for c in self.curves.values() for k in c)

    def at(self, variant: Variant, key: int) -> ResultRow | None:
        return self.curves.get(variant, {}).get(key)

    def autoattack_at(self, key: int) -> ResultRow | None:
        """The AutoAttack row at ``key``: version standard if present, else the lowest accuracy."""
        rows = [c[key] for v, c in sorted(self.curves.items()) if v.attack == AUTOATTACK and key in c]
        if not rows:
            return None
        standard = [r for r in rows if r.params.get("version") == "standard"]
        return standard[0] if standard else min(rows, key=lambda r: r.robust_acc)

    def any_at(self, key: int) -> ResultRow | None:
        return self.at(Variant(ANY, ""), key)


# -- loading ---------------------------------------------------------------------------------

def load(store: Store) -> list[Checkpoint]:
    """The checkpoints that have result rows, by run id (a row without a run row gets a stub)."""
    runs = {r.run_id: r for r in store.runs()}
    grouped: dict[str, dict[Variant, dict[int, dict[int, ResultRow]]]] = {}
    for row in store.results():
        by_n = grouped.setdefault(row.run_id, {}).setdefault(variant_of(row), {})
        by_n.setdefault(row.n, {})[eps_key(row.eps)] = row
    out = []
    for run_id in sorted(grouped):
        run = runs.get(run_id) or RunRow(run_id, "", "unknown", "unknown", "unknown", {}, None, None, None)
        ck = Checkpoint(run)
        for variant, by_n in grouped[run_id].items():
            ck.curves[variant] = by_n[max(by_n)]
        out.append(ck)
    return out


def by_dataset(checkpoints: Iterable[Checkpoint]) -> dict[str, list[Checkpoint]]:
    """Checkpoints grouped by data set, data sets sorted by name."""
    out: dict[str, list[Checkpoint]] = {}
    for ck in checkpoints:
        out.setdefault(ck.run.dataset, []).append(ck)
    return dict(sorted(out.items()))


# -- formatting ------------------------------------------------------------------------------

def pct(acc: float | None) -> str:
    """A fraction as a percentage with 2 decimals, ``–`` if missing."""
    return DASH if acc is None else f"{100 * acc:.2f}"


def format_value(value: Any) -> str:
    """A parameter value for a label: floats on the 1/255 grid as ``k/255``."""
    if isinstance(value, float):
        return format_eps(value) if 0 < value <= 1 and abs(value * 255 - round(value * 255)) < 1e-6 \
            else f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return "+".join(str(v) for v in value) or "[]"
    if isinstance(value, (dict, list)):
        return canonical(value)
    return str(value)


def format_seconds(seconds: float | None) -> str:
    """Training time: ``45.2 s``, ``12 min 05 s`` or ``3 h 07 min``."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def slug(text: str) -> str:
    """A file-name part: lower case, runs of other characters as ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def safe_name(text: str) -> str:
    """A run id as a file name (it normally is one already)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".") or "_"


def cell(text: str) -> str:
    """Markdown table cell text."""
    return text.replace("|", "\\|").replace("\n", " ")


def base_label(variant: Variant) -> str:
    """``FGSM``, ``AutoAttack (standard)``, ``worst case (any)``."""
    if variant.attack == AUTOATTACK:
        version = variant.params_dict.get("version")
        return f"AutoAttack ({version})" if version else "AutoAttack"
    return DISPLAY.get(variant.attack, variant.attack)


def variant_labels(variants: Iterable[Variant], display: bool = True) -> dict[Variant, str]:
    """Unique labels; variants of one attack name that differ in parameters show the difference."""
    vs = sorted(set(variants), key=lambda v: v.sort_key)
    groups: dict[str, list[Variant]] = {}
    for v in vs:
        groups.setdefault(v.attack, []).append(v)
    out: dict[Variant, str] = {}
    for name, members in groups.items():
        for v in members:
            base = base_label(v) if display else name
            if len(members) == 1:
                out[v] = base
                continue
            dicts = [m.params_dict for m in members]
            keys = sorted({k for d in dicts for k in d})
            differ = [k for k in keys if len({canonical(d.get(k)) for d in dicts}) > 1]
            if display and name == AUTOATTACK:
                differ = [k for k in differ if k != "version"]
            p = v.params_dict
            shown = [f"{k}={format_value(p[k])}" for k in differ if k in p]
            out[v] = f"{base} [{', '.join(shown)}]" if shown else base
    seen: dict[str, int] = {}
    for lab in out.values():
        seen[lab] = seen.get(lab, 0) + 1
    for v, lab in out.items():  # never let two variants share a label
        if seen[lab] > 1:
            out[v] = f"{lab} {v.params}"
    return out


def joined(values: Iterable[Any]) -> str:
    """Distinct values, sorted, comma-separated (``–`` if none)."""
    vals = {v for v in values if v is not None}
    ordered = sorted(vals, key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
    return ", ".join(str(v) for v in ordered) if ordered else DASH


def aa_attack_list(params: dict[str, Any]) -> list[str]:
    """The attacks an AutoAttack row ran: from its params if recorded, else the version's list."""
    for key in ("attacks_to_run", "attacks"):
        if params.get(key):
            return [str(a) for a in params[key]]
    return AA_ATTACKS.get(str(params.get("version", "standard")), [])


# -- markdown --------------------------------------------------------------------------------

def header(checkpoints: list[Checkpoint]) -> list[str]:
    """The settings recorded in the rows, as a bullet list."""
    rows = [r for ck in checkpoints for r in ck.rows()]
    sets = by_dataset(checkpoints)
    eps_values = sorted({eps_key(r.eps): r.eps for r in rows}.items())
    variants = {v for ck in checkpoints for v in ck.curves}
    labels = variant_labels(variants)
    aa = sorted({canonical(r.params) for r in rows if r.attack == AUTOATTACK})
    versions: dict[str, set[str]] = {}
    for r in rows:
        for lib, ver in r.versions.items():
            versions.setdefault(lib, set()).add(str(ver))
    lines = [
        "# Robustness leaderboard",
        "",
        "Settings, as recorded in the results store:",
        "",
        f"- Checkpoints: {len(checkpoints)} ("
        + ", ".join(f"{name}: {len(cks)}" for name, cks in sets.items()) + ")",
        "- Threat model: L-infinity, eps on the pixel scale of images in [0, 1]",
        f"- Eps grid: {', '.join(format_eps(e) for _, e in eps_values)}",
        f"- Test points n: {joined(r.n for r in rows)} (the first n points of each test split)",
        f"- Training epochs: {joined(ck.run.epochs for ck in checkpoints)}",
        f"- Attacks: {', '.join(labels[v] for v in sorted(variants, key=lambda v: v.sort_key))}",
    ]
    if aa:
        for text in aa:
            p = json.loads(text)
            lines.append(
                f"- AutoAttack version {p.get('version', DASH)}: "
                f"{', '.join(aa_attack_list(p)) or DASH} (params `{text}`)"
            )
    else:
        lines.append("- AutoAttack: not run")
    plain = sorted((v for v in variants if v.attack != ANY), key=lambda v: v.sort_key)
    lines.append("- Attack parameters: " + "; ".join(f"{labels[v]} `{v.params}`" for v in plain))
    lines.append(f"- Device: {joined(r.device for r in rows)}")
    lines.append(
        "- Library versions: "
        + (", ".join(f"{lib} {' / '.join(sorted(vs))}" for lib, vs in sorted(versions.items())) or DASH)
    )
    return lines


def rank(cks: list[Checkpoint], key: int) -> list[tuple[Checkpoint, str]]:
    """Checkpoints ranked by AutoAttack at ``key`` (else the worst case), with a basis marker:
    ``""`` AutoAttack, ``"any"`` worst case, ``"none"`` neither row present."""
    scored = []
    for ck in cks:
        aa, worst = ck.autoattack_at(key), ck.any_at(key)
        if aa is not None:
            scored.append((0, -aa.robust_acc, ck.run_id, ck, ""))
        elif worst is not None:
            scored.append((0, -worst.robust_acc, ck.run_id, ck, "any"))
        else:
            scored.append((1, 0.0, ck.run_id, ck, "none"))
    scored.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(t[3], t[4]) for t in scored]


def table(head: list[str], body: list[list[str]], right_from: int = 0) -> list[str]:
    """A markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---:" if i >= right_from else "---" for i in range(len(head))]
    return [
        "| " + " | ".join(cell(h) for h in head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in body),
    ]


def dataset_section(name: str, cks: list[Checkpoint]) -> list[str]:
    """The ranked table of one data set and its note."""
    key = max(ck.max_eps_key for ck in cks)
    eps = key / 1e9
    variants = {v for ck in cks for v in ck.curves}
    labels = variant_labels(variants)
    columns = sorted((v for v in variants if v.attack != ANY), key=lambda v: v.sort_key)
    head = ["rank", "defense", "model", "run id", "clean"] + [labels[v] for v in columns] + [
        "worst case (any)", "epochs", "training time", "n"]
    body = []
    place = 0
    marks = set()
    for ck, basis in rank(cks, key):
        if basis == "none":
            r = DASH
        else:
            place += 1
            r = f"{place}" + ("†" if basis == "any" else "")
        marks.add(basis)
        accs = [ck.at(v, key) for v in columns]
        worst = ck.any_at(key)
        body.append(
            [r, ck.run.defense, ck.run.model, f"`{ck.run_id}`", pct(ck.clean_acc)]
            + [pct(a.robust_acc if a else None) for a in accs]
            + [pct(worst.robust_acc if worst else None),
               DASH if ck.run.epochs is None else str(ck.run.epochs),
               format_seconds(ck.run.train_seconds), ", ".join(map(str, ck.ns))]
        )
    lines = [f"## {name}", "", f"Accuracy (%) at eps = {format_eps(eps)}, ranked by AutoAttack "
             "robust accuracy at that eps.", ""]
    lines += table(head, body, right_from=4)
    lines += [
        "",
        f"Robust accuracy is measured on the first n test points (column n) at eps = "
        f"{format_eps(eps)} (L-infinity, pixel scale); clean accuracy on the same points. "
        "\"any\" is the per-point worst case over all attacks run on the checkpoint at that eps: "
        "a point counts as robust only if every attack failed on it.",
    ]
    if "any" in marks:
        lines += ["", "† no AutoAttack row at this eps: ranked by the worst case (any) instead."]
    if "none" in marks:
        lines += ["", f"{DASH} neither AutoAttack nor worst-case rows at this eps: not ranked."]
    return lines + [""]


def curves_section(checkpoints: list[Checkpoint]) -> list[str]:
    """Per checkpoint, accuracy at every eps, one row per variant."""
    lines = ["## Full curves", "", "Accuracy (%) at every eps evaluated; one row per attack.", ""]
    for name, cks in by_dataset(checkpoints).items():
        labels = variant_labels({v for ck in cks for v in ck.curves})
        for ck in cks:
            keys = sorted({k for c in ck.curves.values() for k in c})
            head = ["attack"] + [format_eps(k / 1e9) for k in keys]
            body = []
            for v in sorted(ck.curves, key=lambda v: v.sort_key):
                curve = ck.curves[v]
                body.append([labels[v]] + [pct(curve[k].robust_acc) if k in curve else DASH
                                           for k in keys])
            lines += [
                f"### {name} / {ck.run.defense} / `{ck.run_id}`",
                "",
                f"Model {ck.run.model}, clean accuracy {pct(ck.clean_acc)} %, "
                f"n = {', '.join(map(str, ck.ns))}.",
                "",
            ]
            lines += table(head, body, right_from=1)
            worst = ck.any_at(ck.max_eps_key)
            if worst is not None:
                covered = worst.params.get("attacks", [])
                lines += ["", f"\"any\" at {format_eps(worst.eps)} covers: "
                          + (", ".join(f"`{a}`" for a in covered) or DASH)]
            lines.append("")
    return lines


def render_markdown(checkpoints: list[Checkpoint]) -> str:
    """The whole ``leaderboard.md``."""
    lines = header(checkpoints) + [""]
    for name, cks in by_dataset(checkpoints).items():
        lines += dataset_section(name, cks)
    lines += curves_section(checkpoints)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


# -- JSON ------------------------------------------------------------------------------------

def model_info(ck: Checkpoint, labels: dict[Variant, str]) -> dict[str, Any]:
    """RobustBench model-info keys (accuracies as ``"%.2f"`` strings) plus bench's own."""
    key = ck.max_eps_key
    aa, worst = ck.autoattack_at(key), ck.any_at(key)
    ref = aa or worst
    curves: dict[str, dict[str, float]] = {}
    for v in sorted(ck.curves, key=lambda v: v.sort_key):
        curves[labels[v]] = {eps_in_255(r.eps): round(100 * r.robust_acc, 2)
                             for _, r in sorted(ck.curves[v].items())}
    return {
        "link": None,
        "name": ck.run_id,
        "authors": None,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": ck.run.dataset,
        "venue": None,
        "architecture": ck.run.model,
        "threat_model": "Linf",
        "eps": format_eps(key / 1e9),
        "clean_acc": pct(ck.clean_acc),
        "reported": None,
        "autoattack_acc": pct(aa.robust_acc) if aa else None,
        "defense": ck.run.defense,
        "defense_params": ck.run.defense_params,
        "epochs": ck.run.epochs,
        "train_seconds": None if ck.run.train_seconds is None else round(ck.run.train_seconds, 1),
        "n_eval": ref.n if ref else max(ck.ns),
        "aa_version": aa.params.get("version") if aa else None,
        "worst_case_acc": pct(worst.robust_acc) if worst else None,
        "curves": curves,
    }


# -- plots -----------------------------------------------------------------------------------

def plot_png(title: str, lines: list[tuple[str, list[float], list[float]]]) -> bytes:
    """A PNG (Agg) of robust accuracy (%) against eps in units of 1/255, one line each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for i, (label, xs, ys) in enumerate(lines):
        ax.plot(xs, ys, linestyle=styles[(i // 10) % len(styles)], marker=markers[i % len(markers)],
                markersize=4, linewidth=1.6, label=label)
    xmax = max((max(xs) for _, xs, _ in lines if xs), default=8.0)
    ax.set_xlim(-0.2, xmax + 0.2)
    ax.set_ylim(-2, 102)
    if xmax <= 16:
        ax.set_xticks(range(0, int(xmax) + 1))
    ax.set_xlabel("eps (units of 1/255, L-infinity)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plots(checkpoints: list[Checkpoint]) -> dict[str, bytes]:
    """File name -> PNG, one per (data set, attack name) including ``any``."""
    out: dict[str, bytes] = {}
    for name, cks in by_dataset(checkpoints).items():
        variants = {v for ck in cks for v in ck.curves}
        labels = variant_labels(variants)
        attacks = sorted({v.attack for v in variants},
                         key=lambda a: (2 if a == ANY else 1 if a == AUTOATTACK else 0, a))
        for attack in attacks:
            mine = sorted((v for v in variants if v.attack == attack), key=lambda v: v.sort_key)
            plotted = [(ck, v) for ck in cks for v in mine if v in ck.curves]
            defenses: dict[str, set[str]] = {}
            for ck, _ in plotted:
                defenses.setdefault(ck.run.defense, set()).add(ck.run_id)
            lines = []
            for ck, v in plotted:
                label = ck.run.defense
                if len(defenses[ck.run.defense]) > 1:
                    label += f" ({ck.run_id})"
                if len(mine) > 1:
                    label += f" {labels[v]}"
                rows = [ck.curves[v][k] for k in sorted(ck.curves[v])]
                lines.append((label, [r.eps * 255 for r in rows], [100 * r.robust_acc for r in rows]))
            ns = joined(r.n for ck, v in plotted for r in ck.curves[v].values())
            title_attack = "AutoAttack" if attack == AUTOATTACK and len(mine) > 1 else \
                base_label(mine[0])
            title_attack = title_attack[:1].upper() + title_attack[1:]
            title = f"{title_attack}: robust accuracy on {name} (n = {ns})"
            out[f"plot-{slug(name)}-{slug(attack)}.png"] = plot_png(title, lines)
    return out


# -- writing ---------------------------------------------------------------------------------

@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    out: Path
    leaderboard: Path
    plots: list[Path]
    json: list[Path]
    csv: Path
    results_json: Path


def check_out(out: Path) -> None:
    """``out`` must be a directory or not exist (nor any file in the way of creating it)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "--out" if p == out else f"--out's parent {p}"
                raise UsageError(f"{what} {p} exists and is not a directory")
            return


def _write(path: Path, data: bytes) -> None:
    """Atomic write (imported here: bench.io imports torch, which the report does not need)."""
    from bench.io import atomic_write_bytes

    atomic_write_bytes(path, data)


def write_report(db: str | Path, out: str | Path) -> ReportFiles:
    """Render the report of store ``db`` into directory ``out``; UsageError before writing."""

    out = Path(out).expanduser().resolve()
    check_out(out)
    if (out / "json").exists() and not (out / "json").is_dir():
        raise UsageError(f"{out / 'json'} exists and is not a directory")
    with Store(db, must_exist=True) as store:
        if store.count() == 0:
            raise UsageError(f"empty store {store.path}: run `bench eval` first")
        checkpoints = load(store)
        markdown = render_markdown(checkpoints)
        infos = {}
        for _, cks in by_dataset(checkpoints).items():
            labels = variant_labels({v for ck in cks for v in ck.curves}, display=False)
            for ck in cks:
                infos[f"{safe_name(ck.run_id)}.json"] = model_info(ck, labels)
        pngs = plots(checkpoints)
        csv_bytes = store.csv_text().encode()
        json_bytes = store.json_text().encode()

    out.mkdir(parents=True, exist_ok=True)
    (out / "json").mkdir(exist_ok=True)
    # Outputs of an earlier report that this store no longer produces would be stale: remove them.
    for old in out.glob("plot-*.png"):
        if old.name not in pngs:
            old.unlink()
    for old in (out / "json").glob("*.json"):
        if old.name not in infos:
            old.unlink()
    plot_paths = []
    for name, data in sorted(pngs.items()):
        _write(out / name, data)
        plot_paths.append(out / name)
    json_paths = []
    for name, info in sorted(infos.items()):
        _write(out / "json" / name, (json.dumps(info, indent=2) + "\n").encode())
        json_paths.append(out / "json" / name)
    _write(out / "results.csv", csv_bytes)
    _write(out / "results.json", json_bytes)
    _write(out / LEADERBOARD, markdown.encode())
    return ReportFiles(out, out / LEADERBOARD, plot_paths, json_paths, out / "results.csv",
                       out / "results.json")
