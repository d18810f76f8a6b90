"""Benchmark subsets by metadata column (training/benchmark_groups.py)."""

from __future__ import annotations

import pytest

from fringelive.training.benchmark_groups import MAX_CATEGORIES, GroupBy, groups_of, parse_group_by


def test_bins_and_categories() -> None:
    rows = [{"pixel_size_nm": p, "material": m} for p, m in
            [(0.015, "Au"), (0.02, "Ag"), (0.025, "Au"), (0.03, "Pt"), (0.041, "Au"), ("", "Au")]]
    bins = groups_of(rows, parse_group_by("pixel_size_nm=0.02,0.03"))
    assert bins == {"pixel_size_nm<0.02": [0], "pixel_size_nm=0.02..0.03": [1, 2], "pixel_size_nm>=0.03": [3, 4]}
    assert groups_of(rows, parse_group_by("material")) == {"material=Au": [0, 2, 4, 5], "material=Ag": [1],
                                                           "material=Pt": [3]}


@pytest.mark.parametrize("text, match", [("pixel_size_nm=0.03,0.02", "increasing"), ("px=a,b", "numbers"),
                                         ("bad column=1", "column name"), ("=1", "column name")])
def test_bad_group_by_names_the_value(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_group_by(text)


def test_missing_column_text_values_and_too_many_categories() -> None:
    with pytest.raises(ValueError, match="'dose' is in no sample"):
        groups_of([{"a": 1}], GroupBy("dose"))
    with pytest.raises(ValueError, match="sample 1 holds 'x'"):
        groups_of([{"dose": 1}, {"dose": "x"}], GroupBy("dose", (2.0,)))
    with pytest.raises(ValueError, match="give bin edges"):
        groups_of([{"dose": float(i)} for i in range(MAX_CATEGORIES + 1)], GroupBy("dose"))
