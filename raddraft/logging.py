"""Logging for every RadDraft process: one line per event, ``key=value`` context after the text."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    """Send RadDraft's logs to stderr once; later calls only change the level."""
    root = logging.getLogger()
    if not any(getattr(h, "_raddraft", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._raddraft = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; keep the association summaries only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))


def kv(**context: object) -> str:
    """Render context as ``key=value`` pairs for a log line."""
    return " ".join(
        f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in context.items()
    )
