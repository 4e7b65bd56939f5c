"""Every RadDraft table, imported in one place so Alembic and tests see the whole schema."""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from raddraft.db import Base

# Each folder's table module; a folder that adds tables appends its module here.
TABLE_MODULES = (
    "raddraft.jobs",
    "dicom_listener.tables",
    "report_drafts.tables",
    "worker.tables",
)


def metadata() -> MetaData:
    """The metadata of all tables, after importing every module that declares them."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return Base.metadata
