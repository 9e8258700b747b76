"""The study report: report.html (self-contained) and report.md, written from study.db."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..study.store import Store
from ..train.checkpoint import atomic_write_text


def write_report(store: Store, out_dir: str | Path) -> Path:
    """Render report.html and report.md from the store; returns the HTML path."""
    out_dir = Path(out_dir)
    spec = store.meta("spec", {})
    rows = "".join(
        f"<tr><td>{html.escape(r['id'])}</td><td>{r['status']}</td><td>{html.escape(json.dumps(r['metrics']))}</td></tr>"
        for r in store.runs()
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(spec.get('name', 'study'))}</title></head><body><h1>{html.escape(spec.get('name', 'study'))}</h1><table>{rows}</table></body></html>"
    atomic_write_text(out_dir / "report.html", page)
    atomic_write_text(out_dir / "report.md", f"# {spec.get('name', 'study')}\n")
    return out_dir / "report.html"
