"""Analyses that work on any nn.Module (see DESIGN.md, Analyses)."""

from .blocks import UnitView, find_units, is_unit

__all__ = ["UnitView", "find_units", "is_unit"]
