"""The worker's own table: studies it fetched from PACS as priors.

A prior fetched by C-MOVE arrives through the listener like any study and, once complete, gets
a draft job of its own. Drafting an old, already reported study would send the RIS a
preliminary report for it, so the draft task skips studies listed here.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from raddraft.db import Base, utcnow


class RetrievedPrior(Base):
    __tablename__ = "retrieved_priors"

    study_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    for_study_version_pk: Mapped[int] = mapped_column()
    source: Mapped[str] = mapped_column(String(100))  # AET@host:port of the PACS
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
