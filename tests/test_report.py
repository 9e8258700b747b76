"""The study report: built from a store filled by the real analyses on tiny models, checked
for self-containedness, findings computed from the stored numbers, the Markdown twin, and
rendered in headless Chromium."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from skiplab import analysis as A
from skiplab.models import create_model
from skiplab.report import write_report
from skiplab.report.findings import big
from skiplab.study.store import Store

MODELS = ("plain-8", "resnet-8", "preact-resnet-8")
SEEDS = (0, 1)


def _record(group: str, name: str, seed: int, label: str = "", options: dict | None = None) -> dict:
    return {
        "group": group, "model": {"name": name, "options": options or {}, "label": label}, "data": "digits",
        "data_options": {}, "seed": seed, "recipe": {"preset": "quick", "epochs": 2}, "analyses_init": [],
        "analyses_trained": [], "analysis_options": {}, "subset": None, "label": label or name,
    }  # fmt: skip


def _analyses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> list:
    model.eval()
    out: list[tuple[str, str, dict[str, Any], str]] = []

    def add(phase: str, kind: str, fn: Any) -> None:
        try:
            res = fn()
        except ValueError as err:  # e.g. path gradients of a plain net: recorded as skipped
            out.append((phase, kind, {"skipped": str(err)}, f"skipped: {err}"))
            return
        out.append((phase, kind, res.to_dict(), res.summary()))

    add("init", "paths", lambda: A.path_spectrum(model, x[:1]))
    add("init", "gradflow", lambda: A.gradient_flow(model, x, y))
    add("trained", "gradflow", lambda: A.gradient_flow(model, x, y))
    add("trained", "pathgrad", lambda: A.path_gradients(model, x[:8], y[:8], seed=seed, samples=2))
    add("trained", "lesion", lambda: A.lesion(model, (x, y), seed=seed, draws=2))
    add("trained", "nlc", lambda: A.nonlinearity_coefficient(model, x[:8]))
    add(
        "trained",
        "landscape",
        lambda: A.loss_landscape(model, (x[:16], y[:16]), seed=seed, dims=2, steps=3),
    )
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    store = Store(folder)
    spec = {
        "name": "tiny-why-skip", "description": "A tiny study for the report test.", "seeds": list(SEEDS),
        "reproduces": "He et al. 2015, Table 6",
        "report": {"published": [
            {"label": "resnet-8", "metric": "test_error", "value": 8.75, "source": "He et al. 2015, Table 6"},
            {"label": "resnet-110", "metric": "test_error", "value": 6.43, "source": "He et al. 2015, Table 6"},
        ]},
    }  # fmt: skip
    store.set_meta("spec", spec)
    store.set_meta("provenance", {"skiplab": "0.1.0", "git_commit": "abc123", "device": "cpu"})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    for seed in SEEDS:
        for i, name in enumerate(MODELS):
            torch.manual_seed(seed)
            model = create_model(name, in_channels=1, num_classes=10)
            # plain-8 ends with the highest train loss, so the degradation sentence has a known answer
            loss = 2.0 - 0.5 * i - 0.01 * seed
            history = [{"epoch": e, "train_loss": loss + 0.5 / e, "test_acc": 0.5 + 0.1 * e + 0.01 * seed}
                       for e in (1, 2)]  # fmt: skip
            rid = f"degradation/{name}/digits/s{seed}"
            store.add_run(rid, "run", _record("degradation", name, seed))
            store.finish(rid, "finished", metrics=history[-1], history=history,
                         results=_analyses(model, x, y, seed), duration_s=1.5)  # fmt: skip
    store.add_run("degradation/plain-14/digits/s0", "run", _record("degradation", "plain-14", 0))
    store.finish("degradation/plain-14/digits/s0", "failed",
                 error="RuntimeError: boom in the test\nTraceback (most recent call last): ...", duration_s=0.2)  # fmt: skip
    unet = create_model("unet", depth=2, base_width=4).eval()
    spectra = {
        label: A.path_spectrum(m, torch.randn(1, 1, 16, 16)).to_dict()
        for label, m in (("resnet-8", create_model("resnet-8", in_channels=1).eval()),
                         ("preact-resnet-8", create_model("preact-resnet-8", in_channels=1).eval()), ("unet", unet))
    }  # fmt: skip
    store.add_run("experiment/spectra", "experiment", {"name": "spectra", "kind": "paths", "models": [],
                                                        "input": None, "options": {}})  # fmt: skip
    store.finish(
        "experiment/spectra", "finished", results=[("experiment", "paths", {"models": spectra}, "")]
    )
    sh = A.shattered_gradients(depths=[4, 6], inits=1, width=16)
    store.add_run("experiment/shattered", "experiment", {"name": "shattered", "kind": "shattered",
                                                          "models": [], "input": None, "options": {}})  # fmt: skip
    store.finish(
        "experiment/shattered", "finished", results=[("experiment", "shattered", sh.to_dict(), "")]
    )
    ident = A.identity_task(depths=[4], steps=10, log_every=5, eval_points=32)
    store.add_run("experiment/identity", "experiment", {"name": "identity", "kind": "identity",
                                                         "models": [], "input": None, "options": {}})  # fmt: skip
    store.finish(
        "experiment/identity", "finished", results=[("experiment", "identity", ident.to_dict(), "")]
    )
    write_report(store, folder)
    store.close()
    return folder


def _stored(folder: Path, run_id: str, phase: str, kind: str) -> dict:
    store = Store(folder)
    try:
        return next(
            r["result"] for r in store.results(run_id) if (r["phase"], r["kind"]) == (phase, kind)
        )
    finally:
        store.close()


def test_html_is_self_contained(study: Path) -> None:
    page = (study / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs, "expected embedded figures and a table of contents"
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [r[:40] for r in refs]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count("data:image/png;base64,") >= 8


def test_findings_come_from_the_numbers(study: Path) -> None:
    page = (study / "report.html").read_text()
    spectra = _stored(study, "experiment/spectra", "experiment", "paths")["models"]
    r, p = spectra["resnet-8"], spectra["preact-resnet-8"]
    assert f"The shortest path in resnet-8 crosses {r['min']} nonlinearities" in page
    assert f"in preact-resnet-8, {p['min']}" in page
    assert big(int(r["total"])) in page
    levels = [str(lv["min"]) for lv in spectra["unet"]["levels"]]
    assert (
        f"In unet the paths through the long skips cross {', '.join(levels)} nonlinearities" in page
    )
    # the plain net was given the highest train loss: the residual nets beat it at depth 8
    assert "At depth 8 the residual nets reach a lower train loss than plain-8" in page
    assert "±" in page  # two seeds: mean ± std
    nlc = _stored(study, "degradation/resnet-8/digits/s0", "trained", "nlc")["value"]
    assert f"{nlc:.3g}" in page or "resnet-8" in page
    # published vs measured, with a label that was not run
    assert "Published vs measured" in page and "not run" in page and "8.75" in page
    # failed run and skipped analyses are shown
    assert "RuntimeError: boom in the test" in page
    assert "is a plain net" in page
    assert "abc123" in page and "Provenance" in page


def test_markdown_twin(study: Path) -> None:
    md = (study / "report.md").read_text()
    figs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(figs) >= 8
    for f in figs:
        png = study / f
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "The shortest path in resnet-8 crosses" in md
    assert not list((study / "figures").glob("*.tmp"))


def test_partial_store_never_crashes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_run("g/resnet-8/digits/s0", "run", _record("g", "resnet-8", 0))
    store.finish("g/resnet-8/digits/s0", "failed", error="ValueError: bad", duration_s=None)
    store.add_run("g/resnet-8/digits/s1", "run", _record("g", "resnet-8", 1))  # still pending
    store.add_run("g/plain-8/digits/s0", "run", _record("g", "plain-8", 0))
    store.finish("g/plain-8/digits/s0", "finished", metrics={"train_loss": 1.0}, history=[],
                 results=[("trained", "landscape", {"dims": 2, "values": "garbage"}, "")])  # fmt: skip
    path = write_report(store, tmp_path)
    page = path.read_text()
    assert "ValueError: bad" in page and "pending" in page
    assert (tmp_path / "report.md").is_file()


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (CI installs it: apt-get install chromium)"
)
def test_renders_in_chromium(study: Path, tmp_path: Path) -> None:
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0"]  # fmt: skip
    url = (study / "report.html").as_uri()
    shot = tmp_path / "report.png"
    run = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 50_000, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Is there a path without a nonlinearity?" in dom.stdout
    bad = [line for line in dom.stderr.splitlines() + run.stderr.splitlines()
           if "CONSOLE" in line or "Uncaught" in line or "net::ERR" in line]  # fmt: skip
    assert not bad, bad


def test_pathgrad_findings_read_a_max_length_split() -> None:
    """A split with max_length=K: the report counts paths over all U units and leaves the
    remainder row (all lengths > K at once) out of the per-length shares."""
    from skiplab.report.findings import gradient_share, path_counts, pathgrad_findings

    torch.manual_seed(0)
    model = create_model("resnet-20", in_channels=1, num_classes=10)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    full = A.path_gradients(model, x, y, samples=0).to_dict()
    cut = A.path_gradients(model, x, y, samples=0, max_length=3).to_dict()
    assert path_counts(cut) == path_counts(full) == [int(c) for c in full["counts"]]
    assert len(gradient_share(cut)) == 4  # rows 0..3, not the remainder
    text, _ = pathgrad_findings({"full": [full], "cut": [cut]})
    assert sum("(9 units, 512 paths)" in t for t in text) == 2


def test_degradation_findings_weigh_the_spread_over_seeds() -> None:
    """Plain-vs-residual and shallow-vs-deep comparisons are called only when the gap is
    larger than the spread over seeds (and 10%); otherwise the report says so."""
    from skiplab.report.findings import RunData, Stat, _degradation

    def run(label: str) -> RunData:
        return RunData(id=label, kind="run", status="finished", group="g", label=label,
                       model=label, options={}, data="digits", seed=0, metrics={}, history=[],
                       error=None, duration_s=1.0)  # fmt: skip

    runs = [run(x) for x in ("plain-8", "plain-20", "resnet-8", "resnet-20")]
    clear = {"plain-8": Stat(0.5, 0.01, 2), "plain-20": Stat(1.0, 0.01, 2),
             "resnet-8": Stat(0.3, 0.01, 2), "resnet-20": Stat(0.2, 0.01, 2)}  # fmt: skip
    text = " ".join(_degradation(runs, clear))
    assert "The deeper plain net trains worse" in text
    assert "At depth 20 the residual nets reach a lower train loss than plain-20" in text
    noisy = {"plain-8": Stat(0.5, 0.3, 2), "plain-20": Stat(0.6, 0.3, 2),
             "resnet-8": Stat(0.45, 0.3, 2), "resnet-20": Stat(0.55, 0.3, 2)}  # fmt: skip
    text = " ".join(_degradation(runs, noisy))
    assert "slightly worse" in text and "no clear degradation" in text
    assert "degradation problem" not in text and "as He et al. 2015 report" not in text
    assert "At depth 20 resnet-20 and plain-20 train to losses within the spread" in text
    higher = {**clear, "resnet-20": Stat(1.5, 0.01, 2)}
    assert "at depth 20 resnet-20 reaches a higher train loss than plain-20" in " ".join(
        _degradation(runs, higher)
    )


def test_log_count_axis_shows_single_paths_on_the_floor() -> None:
    import matplotlib.pyplot as plt

    from skiplab.report.figures import _log_count_axis

    fig, ax = plt.subplots()
    ax.plot([4, 9, 14], [0.0, 0.0, 0.0])  # one path per level: log10(1) = 0
    ax.axvline(0)  # not data: its y runs over the axes
    _log_count_axis(ax)
    assert ax.get_ylim() == (-0.3, 1.0)
    ax.plot([1, 2], [0.0, 30.0])
    _log_count_axis(ax)
    assert ax.get_ylim()[1] == pytest.approx(30 * 1.08 + 0.1)
    plt.close(fig)


def test_nlc_findings_rank_by_distance_from_affine() -> None:
    from skiplab.report.findings import nlc_findings

    by_label = {
        "flat": [{"value": 0.5, "per_unit": []}],
        "near": [{"value": 1.05, "per_unit": [{"name": "u", "nlc": 1.0}]}],
        "far": [{"value": 3.0, "per_unit": []}],
    }
    text, tables = nlc_findings(by_label)
    # |log 0.5| = 0.69 < |log 3| = 1.1: "far" is the most nonlinear, "near" the most linear,
    # although 0.5 is the smallest value.
    assert "the most linear is near, the most nonlinear far" in text[0]
    assert text[0].index("near 1.05") < text[0].index("flat 0.5") < text[0].index("far 3")
    assert text[1].startswith("Below 1 (flat)")
    assert len(tables[0].rows) == 3
    text, _ = nlc_findings({"a": [{"value": 1.2, "per_unit": []}]})
    assert len(text) == 1  # nothing below 1: no such sentence


def test_lesion_findings_compare_each_seed_with_its_own_intact_net() -> None:
    from skiplab.report.findings import lesion_findings

    def res(base: float, singles: list[float], metric: str = "accuracy") -> dict:
        return {"metric": metric, "baseline": base, "random_k": [],
                "single": [{"name": f"u{i}", "metric": m} for i, m in enumerate(singles)]}  # fmt: skip

    # Seeds far apart: seed 0's deletions against the mean intact accuracy (0.7) would look
    # like a gain; against its own (0.9) they cost 5.6%, and seed 1's 6%.
    text, tables = lesion_findings(
        {"net": [res(0.9, [0.85, 0.88, 0.2]), res(0.5, [0.45, 0.48, 0.47])]}, {}
    )
    assert "worst 0.2, u2" in text[0]
    assert text[1] == (
        "net tolerates single deletions (5.78% median relative drop), as Veit et al. 2016 "
        "report for ResNets."
    )
    assert tables[0].rows[0][3] == "0.66 ± 0.27"  # median per seed: 0.85 and 0.47
    # A loss: higher is worse.
    text, _ = lesion_findings({"net": [res(0.3, [0.35, 0.6, 0.9], "loss")]}, {})
    assert "worst 0.9, u2" in text[0]
    assert "raises its loss by 100% (median)" in text[1]
    text, _ = lesion_findings({"net": [res(0.3, [0.2, 0.25, 0.3], "loss")]}, {})
    assert "does not raise the loss of net (median change -16.7%)" in text[1]


def test_pathgrad_findings_average_the_seeds() -> None:
    from skiplab.report.findings import pathgrad_findings

    def res(share: list[float]) -> dict:
        return {"units": ["a", "b", "c", "d"], "norm_share": share, "grad_norm": 1.0}

    # Seed 0 peaks at length 0, seed 1 at length 2; their mean (0.275, 0.45, 0.275) at 1.
    seeds = [res([0.5, 0.45, 0.05, 0.0, 0.0]), res([0.05, 0.45, 0.5, 0.0, 0.0])]
    text, tables = pathgrad_findings({"net": seeds})
    assert "the largest share comes from length 1" in text[0]
    assert tables[0].rows[0][3] == "1"
    text, _ = pathgrad_findings({"net": seeds[:1]})
    assert "the largest share comes from length 0" in text[0]


def test_lesion_figure_averages_the_seeds() -> None:
    from skiplab.report.figures import _mean_std, lesion_figure
    from skiplab.report.findings import seed_columns, stat

    # the sample std over seeds (n - 1), as in the tables and the learning curves
    means, stds = _mean_std(seed_columns([[1.0, 0.0], [3.0, 0.0]]))
    assert means == [2.0, 0.0] and stds == pytest.approx([2**0.5, 0.0])
    assert _mean_std([(5.0,)]) == ([5.0], [0.0])  # one seed: no band
    # the tables' statistics: a seed without a finite value is left out, as there
    col = [1.0, float("nan"), 3.0, None]
    means, stds = _mean_std([col])
    assert (means[0], stds[0]) == (stat(col).mean, stat(col).std) == (2.0, pytest.approx(2**0.5))
    means, _ = _mean_std([[float("nan")]])
    assert math.isnan(means[0])  # none finite: a gap in the line

    def res(base: float, singles: list[float], k_mean: float) -> dict:
        return {"metric": "accuracy", "baseline": base,
                "single": [{"name": f"u{i}", "metric": m} for i, m in enumerate(singles)],
                "random_k": [{"k": 2, "mean": k_mean, "std": 0.1}]}  # fmt: skip

    fig = lesion_figure({"net": [res(0.9, [0.8, 0.7], 0.5), res(0.7, [0.6, 0.5], 0.3)]})
    assert fig.png.startswith(b"\x89PNG") and "mean over seeds" in fig.caption


def test_gradflow_figure_takes_the_geometric_mean_over_seeds() -> None:
    from skiplab.report.figures import _geometric_mean_norms, gradflow_figure

    seeds = [{"units": [{"grad_norm": 1e-4}, {"grad_norm": 2.0}]},
             {"units": [{"grad_norm": 1e-2}, {"grad_norm": None}]}]  # fmt: skip
    g = _geometric_mean_norms(seeds)
    assert g[0] == pytest.approx(1e-3) and math.isnan(g[1])
    fig = gradflow_figure({"init": {"net": seeds}})
    assert fig.png.startswith(b"\x89PNG") and "geometric mean over seeds" in fig.caption


def _spectrum(levels: list[tuple[int, int]]) -> dict:
    """A U-Net spectrum with one (paths, min) pair per long-skip level, top first."""
    lvls = [{"name": f"level {i}", "total": n, "min": m if n else None, "max": m if n else None,
             "counts": {str(m): n} if n else {}} for i, (n, m) in enumerate(levels)]  # fmt: skip
    return {"total": 1 + sum(n for n, _ in levels), "min": 4, "max": 17, "mean": 10.0,
            "has_linear_path": False, "counts": {"4": 1}, "levels": lvls}  # fmt: skip


def test_unet_level_findings_name_the_open_skips() -> None:
    """With the top skip switched off, the fewest nonlinearities are not 'through the top
    skip': the finding names the levels whose skips are open."""
    from skiplab.report.findings import paths_findings

    text, _ = paths_findings({"all": _spectrum([(1, 4), (1, 9), (1, 14)]),
                              "top-off": _spectrum([(0, 0), (1, 9), (1, 14)])})  # fmt: skip
    (all_open,) = [t for t in text if t.startswith("In all ")]
    (top_off,) = [t for t in text if t.startswith("In top-off ")]
    assert "cross 4, 9, 14 nonlinearities, top level first" in all_open
    assert all_open.endswith("with the fewest through the top skip.")
    assert "cross 9, 14 nonlinearities, levels 1 and 2 (0 = top)" in top_off
    assert "top skip" not in top_off and "the highest open skip (level 1)" in top_off


