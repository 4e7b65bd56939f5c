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
    # Start-up chatter that is nobody's to act on: each process says what it serves in one
    # line of its own (listener, router, worker, web); these libraries repeat it at INFO.
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    connection = logging.getLogger("kombu.connection")
    if not any(isinstance(f, _NoHostnameNotice) for f in connection.filters):
        connection.addFilter(_NoHostnameNotice())


#: Loggers kept at WARNING or above (alembic's plugin list, Celery's "Connected"/"ready",
#: uvicorn's "Started server process", "Waiting for application startup", ...; highdicom's
#: "copy attributes of module ..." seven times for every SR and GSPS built).
_QUIET = (
    "alembic.runtime.plugins",
    "alembic.runtime.migration",
    "celery.apps.worker",
    "celery.worker.consumer.connection",
    "highdicom",
    "uvicorn.error",
)


class _NoHostnameNotice(logging.Filter):
    """Drops kombu's "No hostname was supplied" warning: the embedded filesystem broker has no
    host by design, so the warning tells the user nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


def kv(**context: object) -> str:
    """Render context as ``key=value`` pairs for a log line."""
    return " ".join(
        f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in context.items()
    )
