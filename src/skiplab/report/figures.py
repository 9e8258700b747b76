"""The report's figures: matplotlib ``Figure`` objects (Agg, no pyplot state) rendered to PNG
bytes, embedded in the HTML as data URIs and written as files for the Markdown."""

from __future__ import annotations

import base64
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .findings import mean_share, path_counts, seed_columns, stat

DPI = 110
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563",
           "#db2777", "#65a30d", "#a16207")  # fmt: skip
STYLE = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


# Fixed margins (constrained layout costs a second full draw per figure).
MARGINS = {"left": 0.11, "right": 0.97, "bottom": 0.15, "top": 0.9, "wspace": 0.3, "hspace": 0.45}


@dataclass
class FigureImage:
    """One rendered figure: ``name`` is its file stem under figures/."""

    name: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def render(
    name: str,
    caption: str,
    draw: Callable[[Figure], None],
    size: tuple[float, float],
    margins: dict[str, float] | None = None,
) -> FigureImage:
    """Draw on a fresh Figure (no pyplot, so no global figure registry) and return its PNG;
    ``margins`` overrides ``MARGINS`` (room for long tick labels or a legend outside)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(fig)
        draw(fig)
        adjust = {**MARGINS, **(margins or {})}
        if fig.get_suptitle():
            adjust["top"] = 0.86
        fig.subplots_adjust(**adjust)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
    return FigureImage(name, caption, buf.getvalue())


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def linestyle(i: int) -> str:
    """Solid for the first round of the palette, then dashed, dotted: no two lines alike."""
    return ("-", "--", ":")[i // len(PALETTE) % 3]


def _label_margin(labels: list[str], width: float) -> float:
    """The left margin (fraction of a ``width``-inch figure) that fits the longest y tick
    label at the style's 9-point font (about 0.07 inch a character)."""
    return min(0.45, max(MARGINS["left"], (0.15 + 0.07 * max(map(len, labels), default=0)) / width))


def _log10(n: int) -> float:
    return math.log10(n) if n > 0 else float("nan")  # exact for ints of any size


def _log_count_axis(ax: Any) -> None:
    """y from just below 0 (one path) to at least 1 (ten paths): single paths sit on the
    floor of the plot, not on an axis zoomed to a few hundredths."""
    data = [line for line in ax.get_lines() if line.get_transform() == ax.transData]
    top = max((y for line in data for y in line.get_ydata() if math.isfinite(y)), default=0.0)
    ax.set_ylim(-0.3, max(1.0, top * 1.08 + 0.1))


# --------------------------------------------------------------------------- path spectra


def spectra_figure(spectra: dict[str, dict[str, Any]]) -> FigureImage:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for i, (label, sp) in enumerate(spectra.items()):
            counts = {int(k): int(v) for k, v in (sp.get("counts") or {}).items() if int(v)}
            ks = sorted(counts)
            ax.plot(ks, [_log10(counts[k]) for k in ks], marker="o", ms=3, lw=1.5,
                    color=color(i), ls=linestyle(i), label=label)  # fmt: skip
        ax.set_xlabel("nonlinearities on the path")
        ax.set_ylabel("log10(number of paths)")
        ax.set_title("Path spectra: how many paths cross how many nonlinearities")
        ax.axvline(0, color="0.5", lw=0.8, ls=":")
        _log_count_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if outside:  # many models: a legend inside would cover the curves
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(loc="best")

    outside = len(spectra) > 5
    width = 7.0 + (1.8 if outside else 0.0)
    return render(
        "path-spectra",
        "Path spectra (exact counts; log10 of the number of paths).",
        draw,
        (width, 3.6),
        {"right": 1 - 2.0 / width, "left": 0.8 / width} if outside else None,
    )


def levels_figure(label: str, sp: dict[str, Any], slug: str) -> FigureImage:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for i, lv in enumerate(sp.get("levels") or []):
            counts = {int(k): int(v) for k, v in (lv.get("counts") or {}).items() if int(v)}
            ks = sorted(counts)
            if ks:
                ax.plot(ks, [_log10(counts[k]) for k in ks], marker="o", ms=5, lw=1.5, color=color(i),
                        label=str(lv.get("name", i)))  # fmt: skip
        _log_count_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("nonlinearities on the path")
        ax.set_ylabel("log10(number of paths)")
        ax.set_title(f"{label}: paths through each long skip")
        ax.legend()

    return render(f"levels-{slug}", f"{label}: spectrum of the paths through each long skip (top level first).",
                  draw, (7.0, 3.0))  # fmt: skip


# --------------------------------------------------------------------------- training


def _minor_log_label(value: float, _pos: int) -> str:
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if lead in (2, 3, 5) else ""


