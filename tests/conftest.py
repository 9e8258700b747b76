"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny nets: threads only add overhead on a shared 2-core machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def close_figures():
    """Results' ``.plot()`` opens pyplot figures; close them after each test."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a user's module into a fresh working directory (the CLI imports MODULE:FACTORY
    from there): ``user_module("mynet", SOURCE)`` returns the folder; the module is
    forgotten afterwards."""
    import sys

    names = []

    def write(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return tmp_path

    monkeypatch.chdir(tmp_path)
    yield write
    for name in names:
        sys.modules.pop(name, None)
