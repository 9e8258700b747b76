"""Rendering: report.html from a Jinja2 template shipped in the package (CSS inline,
figures as data URIs, no scripts, nothing fetched), and report.md with the same content."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jinja2
import yaml

from .findings import Table, provenance_table, sessions_table


def _spec_text(spec: dict[str, Any]) -> str:
    try:
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)
    except yaml.YAMLError:
        return json.dumps(spec, indent=2, default=str)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files(__package__).joinpath("templates", name).read_text("utf-8")
        ),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_html(context: dict[str, Any]) -> str:
    study = context["study"]
    template = _environment().get_template("report.html.j2")
    return template.render(
        **context,
        title=str(study.spec.get("name") or "study"),
        description=str(study.spec.get("description") or ""),
        reproduces=str(study.spec.get("reproduces") or ""),
        provenance=provenance_table(study),
        sessions=sessions_table(study),
        spec_text=_spec_text(study.spec),
    )


# --------------------------------------------------------------------------- Markdown


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    lines = []
    if table.caption:
        lines.append(f"*{table.caption}*\n")
    headers = table.headers if any(table.headers) else ["", ""]
    lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def render_markdown(context: dict[str, Any]) -> str:
    study = context["study"]
    spec = study.spec
    out = [f"# {spec.get('name', 'study')}: skiplab report", ""]
    if spec.get("description"):
        out += [str(spec["description"]).strip(), ""]
    if spec.get("reproduces"):
        out += [f"Reproduces: {spec['reproduces']}.", ""]
    if context["summary"]:
        out += ["## Key answers", ""]
        out += [f"- **{title}**: {text}" for _id, title, text in context["summary"]]
        out.append("")
    out += ["## Contents", ""]
    out += [f"- [{s.title}](#{s.id})" for s in context["sections"]]
    out += ["- [Provenance](#provenance)", ""]
    for s in context["sections"]:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", "", f"*{s.question}*", ""]
        if s.note:
            out += [s.note, ""]
        if s.findings:
            out += [f"- {f}" for f in s.findings] + [""]
        for fig in s.figures:
            out += [f"![{fig.caption}](figures/{fig.name}.png)", "", f"*{fig.caption}*", ""]
        for t in s.tables:
            out += [md_table(t), ""]
    out += [
        '<a id="provenance"></a>',
        "",
        "## Provenance",
        "",
        md_table(provenance_table(study)),
        "",
    ]
    sessions = sessions_table(study)
    if sessions:
        out += [md_table(sessions), ""]
    out += ["<details><summary>Study spec</summary>", "", "```yaml", _spec_text(spec).rstrip(), "```", "",
            "</details>", ""]  # fmt: skip
    out.append(f"Generated {context['generated']} by skiplab.")
    return "\n".join(out) + "\n"