def curves_figure(slug: str, title: str, curves: dict[str, list[list[dict[str, Any]]]], metric: str,
                  metric_name: str) -> FigureImage:  # fmt: skip
    """Learning curves: train loss and the test metric per epoch, mean over seeds (band: ±std)."""

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 2)
        for ax, key, name in (
            (axes[0], "train_loss", "train loss"),
            (axes[1], metric, metric_name),
        ):
            for i, (label, histories) in enumerate(curves.items()):
                epochs = sorted(
                    {int(h["epoch"]) for hist in histories for h in hist if h.get(key) is not None}
                )
                if not epochs:
                    continue
                means, stds = _mean_std([
                    [h[key] for hist in histories for h in hist
                     if int(h.get("epoch", -1)) == e and h.get(key) is not None]
                    for e in epochs
                ])  # fmt: skip
                ls = (
                    ":"
                    if label.startswith("plain")
                    else ("--" if label.startswith("resnet") else "-")
                )
                ax.plot(epochs, means, marker="o", ms=3, lw=1.5, ls=ls, color=color(i), label=label)
                if any(stds):
                    ax.fill_between(epochs, [m - s for m, s in zip(means, stds, strict=True)],
                                    [m + s for m, s in zip(means, stds, strict=True)], color=color(i), alpha=0.15)  # fmt: skip
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ys = [y for line in ax.get_lines() for y in line.get_ydata()]
            lo, hi = (min(ys), max(ys)) if ys else (0.0, 0.0)
            if key == "train_loss" and lo > 0 and hi / lo > 10:  # the data's range, not the axis's
                ax.set_yscale("log")
                # 0.5, not 5 x 10^-1; minor ticks labelled at 2, 3 and 5 only
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        # beside the panels, not on them: the curves fill both
        handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=10)

    return render(
        f"curves-{slug}",
        f"{title}: learning curves (mean over seeds; band ±1 std).",
        draw,
        (9.5, 3.3),
        margins={"left": 0.09, "right": 0.82},
    )


# --------------------------------------------------------------------------- gradient flow


def gradflow_figure(by_phase: dict[str, dict[str, list[dict[str, Any]]]]) -> FigureImage:
    phases = list(by_phase)

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(phases), squeeze=False)[0]
        for ax, phase in zip(axes, phases, strict=True):
            for i, (label, results) in enumerate(by_phase[phase].items()):
                g = _geometric_mean_norms(results)
                ax.plot(
                    range(1, len(g) + 1), g, marker="o", ms=2.5, lw=1.4, color=color(i), label=label
                )
            ax.set_yscale("log")
            ax.set_xlabel("unit (input → output)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("|dLoss / d unit output|")
            ax.set_title("at initialisation" if phase == "init" else "after training")
        axes[-1].legend(loc="best")

    return render("gradient-flow", "Gradient norm at each unit's output (geometric mean over seeds).",
                  draw, (4.0 * len(phases) + 0.5, 3.3))  # fmt: skip


def _geometric_mean_norms(results: list[dict[str, Any]]) -> list[float]:
    """Per unit, the geometric mean over seeds of the gradient norms (they span decades,
    and the axis is logarithmic); NaN where a seed has none."""
    out = []
    for col in seed_columns([[u.get("grad_norm") for u in r.get("units") or []] for r in results]):
        if any(v is None or not v > 0 for v in col):
            out.append(float("nan"))
        else:
            out.append(math.exp(statistics.fmean(math.log(v) for v in col)))
    return out


# --------------------------------------------------------------------------- path gradients


def pathgrad_figure(by_label: dict[str, list[dict[str, Any]]]) -> FigureImage:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for i, (label, results) in enumerate(by_label.items()):
            share = mean_share(results)  # over seeds
            counts = path_counts(results[0])
            if not share or not counts:
                continue
            u = len(counts) - 1
            ks = range(len(share))
            ax.plot(
                ks,
                share,
                marker="o",
                ms=3,
                lw=1.6,
                color=color(i),
                label=f"{label}: gradient share",
            )
            ax.plot(range(len(counts)), [c / 2**u for c in counts], lw=1.0, ls="--", color=color(i),
                    alpha=0.7, label=f"{label}: share of paths C({u},k)/2^{u}")  # fmt: skip
        ax.set_xlabel("path length k (residual branches passed)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share")
        ax.set_title("Which path lengths carry the gradient (Veit et al. 2016, Fig. 6)")
        ax.legend(loc="best")

    return render("path-gradients", "Share of the gradient by path length (solid: of Veit et al.'s total "
                  "gradient magnitude where paths were sampled, else of the summed part norms) against "
                  "the binomial share of paths of that length (dashed).", draw, (7.0, 3.6))  # fmt: skip


# --------------------------------------------------------------------------- identity


def identity_figure(res: dict[str, Any]) -> FigureImage:
    tasks = res.get("tasks") or ["identity"]
    stats = res.get("stats") or []

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        for ax, task in zip(axes, tasks, strict=True):
            for i, arch in enumerate(res.get("archs") or []):
                pts = sorted((s["depth"], s["final_loss_mean"], s.get("final_loss_std") or 0.0)
                             for s in stats if s["arch"] == arch and s["task"] == task)  # fmt: skip
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                                marker="o", ms=4, lw=1.5, capsize=2, color=color(i), label=arch)  # fmt: skip
            if res.get("threshold"):
                ax.axhline(res["threshold"], color="0.4", lw=0.8, ls=":", label="threshold")
            ax.set_yscale("log")
            ax.set_xlabel("depth")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("final loss (MSE per coordinate)")
            ax.set_title(f"f(x) = {'x' if task == 'identity' else 'Ax'} ({task})")
        axes[-1].legend(loc="best")

    return render("identity", "Final loss against depth, per architecture (lower is better).", draw,
                  (4.0 * len(tasks) + 0.5, 3.3))  # fmt: skip


