"""What the report says: the study's runs gathered per group and analysis, tables, and
findings written from the measured numbers (never canned text).

Every function here reads plain dicts from the store (each analysis result's ``to_dict``)
and returns text and tables; the figures live in ``figures.py``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..analysis.pathgrad import shortest_range
from ..study.store import Store

# --------------------------------------------------------------------------- study data


@dataclass
class RunData:
    """One training run or experiment of the study, with its analysis results."""

    id: str
    kind: str  # 'run' or 'experiment'
    status: str
    group: str
    label: str
    model: str
    options: dict[str, Any]
    data: str
    seed: int | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    error: str | None
    duration_s: float | None
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def result(self, phase: str, kind: str) -> dict[str, Any] | None:
        """The stored result, or None when it is missing or was skipped."""
        res = self.results.get((phase, kind))
        if not res or "skipped" in res:
            return None
        return res


@dataclass
class StudyData:
    spec: dict[str, Any]
    provenance: dict[str, Any]
    source: str
    runs: list[RunData]
    session_s: float | None = None
    devices: list[str] = field(default_factory=list)  # what the jobs ran on
    sessions: list[dict[str, Any]] = field(default_factory=list)  # each run or resume

    @property
    def training(self) -> list[RunData]:
        return [r for r in self.runs if r.kind == "run"]

    @property
    def experiments(self) -> list[RunData]:
        return [r for r in self.runs if r.kind == "experiment"]

    def groups(self) -> dict[str, list[RunData]]:
        out: dict[str, list[RunData]] = {}
        for r in self.training:
            out.setdefault(r.group, []).append(r)
        return out

    def group_spec(self, name: str) -> dict[str, Any]:
        return next((g for g in self.spec.get("groups") or [] if g.get("name") == name), {})

    def labels(self, runs: list[RunData]) -> list[str]:
        """Labels in study order, each once."""
        return list(dict.fromkeys(r.label for r in runs))

    def with_result(self, phase: str, kind: str) -> dict[str, list[dict[str, Any]]]:
        """label -> results (one per seed) of ``phase:kind`` over all training runs."""
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.training:
            res = r.result(phase, kind)
            if res is not None:
                out.setdefault(r.label, []).append(res)
        return out

    def skipped(self) -> list[tuple[str, str, str]]:
        """(run id, phase:kind, reason) of every analysis recorded as skipped."""
        return [
            (r.id, f"{phase}:{kind}", str(res["skipped"]))
            for r in self.runs
            for (phase, kind), res in r.results.items()
            if isinstance(res, dict) and "skipped" in res
        ]


def load_study(store: Store) -> StudyData:
    results: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for row in store.results():
        results[row["run_id"]][(row["phase"], row["kind"])] = row["result"]
    runs = []
    for r in store.runs():
        spec = r["spec"]
        if r["kind"] == "run":
            model = spec.get("model") or {}
            rd = RunData(
                id=r["id"], kind="run", status=r["status"], group=str(spec.get("group", "")),
                label=str(spec.get("label") or model.get("name", r["id"])), model=str(model.get("name", "")),
                options=dict(model.get("options") or {}), data=str(spec.get("data", "")), seed=spec.get("seed"),
                metrics=r["metrics"] or {}, history=r["history"] or [], error=r["error"],
                duration_s=r["duration_s"],
            )  # fmt: skip
        else:
            rd = RunData(
                id=r["id"], kind="experiment", status=r["status"], group=str(spec.get("kind", "")),
                label=str(spec.get("name", r["id"])), model="", options=dict(spec.get("options") or {}),
                data="", seed=None, metrics={}, history=[], error=r["error"], duration_s=r["duration_s"],
            )  # fmt: skip
        rd.results = results.get(r["id"], {})
        runs.append(rd)
    return StudyData(
        spec=store.meta("spec", {}) or {},
        provenance=store.meta("provenance", {}) or {},
        source=str(store.meta("source", "") or ""),
        runs=runs,
        session_s=store.last_session_s(),
        devices=store.devices(),
        sessions=store.sessions(),
    )


# --------------------------------------------------------------------------- formatting


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


def num(x: float | int | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; '–' for missing values."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return big(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def big(n: int) -> str:
    """An exact (possibly huge) int: 2^k for large powers of two, 1.2e100 past 10^9."""
    if n >= 1024 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    if n < 10**9:
        return f"{n:,}"
    digits = str(n)
    return f"{digits[0]}.{digits[1]}e{len(digits) - 1}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3g}%"


@dataclass
class Stat:
    """Mean ± std over seeds."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        if self.n > 1:
            return f"{num(self.mean)} ± {num(self.std, 2)}"
        return num(self.mean)


def clearly_above(b: Stat, a: Stat) -> bool:
    """``b`` exceeds ``a`` by more than their spread over seeds and by over 10% of ``a``."""
    return b.mean - a.mean > max(a.std + b.std, 0.1 * abs(a.mean))


def stat(values: list[float | None]) -> Stat | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def sstr(s: Stat | None) -> str:
    return "–" if s is None else str(s)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- model names

FAMILY = re.compile(r"^(plain|resnet|preact-resnet|mlp|resmlp|preact-resmlp)-(\d+)$")
RESIDUAL_FAMILIES = ("resnet", "preact-resnet", "resmlp", "preact-resmlp")


