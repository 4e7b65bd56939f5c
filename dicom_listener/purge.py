"""Taking a study's instances out of the archive: the listener's half of retention.

Which studies may go is decided elsewhere (the policy needs the reports and exports, which the
listener does not know); it arrives here as a callback that is asked again *inside* the purge's
transaction, so a draft job or an instance that appeared since the policy looked stops the
purge. Order: in one transaction the callback agrees, the study's instance rows go, an
``ingest_events`` row ``purged`` is written and the caller's own record (the audit) is added;
after the commit the files are removed and their folders synced. A crash between the two
leaves files no row points at (harmless; the next purge of the study does not see them, an
operator may delete them), never a row that points at nothing.

The study, its versions and its patient stay: reports reference them, and the medico-legal
record (reports, versions, audit) is never purged. An instance received again later opens a
new version like any other late arrival.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from dicom_listener.archive import fsync_dir
from dicom_listener.tables import (
    IngestEvent,
    IngestEventKind,
    Instance,
    Series,
    Study,
    StudyVersion,
    VersionState,
)
from raddraft.db import session_scope
from raddraft.logging import kv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    """What a purge took (or, in a dry run, would take) out of the archive."""

    study_instance_uid: str
    instances: int
    bytes: int
    paths: tuple[str, ...]  # relative to the archive directory


#: Asked inside the purge's transaction: may the study go now? (the retention policy)
StillPurgeable = Callable[[Session, int], bool]
#: Adds the caller's record of the purge to the same transaction (the audit).
RecordPurge = Callable[[Session, Purged], None]


def archived(session: Session, study_pk: int) -> Purged:
    """What the archive holds of the study now."""
    study = session.get_one(Study, study_pk)
    rows = session.execute(
        select(Instance.path, Instance.size_bytes)
        .join(Series, Instance.series_pk == Series.id)
        .where(Series.study_pk == study_pk)
    ).all()
    return Purged(
        study.study_instance_uid,
        len(rows),
        sum(int(size) for _, size in rows),
        tuple(str(path) for path, _ in rows),
    )


def purge_study(
    engine: Engine,
    archive_dir: Path,
    study_pk: int,
    *,
    still_purgeable: StillPurgeable,
    record: RecordPurge,
) -> Purged | None:
    """Remove the study's instances (rows, then files); None when the policy now says keep
    or nothing is archived."""
    with session_scope(engine) as session:
        if session.scalar(
            select(StudyVersion.id).where(
                StudyVersion.study_pk == study_pk, StudyVersion.state == VersionState.open
            )
        ):
            return None  # still receiving: never purge under an arriving study
        if not still_purgeable(session, study_pk):
            return None
        taken = archived(session, study_pk)
        if not taken.instances:
            return None
        series = select(Series.id).where(Series.study_pk == study_pk)
        session.execute(
            delete(Instance)
            .where(Instance.series_pk.in_(series))
            .execution_options(synchronize_session=False)
        )
        session.add(
            IngestEvent(
                kind=IngestEventKind.purged.value,
                study_instance_uid=taken.study_instance_uid,
                size_bytes=taken.bytes,
                detail={"instances": taken.instances},
            )
        )
        record(session, taken)
    _remove_files(archive_dir, taken.paths)
    log.info(
        "study purged from the archive %s",
        kv(study=taken.study_instance_uid, instances=taken.instances, bytes=taken.bytes),
    )
    return taken


def _remove_files(archive_dir: Path, paths: tuple[str, ...]) -> None:
    folders: set[Path] = set()
    for relative in paths:
        path = archive_dir / relative
        try:
            path.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove a purged file %s", kv(path=relative))
            continue
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        for directory in (folder, folder.parent):
            if directory == archive_dir or not directory.exists():
                continue
            try:
                os.rmdir(directory)  # only when empty
            except OSError:
                continue
        if folder.parent.exists():
            fsync_dir(folder.parent)