# --------------------------------------------------------------------------- lesions


def lesion_figure(by_label: dict[str, list[dict[str, Any]]]) -> FigureImage:
    """Veit et al. 2016, Figs. 3-4, mean over seeds: the metric per deleted unit (band:
    ±1 std over seeds) and after k random deletions (bars: ±1 std over seeds and draws)."""

    def draw(fig: Figure) -> None:
        a1, a2 = fig.subplots(1, 2)
        for i, (label, results) in enumerate(by_label.items()):
            singles = [[s.get("metric") for s in r.get("single") or []] for r in results]
            singles = [x for x in singles if None not in x]
            mean, std = _mean_std(seed_columns(singles))
            if mean:
                units = range(1, len(mean) + 1)
                a1.plot(units, mean, marker="o", ms=2.5, lw=1.2, color=color(i), label=label)
                if any(std):  # several seeds
                    a1.fill_between(units, [m - d for m, d in zip(mean, std, strict=True)],
                                    [m + d for m, d in zip(mean, std, strict=True)],
                                    color=color(i), alpha=0.15, lw=0)  # fmt: skip
            base = [r["baseline"] for r in results if r.get("baseline") is not None]
            if base:
                a1.axhline(statistics.fmean(base), color=color(i), lw=0.8, ls=":")
            by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for r in results:
                for k in r.get("random_k") or []:
                    by_k[int(k["k"])].append(k)
            ks = sorted(by_k)
            means = [statistics.fmean(x["mean"] for x in by_k[k]) for k in ks]
            # total variance: within the draws of a seed, plus between the seeds' means
            errs = [
                math.sqrt(statistics.fmean((x.get("std") or 0.0) ** 2 for x in by_k[k])
                          + statistics.pvariance([x["mean"] for x in by_k[k]]))
                for k in ks
            ]  # fmt: skip
            a2.errorbar(ks, means, yerr=errs, marker="o", ms=3, lw=1.4, capsize=2, color=color(i),
                        label=label)  # fmt: skip
        metric = next(iter(by_label.values()))[0].get("metric", "metric")
        a1.set_xlabel("deleted unit")
        a1.xaxis.set_major_locator(MaxNLocator(integer=True))
        a2.xaxis.set_major_locator(MaxNLocator(integer=True))
        a1.set_ylabel(metric)
        a1.set_title("one unit deleted (dotted: intact)")
        a2.set_xlabel("units deleted at random (k)")
        a2.set_ylabel(metric)
        a2.set_title("k units deleted")
        a2.legend(loc="best")

    return render("lesions", "Lesions: the metric after deleting residual branches (Veit et al. 2016, "
                  "Figs. 3-4), mean over seeds; band and bars: ±1 std.", draw, (8.0, 3.3))  # fmt: skip


def _mean_std(columns: list[Any]) -> tuple[list[float], list[float]]:
    """Per column (one value per seed), the mean and sample std of the tables' ``stat``
    (0 for a single seed); NaN, a gap in the line, where no value is finite."""
    stats = [stat(list(c)) for c in columns]
    nan = float("nan")
    return [s.mean if s else nan for s in stats], [s.std if s else nan for s in stats]


# --------------------------------------------------------------------------- shattered