def family_depth(run: RunData) -> tuple[str, int] | None:
    """(family, depth) of a CIFAR/MLP registry model with its alias options only."""
    m = FAMILY.match(run.model)
    if not m or run.options:
        return None
    return m.group(1), int(m.group(2))


def is_plain(family: str) -> bool:
    return family in ("plain", "mlp")


# --------------------------------------------------------------------------- path spectra


def counts_of(spectrum: dict[str, Any]) -> dict[int, int]:
    return {int(k): int(v) for k, v in (spectrum.get("counts") or {}).items() if int(v)}


def spectra(study: StudyData) -> dict[str, dict[str, Any]]:
    """label -> path spectrum, from 'paths' experiments and the runs' init:paths (first seed)."""
    out: dict[str, dict[str, Any]] = {}
    for exp in study.experiments:
        res = exp.result("experiment", "paths")
        for label, sp in ((res or {}).get("models") or {}).items():
            if isinstance(sp, dict) and "counts" in sp:
                out.setdefault(label, sp)
    for label, results in study.with_result("init", "paths").items():
        out.setdefault(label, results[0])
    return out


def paths_findings(spec: dict[str, dict[str, Any]]) -> tuple[list[str], list[Table]]:
    rows = []
    for label, sp in spec.items():
        ops = sp.get("nonlinear_ops") or {}
        rows.append([
            label, big(int(sp["total"])), str(sp["min"]), str(sp["max"]), num(sp.get("mean")),
            "yes" if sp.get("has_linear_path") else "no",
            ", ".join(f"{k} ×{v}" for k, v in sorted(ops.items())) or "–",
        ])  # fmt: skip
    tables = [
        Table(["model", "paths", "min", "max", "mean", "linear path?", "nonlinear ops"], rows,
              "Input-to-output paths by the number of nonlinearities they cross (exact counts).")
    ]  # fmt: skip
    out: list[str] = []
    linear = [k for k, s in spec.items() if s.get("has_linear_path")]
    if linear:
        out.append(
            f"{join_and(linear)} {'has' if len(linear) == 1 else 'have'} a path from input to "
            "output without any nonlinearity."
        )
    else:
        out.append(
            f"None of the {len(spec)} models measured has a path from input to output without a "
            "nonlinearity: every path crosses at least one."
        )
    items = list(spec.items())
    if items:
        k0, s0 = items[0]
        rest = "".join(f"; in {k}, {s['min']}" for k, s in items[1:])
        out.append(
            f"The shortest path in {k0} crosses {s0['min']} "
            f"nonlinearit{'y' if s0['min'] == 1 else 'ies'}{rest}."
        )
    # original vs pre-activation units of the same depth
    for k, s in spec.items():
        m = re.match(r"^resnet-(\d+)$", k)
        pre = spec.get(f"preact-resnet-{m.group(1)}") if m else None
        if m and pre is not None and pre["min"] < s["min"]:
            out.append(
                f"Pre-activation units (He et al. 2016) shorten the shortest path from {s['min']} "
                f"nonlinearities in {k} to {pre['min']} in preact-resnet-{m.group(1)}."
            )
    for k, s in spec.items():
        if int(s["total"]) > 1 and s["max"] != s["min"]:
            out.append(
                f"{k} has {big(int(s['total']))} paths; their number of nonlinearities ranges from "
                f"{s['min']} to {s['max']} (mean {num(s.get('mean'))})."
            )
            break
    level_rows: list[list[str]] = []
    for k, s in spec.items():
        levels = s.get("levels") or []
        if not levels:
            continue
        lvl_rows = [
            [k, str(lv.get("name", i)), big(int(lv.get("total") or 0)), num(lv.get("min")),
             num(lv.get("max"))]
            for i, lv in enumerate(levels)
        ]  # fmt: skip
        level_rows.extend(lvl_rows)
        # levels whose long skip is open (a switched-off skip carries no path)
        open_ = [(i, lv.get("min")) for i, lv in enumerate(levels) if lv.get("total")]
        mins = [m for _, m in open_]
        if len(mins) >= 2:
            increasing = all(a < b for a, b in zip(mins, mins[1:], strict=False))
            seq = ", ".join(str(v) for v in mins)
            single = all(int(lv.get("total") or 0) <= 1 for lv in levels)
            if len(open_) == len(levels):
                where = "top level first"
                top = "the top skip"
            else:
                where = f"levels {join_and([str(i) for i, _ in open_])} (0 = top)"
                top = (
                    "the top skip"
                    if open_[0][0] == 0
                    else f"the highest open skip (level {open_[0][0]})"
                )
            if increasing:
                out.append(
                    f"In {k} the {'' if single else 'shortest '}paths through the long skips "
                    f"cross {seq} nonlinearities, {where}: paths of increasing "
                    f"nonlinearity, with the fewest through {top}."
                )
            else:
                out.append(
                    f"In {k} the shortest paths through the long skips cross {seq} nonlinearities "
                    f"({where}): not strictly increasing with depth."
                )
    if level_rows:
        tables.append(
            Table(["model", "long skip", "paths", "min", "max"], level_rows,
                  "U-Nets: paths through each long skip, top level first.")
        )  # fmt: skip
    return out, tables


