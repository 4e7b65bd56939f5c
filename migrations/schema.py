"""Every RadDraft table, imported in one place so Alembic and the tests see the whole schema.

Each folder declares its own tables on :class:`raddraft.db.Base`; a folder that adds a table
module adds its import here. Only migrations (and tests) look at the whole schema at once.
"""

from __future__ import annotations

from sqlalchemy import MetaData

import dicom_listener.tables
import orders.tables
import raddraft.jobs
import report_drafts.tables
import worker.tables
from raddraft.db import Base

TABLE_MODULES = (
    raddraft.jobs,
    dicom_listener.tables,
    orders.tables,
    report_drafts.tables,
    worker.tables,
)


def metadata() -> MetaData:
    """The metadata of all of RadDraft's tables."""
    return Base.metadata
