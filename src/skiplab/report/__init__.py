"""The study report: report.html (self-contained: CSS inline, figures as data URIs, no
scripts) and report.md (figures as PNG files under figures/), written from study.db.

Sections are chosen by what the store holds, not by the study's name: one per 'paths'
experiment family and per run analysis present (init:paths, gradflow, pathgrad, lesion,
landscape, nlc), one per training group, one per identity or shattered experiment; a
section with no data is left out. Any study renders, the default one and custom ones.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_text
from ..study.store import Store
from . import figures as F
from . import findings as T
from .findings import StudyData, Table, load_study

log = logging.getLogger(__name__)


@dataclass
class Section:
    id: str
    title: str
    question: str
    findings: list[str] = field(default_factory=list)
    figures: list[F.FigureImage] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    note: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _safe(build: Callable[[], Section | None], name: str) -> Section | None:
    """A section whose data are malformed is left out (and logged), never fatal."""
    try:
        return build()
    except Exception as err:  # noqa: BLE001 - one bad result must not cost the whole report
        log.warning("report section %s left out: %s: %s", name, type(err).__name__, err)
        return None


# --------------------------------------------------------------------------- sections


def paths_section(study: StudyData) -> Section | None:
    spectra = T.spectra(study)
    if not spectra:
        return None
    text, tables = T.paths_findings(spectra)
    figs = [F.spectra_figure(spectra)]
    for label, sp in spectra.items():
        if sp.get("levels"):
            figs.append(F.levels_figure(label, sp, _slug(label)))
            break  # one U-Net is enough to show the levels; the table lists them all
    return Section(
        "paths", "Is there a path without a nonlinearity?",
        "Every skip of the original ResNet is followed by a ReLU. Is there any path from input "
        "to output that crosses no nonlinearity, and how many does the shortest one cross?",
        text, figs, tables,
    )  # fmt: skip


def group_sections(study: StudyData) -> list[Section]:
    out = []
    for name, runs in study.groups().items():
        gspec = study.group_spec(name)
        metric = T.primary_metric(runs)
        text, tables = T.training_findings(study, runs)
        curves: dict[str, list] = {}
        for r in runs:
            if r.history:
                curves.setdefault(r.label, []).append(r.history)
        figs = []
        if curves:
            figs.append(
                F.curves_figure(
                    _slug(name), name, curves, metric, T.METRIC_NAMES.get(metric, metric)
                )
            )
        question = str(gspec.get("description") or "")
        title = f"Training: {name}"
        if T.is_unet_group(runs):
            utext, utables = T.unet_findings(study, runs)
            text = utext + text
            tables = utables + tables
            title = f"U-Net long skips: {name}"
            question = question or "What do the long skips of a U-Net contribute?"
        elif any(T.family_depth(r) for r in runs):
            question = (question + " " if question else "") + (
                "Do deeper plain nets train worse than shallower ones and than ResNets of the "
                "same depth, as He et al. 2015 found?"
            )
        data = ", ".join(dict.fromkeys(r.data for r in runs))
        out.append(Section(f"group-{_slug(name)}", title, question, text, figs, tables,
                           note=f"Data: {data}; {len(runs)} runs."))  # fmt: skip
    return out


def gradflow_section(study: StudyData) -> Section | None:
    by_phase = {p: d for p in ("init", "trained") if (d := study.with_result(p, "gradflow"))}
    if not by_phase:
        return None
    text, tables = T.gradflow_findings(by_phase)
    return Section(
        "gradflow", "Does the gradient flow better?",
        "How large is the loss gradient at each unit, from the output back to the input, at "
        "initialisation and after training (He et al. 2015, Fig. 7)?",
        text, [F.gradflow_figure(by_phase)], tables,
    )  # fmt: skip


def pathgrad_section(study: StudyData) -> Section | None:
    by = study.with_result("trained", "pathgrad") or study.with_result("init", "pathgrad")
    if not by:
        return None
    text, tables = T.pathgrad_findings(by)
    return Section(
        "pathgrad", "Along which paths does the gradient flow?",
        "A net of n residual units has 2^n paths, C(n, k) of them through k branches. Which "
        "path lengths carry the gradient (Veit et al. 2016)?",
        text, [F.pathgrad_figure(by)], tables,
    )  # fmt: skip


def experiment_sections(study: StudyData, kind: str) -> list[Section]:
    out = []
    for exp in study.experiments:
        if exp.group != kind:
            continue
        res = exp.result("experiment", kind)
        if res is None:
            continue
        if kind == "identity":
            text, tables = T.identity_findings(res)
            out.append(Section(
                f"identity-{_slug(exp.label)}", "Do skips make the identity easier to learn?",
                "How fast and how well do plain and residual nets of growing depth learn f(x) = x "
                "and a random linear map, on signed inputs?",
                text, [F.identity_figure(res)], tables,
            ))  # fmt: skip
        elif kind == "shattered":
            text, tables = T.shattered_findings(res)
            out.append(Section(
                f"shattered-{_slug(exp.label)}", "Do gradients shatter without skips?",
                "As depth grows, does the gradient of a plain net with respect to its input "
                "decorrelate into white noise while a residual net's stays smooth (Balduzzi et al. 2017)?",
                text, [F.shattered_figure(res)], tables,
            ))  # fmt: skip
    return out


def lesion_section(study: StudyData) -> Section | None:
    by = study.with_result("trained", "lesion")
    skipped = {
        r.label: str(res["skipped"])
        for r in study.training
        if isinstance(res := r.results.get(("trained", "lesion")), dict) and "skipped" in res
        and not str(res["skipped"]).startswith("lesion runs only on")
    }  # fmt: skip
    if not by and not skipped:
        return None
    text, tables = T.lesion_findings(by, skipped)
    return Section(
        "lesion", "What happens when a unit is deleted?",
        "Deleting one layer of a plain net breaks it; is a ResNet robust to deleting a residual "
        "unit, or several (Veit et al. 2016)?",
        text, [F.lesion_figure(by)] if by else [], tables,
    )  # fmt: skip


def landscape_section(study: StudyData) -> Section | None:
    land = study.with_result("trained", "landscape")
    nlc = study.with_result("trained", "nlc")
    if not land and not nlc:
        return None
    text: list[str] = []
    tables: list[Table] = []
    figs = []
    if land:
        t, tb = T.landscape_findings(land)
        text += t
        tables += tb
        figs.append(F.landscape_figure(land))
    if nlc:
        t, tb = T.nlc_findings(nlc)
        text += t
        tables += tb
        figs.append(F.nlc_figure(nlc))
    return Section(
        "landscape", "How rough is the loss surface, how nonlinear the net?",
        "What does the loss look like around the trained weights (Li et al. 2018), and how "
        "nonlinear is each trained net (Philipp & Carbonell 2018)?",
        text, figs, tables,
    )  # fmt: skip


def published_section(study: StudyData) -> Section | None:
    text, table = T.published_table(study)
    if table is None:
        return None
    reproduces = str(study.spec.get("reproduces") or "")
    return Section(
        "published", "Published vs measured",
        f"This study reproduces {reproduces}." if reproduces else "Numbers from the papers beside ours.",
        text, [], [table],
    )  # fmt: skip


def runs_section(study: StudyData) -> Section:
    tables = [T.runs_table(study)]
    sk = T.skipped_table(study)
    if sk is not None:
        tables.append(sk)
    return Section("runs", "Runs", "Which runs finished, failed or diverged, and which analyses were skipped?",
                   T.runs_findings(study), [], tables)  # fmt: skip


def build_sections(study: StudyData) -> list[Section]:
    """All sections the study's data support, in reading order."""
    builders: list[tuple[str, Callable[[], Section | list[Section] | None]]] = [
        ("published", lambda: published_section(study)),
        ("paths", lambda: paths_section(study)),
        ("groups", lambda: group_sections(study)),
        ("gradflow", lambda: gradflow_section(study)),
        ("pathgrad", lambda: pathgrad_section(study)),
        ("identity", lambda: experiment_sections(study, "identity")),
        ("lesion", lambda: lesion_section(study)),
        ("shattered", lambda: experiment_sections(study, "shattered")),
        ("landscape", lambda: landscape_section(study)),
    ]
    out: list[Section] = []
    for name, build in builders:
        got = _safe(build, name)  # type: ignore[arg-type]
        if isinstance(got, list):
            out.extend(got)
        elif got is not None:
            out.append(got)
    out.append(runs_section(study))
    seen: set[str] = set()
    for s in out:  # figure file names must be unique under figures/
        for fig in s.figures:
            base, i = fig.name, 2
            while fig.name in seen:
                fig.name, i = f"{base}-{i}", i + 1
            seen.add(fig.name)
    return out


def summary(sections: list[Section]) -> list[tuple[str, str, str]]:
    """The key answers: (section id, title, first finding) per section with findings."""
    return [(s.id, s.title, s.findings[0]) for s in sections if s.findings and s.id != "runs"]


# --------------------------------------------------------------------------- writing


def write_report(store: Store, out_dir: str | Path) -> Path:
    """Render report.html and report.md from the store; returns the HTML path."""
    from .html import render_html, render_markdown

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    study = load_study(store)
    sections = build_sections(study)
    context = {
        "study": study,
        "sections": sections,
        "summary": summary(sections),
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }
    for s in sections:
        for fig in s.figures:
            atomic_write_bytes(out_dir / "figures" / f"{fig.name}.png", fig.png)
    atomic_write_text(out_dir / "report.md", render_markdown(context))
    path = out_dir / "report.html"
    atomic_write_text(path, render_html(context))
    log.info("report written to %s in %.1f s", path, time.perf_counter() - t0)
    return path
