"""Whole numbers read from text that came from outside: query strings, headers, resource ids,
DICOM IS values.

``str.isdigit`` alone is not a check for ``int``: it accepts "²" and other Unicode digits that
``int`` refuses, and ``int`` of thousands of digits raises, so either made a hostile request a
500. A number past a 32-bit SQL INTEGER made the database refuse the query, a 500 again.
"""

from __future__ import annotations

#: The largest value of a 32-bit SQL INTEGER, the type of every id column.
INTEGER_MAX = 2**31 - 1
#: Digits of a number compared with a 32-bit INTEGER column (at most 999,999,999).
INTEGER_DIGITS = 9
#: Digits of a DICOM IS value (PS3.5 6.2: 12 bytes, a sign included).
IS_DIGITS = 12


def decimal(text: str, *, max_digits: int = INTEGER_DIGITS, signed: bool = False) -> int | None:
    """``text`` as an int when it is ASCII decimal digits, at most ``max_digits`` of them (a
    leading ``-`` when ``signed``; spaces around it allowed, as DICOM pads IS values); else
    None."""
    value = text.strip()
    digits = value[1:] if signed and value.startswith("-") else value
    if not digits or len(digits) > max_digits or not (digits.isascii() and digits.isdigit()):
        return None
    return int(value)
