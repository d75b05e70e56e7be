"""The text table of ``gridstream query``: alignment, escaping, truncation; pure, no engine."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from sinks.table_format import format_table, render_value


def test_columns_are_aligned_and_numbers_right_aligned() -> None:
    out = format_table(
        ["entity_id", "kind", "p50"],
        [("m-1", "meter", 1.5), ("feeder-17", "feeder", 12.25), ("tx", None, None)],
    )
    assert out.splitlines() == [
        "entity_id  kind      p50",
        "---------  ------  -----",
        "m-1        meter     1.5",
        "feeder-17  feeder  12.25",
        "tx         NULL     NULL",
        "(3 rows)",
    ]


def test_long_values_are_cut_and_control_characters_escaped() -> None:
    out = format_table(["error"], [("line one\nline\ttwo " + "x" * 50,)], max_width=20)
    cell = out.splitlines()[2]
    assert len(cell) == 20
    assert cell.startswith("line one\\nline\\ttwo")
    assert cell.endswith("…")
    assert len(out.splitlines()) == 4  # the newline did not split the row


def test_values_render_for_analysts() -> None:
    assert render_value(datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)) == (
        "2024-06-10 06:13:20.123Z"
    )
    assert render_value(datetime(2024, 6, 10, 6, 13, 20, tzinfo=UTC)) == "2024-06-10 06:13:20Z"
    assert render_value(date(2024, 6, 10)) == "2024-06-10"
    assert render_value(b"\xff{raw") == "\\xff{raw"
    assert render_value(math.nan) == "nan"
    assert render_value(-math.inf) == "-inf"
    assert render_value(0.1) == "0.1"
    assert render_value(True) == "true"
    assert render_value({"hst": 0.5, "z": None}) == "{'hst': 0.5, 'z': NULL}"
    assert render_value(["a", 1]) == "['a', 1]"


def test_empty_results() -> None:
    assert format_table(["a", "bb"], []) == "a  bb\n-  --\n(0 rows)"
    assert format_table([], []) == "(0 rows)"
    assert format_table(["n"], [(1,)]).endswith("(1 row)")


def test_max_rows_cuts_the_listing_and_says_so() -> None:
    out = format_table(["n"], [(i,) for i in range(5)], max_rows=2)
    assert out.splitlines() == ["n", "-", "0", "1", "(5 rows, first 2 shown)"]
    assert format_table(["n"], [(1,)], max_rows=1).endswith("(1 row)")


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 values for 2 columns"):
        format_table(["a", "b"], [(1,)])
    with pytest.raises(ValueError, match="max_width"):
        format_table(["a"], [], max_width=2)
    with pytest.raises(ValueError, match="max_rows"):
        format_table(["a"], [], max_rows=-1)