# --------------------------------------------------------------------------- training


def primary_metric(runs: list[RunData]) -> str:
    keys = {k for r in runs for k in r.metrics}
    for k in ("test_miou", "test_acc", "test_loss"):
        if k in keys:
            return k
    return "train_loss"


METRIC_NAMES = {
    "test_miou": "test mean IoU",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "train_loss": "train loss",
    "train_acc": "train accuracy",
}


def label_stats(runs: list[RunData], key: str) -> dict[str, Stat]:
    by: dict[str, list[float | None]] = {}
    for r in runs:
        if r.status == "finished":
            by.setdefault(r.label, []).append(r.metrics.get(key))
    return {k: s for k, v in by.items() if (s := stat(v)) is not None}


def training_findings(study: StudyData, runs: list[RunData]) -> tuple[list[str], list[Table]]:
    metric = primary_metric(runs)
    mname = METRIC_NAMES.get(metric, metric)
    loss = label_stats(runs, "train_loss")
    score = label_stats(runs, metric)
    rows = []
    for label in study.labels(runs):
        rs = [r for r in runs if r.label == label]
        ok = sum(r.status == "finished" for r in rs)
        status = f"{ok}/{len(rs)} finished" if ok < len(rs) else f"{ok} seed{'s' if ok > 1 else ''}"
        epochs = max((int(r.metrics.get("epoch") or 0) for r in rs), default=0)
        rows.append(
            [label, status, str(epochs or "–"), sstr(loss.get(label)), sstr(score.get(label))]
        )
    table = Table(["model", "runs", "epochs", "train loss", mname], rows,
                  "Final metrics, mean ± std over seeds where there are several.")  # fmt: skip
    out: list[str] = []
    if score:
        hi = metric != "test_loss"
        best = (max if hi else min)(score, key=lambda k: score[k].mean)
        worst = (min if hi else max)(score, key=lambda k: score[k].mean)
        if best != worst:
            out.append(f"Best {mname}: {best} ({score[best]}); worst: {worst} ({score[worst]}).")
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        out.append(
            f"{len(bad)} of {len(runs)} runs did not finish: "
            + join_and([f"{r.label} (seed {r.seed}, {r.status})" for r in bad])
            + "."
        )
    return _degradation(runs, loss) + out, [table]


def _degradation(runs: list[RunData], loss: dict[str, Stat]) -> list[str]:
    """He et al. 2015: deeper plain nets reach a higher training loss; ResNets do not."""
    fam: dict[str, dict[int, str]] = defaultdict(dict)
    for r in runs:
        fd = family_depth(r)
        if fd and r.label in loss:
            fam[fd[0]][fd[1]] = r.label
    out = []
    for family, depths in fam.items():
        if len(depths) < 2:
            continue
        lo, hi = min(depths), max(depths)
        a, b = loss[depths[lo]], loss[depths[hi]]
        worse = b.mean > a.mean
        gap = f"train loss {b} at depth {hi} vs {a} at depth {lo}"
        if is_plain(family):
            if clearly_above(b, a):
                out.append(
                    f"The deeper plain net trains worse ({gap}): the degradation problem of "
                    "He et al. 2015 (Fig. 6) appears here."
                )
            elif worse:
                out.append(
                    f"The deeper plain net trains slightly worse ({gap}), within the spread "
                    "over seeds: no clear degradation."
                )
            else:
                out.append(
                    f"Contrary to He et al. 2015, the deeper plain net does not train worse here "
                    f"({gap})."
                )
        elif worse and not clearly_above(b, a):
            out.append(f"{family}: {gap}; within the spread over seeds: no clear degradation.")
        else:
            out.append(
                f"{family}: {gap}; the deeper net "
                + ("trains worse." if worse else "trains at least as well (no degradation).")
            )
    depths = set().union(*(set(d) for d in fam.values())) if fam else set()
    for depth in sorted(depths):
        plain = next((fam[f][depth] for f in fam if is_plain(f) and depth in fam[f]), None)
        res = [fam[f][depth] for f in fam if not is_plain(f) and depth in fam[f]]
        if plain is None or not res:
            continue
        p = loss[plain]
        better = [x for x in res if clearly_above(p, loss[x])]
        higher = [x for x in res if clearly_above(loss[x], p)]
        cmp = join_and([f"{x} {loss[x]}" for x in res])
        if len(better) == len(res):
            out.append(
                f"At depth {depth} the residual nets reach a lower train loss than {plain} "
                f"({cmp} vs {p}), as He et al. 2015 report."
            )
        elif higher:
            out.append(
                f"Contrary to He et al. 2015, at depth {depth} {join_and(higher)} "
                f"reach{'es' if len(higher) == 1 else ''} a higher train loss than {plain} "
                f"({cmp} vs {p})."
            )
        else:
            close = [x for x in res if x not in better]
            out.append(
                f"At depth {depth} {join_and(close)} and {plain} train to losses within the "
                f"spread over seeds ({cmp} vs {p}): no clear difference"
                + (f"; {join_and(better)} clearly lower." if better else ".")
            )
    return out


