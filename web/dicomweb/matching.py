"""QIDO-RS attribute matching (PS3.4 C.2.2.2, PS3.18 8.3.4.1) without regular expressions.

A key is matched in SQL wherever the archive's tables hold it: :func:`condition` turns a
pattern into a ``WHERE`` term (single value, list of UIDs, date/time range, wildcard). A
wildcard becomes ``LIKE`` with ``%``, ``_`` and the escape character escaped and runs of ``*``
collapsed to one ``%``, so the database's matcher (PostgreSQL's and SQLite's both give up
early on a failed ``%`` tail rather than backtrack through every split) does the work with no
lock on the web process's interpreter. The few objects that are not rows (RadDraft's own SR and
GSPS of one study) are matched by :func:`matches`, a two-pointer wildcard matcher bounded by
``len(value) * len(pattern)`` steps.

Case (PS3.4 C.2.2.2.1, C.2.2.2.4): matching is case-sensitive, except for PN values, which
RadDraft matches case-insensitively (as most archives do; the standard leaves PN case to the
implementation). SQLite's ``LIKE`` ignores ASCII case, so there a case-sensitive wildcard is a
``GLOB`` (which has the same ``*`` and ``?``; only ``[`` needs escaping).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from sqlalchemy import ColumnElement, String, and_, cast, false, func
from sqlalchemy.orm import QueryableAttribute

from raddraft.numbers import decimal

#: The most UIDs one list-of-UID key may carry (PS3.4 C.2.2.2.2); the list is a bind
#: parameter each, so it is bounded by the query, never by the archive.
MAX_UIDS = 1000
#: The longest pattern accepted: DICOM values are at most 324 characters (PN), so a longer
#: pattern matches nothing a table holds and only costs time.
MAX_PATTERN = 1024
ESCAPE = "\\"


class PatternError(ValueError):
    """A key value the service will not match (too long, too many UIDs): HTTP 400."""


def uid_list(pattern: str) -> list[str]:
    """The UIDs of a list-of-UID key (``\\`` separated in DICOM, ``,`` in PS3.18 8.3.4.1)."""
    uids = [u.strip() for u in pattern.replace(",", "\\").split("\\") if u.strip()]
    if len(uids) > MAX_UIDS:
        raise PatternError(f"at most {MAX_UIDS} UIDs in one key, not {len(uids)}")
    return uids


def collapse_stars(pattern: str) -> str:
    """``a***b`` -> ``a*b``: a run of ``*`` matches what one does."""
    out: list[str] = []
    for char in pattern:
        if not (char == "*" and out and out[-1] == "*"):
            out.append(char)
    return "".join(out)


def like_pattern(pattern: str) -> str:
    """The SQL ``LIKE`` pattern (escape ``\\``) of a DICOM wildcard pattern."""
    out: list[str] = []
    for char in collapse_stars(pattern):
        if char in (ESCAPE, "%", "_"):
            out.append(ESCAPE + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def glob_pattern(pattern: str) -> str:
    """The SQLite ``GLOB`` pattern of a DICOM wildcard pattern (``[`` is its only other
    special character outside a class; ``[[]`` is a literal ``[``)."""
    return collapse_stars(pattern).replace("[", "[[]")


def _check(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"a key value is at most {MAX_PATTERN} characters")


def is_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def condition(
    column: ColumnElement[Any] | QueryableAttribute[Any], keyword: str, pattern: str, dialect: str
) -> ColumnElement[bool] | None:
    """The ``WHERE`` term matching ``column`` (the stored value of ``keyword``) against a
    QIDO-RS key value; ``None`` for universal matching (an empty value only asks for the
    attribute, PS3.4 C.2.2.2.3)."""
    _check(pattern)
    if pattern == "":
        return None
    vr = dictionary_VR(keyword)
    if vr == "UI":
        return column.in_(uid_list(pattern))
    if vr in ("US", "UL", "SS", "SL"):  # Rows, Columns: numbers in the table
        number = decimal(pattern)
        return column == number if number is not None else false()
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        return _range(column, pattern)
    if is_wildcard(pattern):
        return _wildcard(column, pattern, fold=vr == "PN", dialect=dialect)
    if vr == "PN":
        return func.lower(column) == pattern.lower()
    return column == pattern


def _range(column: Any, pattern: str) -> ColumnElement[bool]:
    """Range matching (PS3.4 C.2.2.2.5): ``low-``, ``-high``, ``low-high``, inclusive; a
    shorter bound covers every value it is a prefix of (``-1200`` includes ``120030``)."""
    low, _, high = pattern.partition("-")
    terms = [column != ""]
    if low:
        terms.append(column >= low)
    if high:
        terms.append(column <= high + "9" * 32)
    return and_(*terms)


def _wildcard(column: Any, pattern: str, *, fold: bool, dialect: str) -> ColumnElement[bool]:
    text = cast(column, String)
    if fold:
        return func.lower(text).like(like_pattern(pattern.lower()), escape=ESCAPE)
    if dialect == "sqlite":
        return text.op("GLOB")(glob_pattern(pattern))
    return text.like(like_pattern(pattern), escape=ESCAPE)


# -- the same rules over values in hand ----------------------------------------------------------


def wildcard_match(value: str, pattern: str) -> bool:
    """Whether ``value`` matches a ``*``/``?`` pattern: two pointers and the last ``*`` to
    fall back to, so at most ``len(value) * len(pattern)`` steps and no recursion."""
    v = p = 0
    star = -1
    resume = 0
    while v < len(value):
        if p < len(pattern) and pattern[p] in ("?", value[v]):
            v += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, v
            p += 1
        elif star >= 0:
            p = star + 1
            resume += 1
            v = resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _in_range(value: str, pattern: str) -> bool:
    low, _, high = pattern.partition("-")
    if not value:
        return False
    return (not low or value >= low) and (not high or value <= high + "9" * 32)


def matches(keyword: str, value: Any, pattern: str) -> bool:
    """Whether ``value`` (a string or a list of strings) matches ``pattern`` for ``keyword``,
    by the rules :func:`condition` gives the database."""
    _check(pattern)
    if pattern == "":
        return True
    values: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    texts = ["" if v is None else str(v) for v in values]
    vr = dictionary_VR(keyword)
    if vr == "UI":
        wanted = set(uid_list(pattern))
        return any(v in wanted for v in texts)
    if vr in ("DA", "TM", "DT") and "-" in pattern:
        return any(_in_range(v, pattern) for v in texts)
    if vr == "PN":
        texts = [v.lower() for v in texts]
        pattern = pattern.lower()
    if is_wildcard(pattern):
        simple = collapse_stars(pattern)
        return any(wildcard_match(v, simple) for v in texts)
    return any(v == pattern for v in texts)
