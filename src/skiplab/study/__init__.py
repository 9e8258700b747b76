"""Studies: a YAML grid of runs and analyses, executed resumably into an SQLite store."""

from .builtin import list_builtin
from .runner import run_study
from .spec import SpecError, StudySpec, load_spec, parse_spec
from .store import Store

__all__ = [
    "SpecError",
    "Store",
    "StudySpec",
    "list_builtin",
    "load_spec",
    "parse_spec",
    "run_study",
]