def published_table(study: StudyData) -> tuple[list[str], Table | None]:
    """Published numbers beside measured ones (spec: report.published)."""
    pub = (study.spec.get("report") or {}).get("published") or []
    if not pub:
        return [], None
    rows = []
    out = []
    for p in pub:
        label, metric = str(p.get("label", "")), str(p.get("metric", "test_error"))
        runs = [r for r in study.training if r.label == label and r.status == "finished"]
        if metric == "test_error":
            vals = [100 * (1 - r.metrics["test_acc"]) for r in runs if "test_acc" in r.metrics]
        else:
            vals = [r.metrics.get(metric) for r in runs]
        s = stat(vals)
        rows.append([label, metric + (" (%)" if metric == "test_error" else ""), num(p.get("value")),
                     sstr(s) if s else "not run", str(p.get("source", ""))])  # fmt: skip
        if s is not None and isinstance(p.get("value"), int | float):
            out.append(
                f"{label}: measured {metric} {s} vs published {num(p['value'])} "
                f"({p.get('source', '')}), a difference of {num(s.mean - p['value'])}."
            )
    return out, Table(["model", "metric", "published", "measured", "source"], rows,
                      "Published numbers beside the measured ones.")  # fmt: skip


# --------------------------------------------------------------------------- gradient flow


def _ratio(units: list[dict[str, Any]]) -> float | None:
    g = [u.get("grad_norm") for u in units if u.get("grad_norm")]
    if len(g) < 2 or not g[-1]:
        return None
    return g[0] / g[-1]


def gradflow_findings(
    by_phase: dict[str, dict[str, list[dict[str, Any]]]],
) -> tuple[list[str], list[Table]]:
    rows = []
    out = []
    for phase, by_label in by_phase.items():
        ratios: dict[str, Stat] = {}
        stds: dict[str, Stat] = {}
        for label, results in by_label.items():
            r = stat([_ratio(x.get("units") or []) for x in results])
            sd = stat([
                statistics.fmean(a) if (a := [y["act_std"] for y in x.get("layers") or [] if y.get("act_std") is not None]) else None
                for x in results
            ])  # fmt: skip
            units = results[0].get("units") or []
            rows.append([
                label, phase, str(len(units)),
                num(units[0]["grad_norm"]) if units else "–", num(units[-1]["grad_norm"]) if units else "–",
                sstr(r), sstr(sd),
            ])  # fmt: skip
            if r:
                ratios[label] = r
            if sd:
                stds[label] = sd
        when = "at initialisation" if phase == "init" else "after training"
        if ratios:
            out.append(
                f"{when.capitalize()}, the gradient norm at the first unit relative to the last is "
                + join_and([f"{ratios[k]} in {k}" for k in ratios])
                + " (1 = no decay or growth through depth)."
            )
            plains = [k for k in ratios if k.startswith("plain") or k.startswith("mlp")]
            resid = [k for k in ratios if k not in plains]
            if plains and resid:
                dev = {k: abs(math.log(max(ratios[k].mean, 1e-30))) for k in ratios}
                p_dev = min(dev[k] for k in plains)
                even = [k for k in resid if dev[k] < p_dev]
                if len(even) == len(resid):
                    out.append(
                        f"{when.capitalize()}, the gradient reaches the first units of the residual nets "
                        "with less decay or growth than in the plain net."
                    )
                elif not even:
                    out.append(
                        f"{when.capitalize()}, the gradient does not flow more evenly through the "
                        "residual nets than through the plain net here: contrary to the usual claim."
                    )
                else:
                    rest = [k for k in resid if k not in even]
                    out.append(
                        f"{when.capitalize()}, the gradient flows more evenly through {join_and(even)} "
                        f"than through the plain net, but not through {join_and(rest)}: contrary "
                        "to the usual claim for "
                        + ("that net." if len(rest) == 1 else "those nets.")
                    )
        if stds and phase == "trained":
            plains = [k for k in stds if k.startswith("plain")]
            resid = [k for k in stds if not k.startswith("plain")]
            if plains and resid:
                smaller = all(stds[r].mean < min(stds[p].mean for p in plains) for r in resid)
                txt = join_and([f"{stds[k]} in {k}" for k in stds])
                out.append(
                    f"Mean std of the layer responses after training: {txt}; "
                    + ("smaller in the ResNets, as He et al. 2015 (Fig. 7) report."
                       if smaller else "contrary to He et al. 2015 (Fig. 7), not smaller in every ResNet.")
                )  # fmt: skip
    table = Table(["model", "phase", "units", "first unit |g|", "last unit |g|", "first/last",
                   "mean layer std"], rows, "Gradient norm at unit outputs (dLoss/d output).")  # fmt: skip
    return out, [table]


# --------------------------------------------------------------------------- path gradients


def gradient_share(res: dict[str, Any]) -> list[float]:
    """Share per path length: of Veit's total gradient magnitude (``total_share``: C(U, k)
    x the mean single-path norm, Fig. 6c) where paths were sampled, else of the summed norms
    of the exact parts (``norm_share``, without the remainder row of a ``max_length``
    split: it mixes all longer paths). Neither is a share of |dL/dx|: parts cancel."""
    if res.get("total_share"):
        return [float(v or 0.0) for v in res["total_share"]]
    share = [float(v or 0.0) for v in res.get("norm_share") or []]
    k = res.get("max_length")
    return share[: k + 1] if isinstance(k, int) else share


