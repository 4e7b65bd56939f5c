"""Whole numbers from outside text (raddraft.numbers.decimal): what int() takes, bounded."""

from __future__ import annotations

import pytest

from raddraft.numbers import IS_DIGITS, decimal


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("007", {}, 7),
        ("999999999", {}, 999_999_999),
        ("1000000000", {}, None),  # past a 32-bit SQL INTEGER
        ("\u00b2", {}, None),  # a digit to str.isdigit, not to int
        ("\u0663", {}, None),  # an Arabic-Indic three: int takes it, SQL would not expect it
        ("9" * 5000, {}, None),  # past int()'s own limit on digits
        ("", {}, None),
        ("-", {"signed": True}, None),
        ("-12", {}, None),
        (" -12 ", {"signed": True, "max_digits": IS_DIGITS}, -12),
        ("+3", {"signed": True}, None),
    ],
)
def test_decimal(text: str, kwargs: dict[str, object], expected: int | None) -> None:
    assert decimal(text, **kwargs) == expected  # type: ignore[arg-type]