def test_gradflow_findings_tell_apart_residual_nets_that_disagree() -> None:
    """first/last ratio of 1 is perfectly even: resnet (2x) is more even than plain (0.01x),
    preact (1000x) is not; the finding must not lump them together."""
    from skiplab.report.findings import gradflow_findings

    def res(ratio: float) -> dict:
        return {"units": [{"grad_norm": ratio}, {"grad_norm": 1.0}], "layers": []}

    by = {"plain-20": [res(0.01)], "resnet-20": [res(2.0)], "preact-resnet-20": [res(1000.0)]}
    text, _ = gradflow_findings({"init": by})
    assert ("At initialisation, the gradient flows more evenly through resnet-20 than through "
            "the plain net, but not through preact-resnet-20") in text[1]  # fmt: skip
    text, _ = gradflow_findings({"init": {**by, "preact-resnet-20": [res(0.5)]}})
    assert "with less decay or growth than in the plain net" in text[1]
    text, _ = gradflow_findings({"init": {**by, "resnet-20": [res(1e-4)]}})
    assert "does not flow more evenly through the residual nets" in text[1]


def test_runs_tables_mark_cut_text_and_skip_empty_tables() -> None:
    from skiplab.report.findings import first_line, lesion_findings

    assert first_line("a" * 300) == "a" * 199 + "…" and first_line("short\nmore") == "short"
    assert first_line("x" * 400, 500) == "x" * 400
    text, tables = lesion_findings({}, {"plain-8": "a plain net; use blocks=[...]"})
    assert text == ["plain-8: no lesion (a plain net)."] and tables == []