def seed_columns(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Per-seed lists (one value per unit or path length) as columns, one value per seed;
    seeds whose list is empty or not as long as the first seed's are left out."""
    kept = [r for r in rows if r and len(r) == len(rows[0])]
    return list(zip(*kept, strict=True))


def mean_share(results: list[dict[str, Any]]) -> list[float]:
    """``gradient_share`` averaged over seeds (those with as many lengths as the first)."""
    return [statistics.fmean(col) for col in seed_columns([gradient_share(x) for x in results])]


def path_counts(res: dict[str, Any]) -> list[int]:
    """C(U, k) for k = 0..U, U = the number of units (also for a ``max_length`` split)."""
    u = len(res.get("units") or []) or len(res.get("counts") or []) - 1
    return [math.comb(u, k) for k in range(u + 1)] if u >= 0 else []


def pathgrad_findings(by_label: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[Table]]:
    rows = []
    out = []
    for label, results in by_label.items():
        res = results[0]
        share = mean_share(results)
        counts = path_counts(res)
        if not share or not counts:
            continue
        u = len(counts) - 1
        lo, hi = shortest_range(share)
        frac = sum(counts[lo : hi + 1]) / 2**u
        peak = max(range(len(share)), key=share.__getitem__)
        typical = u / 2
        rows.append([label, str(u), big(2**u), str(peak), f"{lo}–{hi}", pct(frac),
                     num(grad.mean if (grad := stat([x.get("grad_norm") for x in results])) else None)])  # fmt: skip
        measure = (
            "Veit et al.'s total gradient magnitude"
            if res.get("total_share")
            else "the summed gradient norms of the path lengths"
        )
        out.append(
            f"In {label} ({u} units, {big(2**u)} paths), 90% of {measure} comes from "
            f"paths through {lo}–{hi} residual branches, {pct(frac)} of all paths; the largest "
            f"share comes from length {peak}, while most paths have length about {typical:g}."
        )
        if u >= 4:
            if peak < typical:
                out.append(
                    f"As Veit et al. 2016 found, the effective paths of {label} are shorter than "
                    "the typical path."
                )
            else:
                out.append(
                    f"Contrary to Veit et al. 2016, the gradient of {label} is not carried mainly "
                    "by paths shorter than the typical path."
                )
    table = Table(["model", "units", "paths", "peak length", "90% of gradient", "share of paths",
                   "|dL/dx|"], rows, "Input gradient by path length (number of residual branches passed).")  # fmt: skip
    return out, [table]


# --------------------------------------------------------------------------- identity task


def identity_findings(res: dict[str, Any]) -> tuple[list[str], list[Table]]:
    stats = res.get("stats") or []
    rows = [
        [s["task"], s["arch"], str(s["depth"]),
         f"{num(s['final_loss_mean'])} ± {num(s['final_loss_std'], 2)}" if s.get("seeds", 1) > 1 else num(s["final_loss_mean"]),
         (num(s["steps_mean"]) if s.get("steps_mean") is not None else "never"),
         f"{s.get('reached', 0)}/{s.get('seeds', 1)}"]
        for s in stats
    ]  # fmt: skip
    table = Table(["task", "architecture", "depth", "final loss (MSE)", "steps to threshold",
                   "seeds reaching it"], rows,
                  f"Learning f(x)=x and a random linear map; zero predictor = 1. Steps to threshold: the first step "
                  f"where the running mean of the training loss is at or below {res.get('threshold')}; final loss: "
                  "the trained net's MSE on fresh inputs, so it can be below the threshold that training never reached.")  # fmt: skip
    out = []
    depths = res.get("depths") or []
    for task in res.get("tasks") or []:
        if not depths:
            break
        d = max(depths)
        at = {s["arch"]: s for s in stats if s["task"] == task and s["depth"] == d}
        if not at:
            continue
        best = min(at, key=lambda a: at[a]["final_loss_mean"])
        plain = next((a for a in at if "plain" in a or a == "mlp"), None)
        txt = join_and([f"{a} {num(s['final_loss_mean'])}" for a, s in at.items()])
        out.append(f"{task.capitalize()} task at depth {d}: final loss {txt}; best: {best}.")
        if plain is not None and len(at) > 1:
            others = [a for a in at if a != plain]
            beat = [a for a in others if at[a]["final_loss_mean"] < at[plain]["final_loss_mean"]]
            if not beat:
                out.append(
                    f"Contrary to the usual claim that skips make the {task} map easier to learn, "
                    f"the plain net learns it at least as well at depth {d}."
                )
            elif len(beat) < len(others):
                worse = [a for a in others if a not in beat]
                out.append(
                    f"Not every skip helps on the {task} task at depth {d}: {join_and(worse)} "
                    f"end{'s' if len(worse) == 1 else ''} above the plain net."
                )
            else:
                out.append(
                    f"Every residual variant ends below the plain net on the {task} task at depth {d}."
                )
    return out, [table]


# --------------------------------------------------------------------------- lesions


def lesion_findings(
    by_label: dict[str, list[dict[str, Any]]], skipped: dict[str, str]
) -> tuple[list[str], list[Table]]:
    """Veit et al. 2016 (Fig. 3): what deleting one unit costs. Each seed's deletions are
    measured against that seed's intact net; for ``metric="loss"`` higher is worse."""
    rows = []
    out = []
    for label, results in by_label.items():
        # each seed with its measured single deletions
        measured = [(x, [r for r in x.get("single") or [] if r.get("metric") is not None])
                    for x in results if x.get("baseline") is not None]  # fmt: skip
        measured = [(x, singles) for x, singles in measured if singles]
        if not measured:
            continue
        seeds = [x for x, _ in measured]
        metric = seeds[0].get("metric") or "metric"
        loss = metric == "loss"  # lower is better
        base = stat([x["baseline"] for x in seeds])
        meds = [statistics.median(r["metric"] for r in singles) for _, singles in measured]
        med = stat(meds)
        worst = (max if loss else min)(
            (r for _, singles in measured for r in singles), key=lambda r: r["metric"]
        )
        # the relative harm of one deletion, per seed: a fall in accuracy, a rise in loss
        harms = [
            ((m - x["baseline"]) if loss else (x["baseline"] - m)) / abs(x["baseline"])
            for x, m in zip(seeds, meds, strict=True)
            if x["baseline"]
        ]
        ks = seeds[0].get("random_k") or []
        rows.append([label, metric, sstr(base), sstr(med), f"{num(worst['metric'])} ({worst['name']})",
                     ", ".join(f"k={k['k']}: {num(k['mean'])}" for k in ks[:6])])  # fmt: skip
        out.append(
            f"Deleting one unit of {label} changes its {metric} from {base} to a median of {med} "
            f"(worst {num(worst['metric'])}, {worst['name']})."
        )
        if not harms:
            continue
        rel = statistics.fmean(harms)
        if rel <= 0:
            change = "none" if rel == 0 else ("-" if loss else "+") + pct(-rel)
            out.append(
                f"Deleting a single unit does not {'raise' if loss else 'lower'} the {metric} of "
                f"{label} (median change {change}), as Veit et al. 2016 report for ResNets."
            )
        elif rel < 0.25:
            out.append(
                f"{label} tolerates single deletions ({pct(rel)} median relative "
                f"{'rise' if loss else 'drop'}), as Veit et al. 2016 report for ResNets."
            )
        elif loss:
            out.append(
                f"Contrary to Veit et al. 2016, deleting a single unit of {label} raises its loss "
                f"by {pct(rel)} (median)."
            )
        else:
            out.append(
                f"Contrary to Veit et al. 2016, deleting a single unit of {label} costs "
                f"{pct(rel)} of its {metric} (median)."
            )
    for label, why in skipped.items():
        out.append(f"{label}: no lesion ({why.split(';')[0]}).")
    if not rows:
        return out, []
    table = Table(["model", "metric", "intact", "median, 1 unit deleted", "worst", "k random units deleted"],
                  rows, "Lesions: metric after deleting residual branches (keeping the shortcuts).")  # fmt: skip
    return out, [table]


# --------------------------------------------------------------------------- shattered


def shattered_findings(res: dict[str, Any]) -> tuple[list[str], list[Table]]:
    rows_ = res.get("rows") or []
    n = int(res.get("inits") or 1)

    def lag1(r: dict[str, Any]) -> float | None:  # None: constant in every init
        v = r.get("lag1_mean")
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    def ms(m: Any, s: Any) -> str:
        return f"{num(m)} ± {num(s, 2)}" if n > 1 and num(m) != "–" else num(m)

    rows = [
        [r["arch"], str(r["depth"]), ms(r["lag1_mean"], r.get("lag1_std")),
         ms(r["slope_mean"], r.get("slope_std"))]
        for r in rows_
    ]  # fmt: skip
    table = Table(["architecture", "depth", "lag-1 autocorrelation", "spectral slope"], rows,
                  f"Gradient of a 1-D-input net at {len(res.get('x') or [])} points; over {n} initialisation(s). "
                  "White noise: autocorrelation 0, slope 0; brown noise: slope −2.")  # fmt: skip
    out = []
    depths = res.get("depths") or []
    if depths:
        d = max(depths)
        at = {r["arch"]: r for r in rows_ if r["depth"] == d}
        txt = join_and([f"{a} {num(r['lag1_mean'])}" for a, r in at.items()])
        out.append(f"At depth {d} the lag-1 autocorrelation of the gradient is {txt}.")
        plain = next((a for a in at if a in ("mlp", "plain") or a.startswith("plain")), None)
        if plain and len(at) > 1:
            res_ = [a for a in at if a != plain]
            known = lag1(at[plain]) is not None and all(lag1(at[a]) is not None for a in res_)
            if not known:
                pass  # a net constant in every init has no autocorrelation to compare
            elif all(lag1(at[a]) > lag1(at[plain]) for a in res_):  # type: ignore[operator]
                out.append(
                    "The plain net's gradient is the most shattered (closest to white noise), as "
                    "Balduzzi et al. 2017 predict; the skips keep it correlated."
                )
            else:
                out.append(
                    "Contrary to Balduzzi et al. 2017, the plain net's gradient is not the most "
                    "shattered at this depth."
                )
        if len(depths) > 1:
            lo = min(depths)
            for a in at:
                r0 = next((r for r in rows_ if r["arch"] == a and r["depth"] == lo), None)
                if r0:
                    out.append(
                        f"{a}: lag-1 autocorrelation {num(r0['lag1_mean'])} at depth {lo} → "
                        f"{num(at[a]['lag1_mean'])} at depth {d}."
                    )
    constant = [r for r in rows_ if r.get("constant_inits")]
    if constant:
        txt = join_and([f"{r['arch']} at depth {r['depth']} ({r['constant_inits']} of {n})"
                        for r in constant])  # fmt: skip
        out.append(
            f"The gradient was constant over the points (the net affine there: no "
            f"nonlinearity, or every ReLU dead) in some initialisations of {txt}; a constant "
            "has no autocorrelation, so they are left out of the means."
        )
    return out, [table]


# --------------------------------------------------------------------------- U-Net group


def unet_findings(study: StudyData, runs: list[RunData]) -> tuple[list[str], list[Table]]:
    """Long skips of U-Nets: metric per variant beside the shortest path through it."""
    metric = primary_metric(runs)
    score = label_stats(runs, metric)
    sp = {label: res[0] for label, res in study.with_result("init", "paths").items()}
    rows = []
    for label in study.labels(runs):
        s = sp.get(label)
        skip = next((r.options.get("skip") for r in runs if r.label == label), None)
        levels = (s or {}).get("levels") or []
        rows.append([
            label, str(skip if not isinstance(skip, list) else ", ".join(map(str, skip))),
            sstr(score.get(label)), str(s["min"]) if s else "–",
            " / ".join(str(lv.get("min")) if lv.get("total") else "–" for lv in levels) or "–",
        ])  # fmt: skip
    out = []
    if score and len(score) > 1:
        order = sorted(score, key=lambda k: -score[k].mean)
        out.append(
            f"{_cap(METRIC_NAMES.get(metric, metric))} by variant: "
            + ", ".join(f"{k} {score[k]}" for k in order) + "."
        )  # fmt: skip
        if sp:
            with_min = [k for k in order if k in sp]
            if len(with_min) > 1:
                best, worst = with_min[0], with_min[-1]
                out.append(
                    f"The best variant ({best}) has a shortest input-to-output path of "
                    f"{sp[best]['min']} nonlinearities, the worst ({worst}) {sp[worst]['min']}."
                )
    table = Table(["variant", "skip", METRIC_NAMES.get(metric, metric), "shortest path",
                   "shortest per long skip (top first)"], rows, "U-Net long skips.")  # fmt: skip
    return out, [table]


def is_unet_group(runs: list[RunData]) -> bool:
    return bool(runs) and all(r.model == "unet" for r in runs)


# --------------------------------------------------------------------------- landscapes, NLC


def landscape_metrics(res: dict[str, Any]) -> tuple[float | None, int]:
    """(mean loss on the grid's border / centre loss, number of strict local minima)."""
    vals = res.get("values") or []
    centre = res.get("center_loss")
    if res.get("dims") != 2 or not vals or not centre:
        return None, 0
    n = len(vals)
    border = [vals[i][j] for i in range(n) for j in range(n) if i in (0, n - 1) or j in (0, n - 1)]
    border = [v for v in border if v is not None and math.isfinite(v)]
    ratio = statistics.fmean(border) / centre if border else None
    minima = 0
    for i in range(n):
        for j in range(n):
            v = vals[i][j]
            if v is None:
                continue
            nb = [vals[a][b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                  if 0 <= a < n and 0 <= b < n and vals[a][b] is not None]  # fmt: skip
            if nb and all(v < x for x in nb):
                minima += 1
    return ratio, minima


def landscape_findings(by_label: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[Table]]:
    rows = []
    info = {}
    for label, results in by_label.items():
        res = results[0]
        ratio, minima = landscape_metrics(res)
        n = len(res.get("coords") or [])
        info[label] = (ratio, minima)
        rows.append([label, f"{n}×{n}" if res.get("dims") == 2 else str(n), num(res.get("center_loss")),
                     num(ratio), str(minima) if res.get("dims") == 2 else "–"])  # fmt: skip
    out = []
    two = {k: v for k, v in info.items() if v[0] is not None}
    if two:
        out.append(
            "Mean loss on the border of the plotted plane, relative to the trained model's loss: "
            + join_and([f"{v[0]:.3g}× for {k} ({v[1]} local minim{'um' if v[1] == 1 else 'a'} on the grid)" for k, v in two.items()])
            + "."
        )  # fmt: skip
        plains = [k for k in two if k.startswith("plain")]
        resid = [k for k in two if not k.startswith("plain")]
        if plains and resid:
            p = max(two[k][1] for k in plains)
            r = max(two[k][1] for k in resid)
            if p > r:
                out.append(
                    "The plain net's surface has more local minima than the ResNet's, as Li et al. "
                    "2018 describe (chaotic without shortcuts)."
                )
            elif p == r:
                out.append(
                    "On this grid the plain and residual surfaces have equally many local minima: "
                    "the chaotic plain landscape Li et al. 2018 show for deep nets does not appear here."
                )
            else:
                out.append(
                    "Contrary to Li et al. 2018, the ResNet's surface has more local minima on this "
                    "grid than the plain net's."
                )
    table = Table(["model", "grid", "centre loss", "border / centre", "local minima"], rows,
                  "Loss along filter-normalised random directions (Li et al. 2018).")  # fmt: skip
    return out, [table]


def nlc_findings(by_label: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[Table]]:
    vals = {k: stat([x.get("value") for x in v]) for k, v in by_label.items()}
    vals = {k: v for k, v in vals.items() if v is not None}
    rows = []
    for label, results in by_label.items():
        units = [u["nlc"] for u in results[0].get("per_unit") or [] if u.get("nlc") is not None]
        rows.append([label, sstr(vals.get(label)), num(statistics.fmean(units)) if units else "–",
                     num(max(units)) if units else "–"])  # fmt: skip
    out = []
    vals = {k: v for k, v in vals.items() if v.mean > 0}
    if vals:
        # An affine map has NLC 1 exactly; a departure either way is nonlinearity, so nets
        # are ranked by |log NLC| (0.5 is as far from affine as 2).
        order = sorted(vals, key=lambda k: abs(math.log(vals[k].mean)))
        out.append(
            "Nonlinearity coefficient of the trained nets (1 = affine): "
            + ", ".join(f"{k} {vals[k]}" for k in order)
            + f"; the most linear is {order[0]}, the most nonlinear {order[-1]}."
        )
        below = [k for k in order if vals[k].mean < 0.99]
        if below:
            out.append(
                f"Below 1 ({', '.join(below)}): the outputs vary more across the points than "
                "the slopes at the points account for: the net is flat near the data and steep "
                "between (as a trained classifier can be); like a value above 1, it means the "
                "net is not affine over the data."
            )
    table = Table(["model", "NLC", "mean unit NLC", "max unit NLC"], rows,
                  "Nonlinearity coefficient (Philipp & Carbonell 2018).")  # fmt: skip
    return out, [table]


# --------------------------------------------------------------------------- runs, provenance


def first_line(text: str | None, limit: int = 200) -> str:
    """The first line of ``text``, cut to ``limit`` characters with an ellipsis."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def runs_table(study: StudyData) -> Table:
    rows = [
        [r.id, r.status, num(r.duration_s) + " s" if r.duration_s is not None else "–", first_line(r.error)]
        for r in study.runs
    ]  # fmt: skip
    return Table(
        ["run", "status", "duration", "error"], rows, "Every run and experiment of the study."
    )


def skipped_table(study: StudyData) -> Table | None:
    rows = [[rid, kind, first_line(why, 500)] for rid, kind, why in study.skipped()]
    return Table(["run", "analysis", "reason skipped"], rows) if rows else None


def runs_findings(study: StudyData) -> list[str]:
    total = len(study.runs)
    by: dict[str, int] = defaultdict(int)
    for r in study.runs:
        by[r.status] += 1
    out = [
        f"{total} runs and experiments: "
        + ", ".join(f"{v} {k}" for k, v in sorted(by.items()))
        + "."
    ]
    dur = [r.duration_s for r in study.runs if r.duration_s is not None]
    if dur:
        out.append(f"Total compute time {sum(dur) / 60:.1f} min (sum over runs).")
    skipped = study.skipped()
    if skipped:
        out.append(
            f"{len(skipped)} {'analysis was' if len(skipped) == 1 else 'analyses were'} skipped "
            "(reasons below)."
        )
    return out


def provenance_table(study: StudyData) -> Table:
    prov = study.provenance
    seeds = sorted({r.seed for r in study.training if r.seed is not None})
    dur = [r.duration_s for r in study.runs if r.duration_s is not None]
    rows = [
        ["study", str(study.spec.get("name", "")) + (f" ({study.source})" if study.source else "")],
        ["skiplab", str(prov.get("skiplab", "–"))],
        ["git commit", str(prov.get("git_commit") or "not a git checkout")],
        ["torch", str(prov.get("torch", "–"))],
        ["python", str(prov.get("python", "–"))],
        ["platform", str(prov.get("platform", "–"))],
        [
            "device",
            "; ".join(study.devices)
            or str(prov.get("device") or "auto (cuda if available, else cpu)"),
        ],
        ["seeds", ", ".join(map(str, seeds)) or "–"],
        ["compute time", f"{sum(dur) / 60:.1f} min over {len(dur)} runs" if dur else "–"],
    ]
    if study.session_s:
        rows.append(["last session (wall clock)", f"{study.session_s / 60:.1f} min"])
    return Table(["", ""], rows)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def sessions_table(study: StudyData) -> Table | None:
    """One row per session of the study (the first, then each resume), when there was more
    than one: the provenance table above shows the first session's."""
    sessions = study.sessions
    if len(sessions) < 2:
        return None
    rows = []
    for i, s in enumerate(sessions, 1):
        prov = s.get("provenance") or {}
        device = "; ".join(s.get("devices") or []) or str(prov.get("device") or "–")
        jobs = f"{s.get('jobs', 0)} of {s.get('todo', '?')}"
        rows.append([str(i), str(s.get("started") or "–"), _duration(s.get("duration_s")), jobs,
                     str(s.get("status") or "–"), str(prov.get("skiplab", "–")),
                     str(prov.get("git_commit") or "–")[:12], device])  # fmt: skip
    return Table(
        ["session", "started", "duration", "jobs done", "ended", "skiplab", "git commit", "device"],
        rows,
        "Each time the study was run or resumed (ended 'running': the process was killed).",
    )
