"""The shared helpers of skiplab.io."""

from __future__ import annotations

from skiplab.io import one_line


def test_one_line_collapses_whitespace_of_any_text():
    err = RuntimeError("shape mismatch:\n  mat1 is [2, 64]\tand\r\n mat2 is [32, 10]  ")
    assert one_line(err) == "shape mismatch: mat1 is [2, 64] and mat2 is [32, 10]"
    assert one_line("  a  b ") == "a b"


def test_one_line_cuts_to_the_limit_with_an_ellipsis():
    text = "word " * 100
    cut = one_line(text, 40)
    assert len(cut) == 40 and cut.endswith("...") and "\n" not in cut
    assert cut[:-3] == one_line(text)[:37]
    assert one_line("short", 40) == "short"  # nothing added when it fits
    assert one_line("x" * 40, 40) == "x" * 40  # exactly the limit: kept whole


def test_differences_walks_mappings_and_lists_to_the_leaves():
    from skiplab.io import MISSING, differences

    old = {"recipe": {"epochs": 1, "lr": 0.1}, "models": ["a", "b"], "seed": 0, "gone": 1}
    new = {"recipe": {"epochs": 2, "lr": 0.1}, "models": ["a", "c"], "seed": 0, "added": 2}
    assert list(differences(old, new)) == [
        ("recipe.epochs", 1, 2),
        ("models[1]", "b", "c"),
        ("gone", 1, MISSING),
        ("added", MISSING, 2),
    ]
    assert list(differences(old, old)) == []
    assert list(differences([1, 2], [1, 2, 3])) == [("", [1, 2], [1, 2, 3])]  # other lengths
    assert list(differences(1, 1.5)) == [("", 1, 1.5)]
    assert repr(MISSING) == "(not set)"