def shattered_figure(res: dict[str, Any]) -> FigureImage:
    rows = res.get("rows") or []
    depths = res.get("depths") or []
    x = res.get("x") or []

    def draw(fig: Figure) -> None:
        a1, a2 = fig.subplots(1, 2)
        for i, arch in enumerate(res.get("archs") or []):
            pts = sorted(  # a depth constant in every init has no autocorrelation (None)
                (r["depth"], r["lag1_mean"], r.get("lag1_std") or 0.0)
                for r in rows
                if r["arch"] == arch and r.get("lag1_mean") is not None
            )
            a1.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=4,
                        lw=1.5, capsize=2, color=color(i), label=arch)  # fmt: skip
            deep = next(
                (r for r in rows if r["arch"] == arch and depths and r["depth"] == max(depths)),
                None,
            )
            if deep and deep.get("gradients") and x:
                g = deep["gradients"][0]
                scale = max((abs(v) for v in g if v is not None), default=1.0) or 1.0
                a2.plot(
                    x[: len(g)],
                    [v / scale + 2.2 * i for v in g],
                    lw=0.9,
                    color=color(i),
                    label=arch,
                )
        a1.set_xlabel("depth")
        a1.set_ylabel("lag-1 autocorrelation of the gradient")
        a1.set_title("correlation of neighbouring gradients")
        a1.legend(loc="best")
        a2.set_xlabel("input x")
        a2.set_yticks([])
        a2.set_title(
            f"gradient dy/dx at depth {max(depths) if depths else '?'} (normalised, offset)"
        )

    return render("shattered", "Shattered gradients (Balduzzi et al. 2017): plain nets' gradients decorrelate with depth.",
                  draw, (8.0, 3.3))  # fmt: skip


# --------------------------------------------------------------------------- landscapes


def landscape_figure(by_label: dict[str, list[dict[str, Any]]]) -> FigureImage:
    items = [(k, v[0]) for k, v in by_label.items()]
    n = len(items)
    cols = min(n, 3)
    rows = math.ceil(n / cols)

    def draw(fig: Figure) -> None:
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for i, (ax, (label, res)) in enumerate(zip(axes, items, strict=False)):
            coords = res.get("coords") or []
            vals = res.get("values") or []
            if res.get("dims") == 2 and vals:
                z = [
                    [math.log10(max(v, 1e-12)) if v is not None else float("nan") for v in row]
                    for row in vals
                ]
                cs = ax.contourf(coords, coords, z, levels=14, cmap="viridis")
                ax.contour(coords, coords, z, levels=14, colors="white", linewidths=0.4, alpha=0.6)
                fig.colorbar(cs, ax=ax, shrink=0.85, label="log10 loss")
                ax.plot([0], [0], marker="*", color="red", ms=8)
                ax.set_aspect("equal")
                ax.grid(False)
                if i % cols == 0:  # once per row: beside a colourbar it would collide
                    ax.set_ylabel("direction 2")
            elif vals:
                ax.plot(coords, vals, marker="o", ms=3)
                ax.set_ylabel("loss")
            ax.set_title(label)
            ax.set_xlabel("direction 1")
        for ax in axes[n:]:
            ax.set_visible(False)

    return render("landscapes", "Loss landscapes around the trained weights (filter-normalised random directions, "
                  "Li et al. 2018; red star: trained model; first seed: each seed has its own directions).", draw, (3.6 * cols + 0.4, 3.2 * rows))  # fmt: skip


def nlc_figure(by_label: dict[str, list[dict[str, Any]]]) -> FigureImage:
    def draw(fig: Figure) -> None:
        a1, a2 = fig.subplots(1, 2, width_ratios=[1, 1.4])
        labels = list(by_label)
        vals = [[x.get("value") for x in by_label[k] if x.get("value") is not None] for k in labels]
        means = [sum(v) / len(v) if v else float("nan") for v in vals]
        a1.barh(range(len(labels)), means, color=[color(i) for i in range(len(labels))])
        for i, v in enumerate(vals):
            a1.plot(v, [i] * len(v), "k.", ms=4)
        a1.set_yticks(range(len(labels)), labels)
        a1.invert_yaxis()
        a1.axvline(1.0, color="0.3", lw=0.8, ls=":")
        a1.set_xlabel("NLC of the whole net (1 = affine)")
        for i, k in enumerate(labels):
            units = [u.get("nlc") for u in by_label[k][0].get("per_unit") or []]
            a2.plot(
                range(1, len(units) + 1), units, marker="o", ms=2.5, lw=1.2, color=color(i), label=k
            )
        a2.set_xlabel("unit")
        a2.set_ylabel("NLC of the unit")
        a2.legend(loc="best")

    return render(
        "nlc", "Nonlinearity coefficient of each trained net and of each unit.", draw, (8.0, 3.2),
        {"left": _label_margin(list(by_label), 8.0)},
    )  # fmt: skip
