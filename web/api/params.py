"""Typed request parameters the routes share: a row's id in a path, a number in a query.

Bounded to a 32-bit SQL INTEGER, the type of every id column: a larger number is answered 422
like any other malformed parameter, never handed to PostgreSQL, which refuses the whole query
("integer out of range", a 500).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from raddraft.numbers import INTEGER_MAX

#: A row's id in a path (``/reports/{report_id}``).
RowId = Annotated[int, Path(ge=0, le=INTEGER_MAX)]
#: A version number in a path: the same bound.
VersionNumber = RowId
#: An optional number in a query string (a priority, a version).
QueryNumber = Annotated[int | None, Query(ge=0, le=INTEGER_MAX)]