def _captured(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib Figures that ``figures.render`` draws, kept for inspection."""
    from skiplab.report import figures as F

    figs: list = []
    render = F.render

    def spy(name, caption, draw, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        def keep(fig):  # noqa: ANN001, ANN202
            draw(fig)
            figs.append(fig)

        return render(name, caption, keep, *args, **kwargs)

    monkeypatch.setattr(F, "render", spy)
    return figs


def test_figures_keep_long_labels_inside_and_label_both_landscape_axes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skiplab.report import figures as F

    figs = _captured(monkeypatch)
    nlc = {k: [{"value": 1.1, "per_unit": [{"nlc": 1.0}]}]
           for k in ("plain-20", "preact-resnet-110 (B, zero-init)")}  # fmt: skip
    F.nlc_figure(nlc)
    fig = figs[-1]
    renderer = fig.canvas.get_renderer()
    assert all(t.get_window_extent(renderer).x0 >= 0 for t in fig.axes[0].get_yticklabels())
    land = {"dims": 2, "coords": [-1.0, 0.0, 1.0], "values": [[2.0, 1.5, 2.0], [1.5, 1.0, 1.5],
            [2.0, 1.5, 2.0]], "center_loss": 1.0}  # fmt: skip
    F.landscape_figure({"plain-8": [land], "resnet-8": [land]})
    axes = [ax for ax in figs[-1].axes if ax.get_title()]  # not the colour bars
    assert [ax.get_xlabel() for ax in axes] == ["direction 1"] * 2
    assert axes[0].get_ylabel() == "direction 2"
    spectra = {f"m{i}": {"counts": {"1": 1, str(i + 2): 2}} for i in range(11)}
    F.spectra_figure(spectra)
    lines = figs[-1].axes[0].get_lines()
    styles = {
        (line.get_color(), line.get_linestyle()) for line in lines if line.get_label() in spectra
    }
    assert len(styles) == 11  # the palette has 10 colours: the 11th line differs in style


def test_learning_curves_legend_beside_the_panels_and_plain_log_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skiplab.report import figures as F

    figs = _captured(monkeypatch)
    hist = [[{"epoch": e, "train_loss": 4.0 / 5**e, "test_acc": 0.2 * e} for e in (1, 2, 3)]]
    F.curves_figure("d", "degradation", {f"m{i}": hist for i in range(6)}, "test_acc", "acc")
    fig = figs[-1]
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes)
    assert legend.get_window_extent(renderer).x0 >= right  # on no curve
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(minor=True) if t.get_text()]
    labels += [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert labels and not any("times" in t or "^" in t for t in labels), labels


def test_shattered_rows_constant_in_every_init_are_reported_not_compared() -> None:
    """A net whose gradient is constant in every init has no autocorrelation (null in
    JSON): the findings say so and compare nothing with it, and the figure leaves it out."""
    import json

    from torch import nn

    from skiplab.report.figures import shattered_figure
    from skiplab.report.findings import shattered_findings

    def linear(depth: int) -> nn.Module:
        return nn.Sequential(*[nn.Linear(1 if i == 0 else 4, 4) for i in range(depth)],
                             nn.Linear(4, 1))  # fmt: skip

    res = A.shattered_gradients({"plain": linear, "resmlp": "resmlp"}, [4], inits=2, width=8,
                                points=32, max_lag=3)  # fmt: skip
    data = json.loads(json.dumps(res.to_dict()))  # as the report reads it: NaN -> null
    plain = next(r for r in data["rows"] if r["arch"] == "plain")
    assert plain["lag1_mean"] is None and plain["constant_inits"] == 2
    text, tables = shattered_findings(data)
    assert any("plain at depth 4 (2 of 2)" in t for t in text), text
    assert not any("Balduzzi" in t for t in text)  # no comparison with a missing value
    assert tables[0].rows[0][2] == "–"
    assert shattered_figure(data).png  # drawn without the missing points


def test_path_gradient_finding_names_the_measure() -> None:
    """90% of what: Veit's total gradient magnitude where paths were sampled, else the
    summed part norms; never 'the gradient magnitude', which the parts do not add up to."""
    from skiplab.report.findings import pathgrad_findings

    model = create_model("resnet-8", width=0.25).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for samples, measure in ((0, "of the summed gradient norms"), (8, "of Veit et al.'s total")):
        res = A.path_gradients(model, x, y, samples=samples).to_dict()
        text, _ = pathgrad_findings({"resnet-8": [res]})
        assert measure in text[0] and "of the gradient magnitude" not in text[0]
