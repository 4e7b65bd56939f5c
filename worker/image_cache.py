"""Where a worker reads a study's images: the local archive, else a bounded WADO-RS cache.

A GPU worker on another machine has the database but not the listener's disk. For each image
:func:`localize` keeps the archive path when the file is there (the listener's machine, or a
shared volume) and otherwise reads the instance from the archive service
(``RADDRAFT_ARCHIVE_URL``, WADO-RS, PS3.18 10.4) into ``data_dir/cache/images/<SOP>.dcm``.
The cache is bounded by ``RADDRAFT_IMAGE_CACHE_MB``: after each fetch the least recently used
files (by modification time, touched on every use) go until the total fits again; the files of
the study being read are never evicted while it is being read. Archived instances never change,
so a cached file never goes stale.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import dicom_listener
import peers
from raddraft.logging import kv
from raddraft.settings import Settings
from worker.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

_lock = threading.Lock()  # one eviction at a time per process


def localize(
    settings: Settings, images: Sequence[dicom_listener.ArchivedImage], study_uid: str
) -> list[dicom_listener.ArchivedImage]:
    """``images`` with paths this process can read; fetches the missing ones over WADO-RS.

    Raises :class:`TransientError` when the archive service is down (the job retries) and
    :class:`PermanentError` when an image is nowhere to be had.
    """
    local = []
    fetched = False
    for image in images:
        if image.path.exists():
            local.append(image)
            continue
        fetched = True
        local.append(dataclasses.replace(image, path=_cached(settings, image, study_uid)))
    if fetched:
        bound = settings.image_cache_mb * 1024 * 1024
        evict(settings.image_cache_dir, bound, keep={image.path for image in local})
    return local


def _cached(settings: Settings, image: dicom_listener.ArchivedImage, study_uid: str) -> Path:
    path = settings.image_cache_dir / f"{image.sop_instance_uid}.dcm"
    if path.exists():
        os.utime(path)  # recently used: last to be evicted
        return path
    if not settings.archive_url:
        raise PermanentError(
            f"image {image.sop_instance_uid} is not in this process's archive and "
            "RADDRAFT_ARCHIVE_URL is not set"
        )
    try:
        data = peers.retrieve_instance(
            settings.archive_url,
            study_uid,
            image.series_instance_uid,
            image.sop_instance_uid,
            token=settings.archive_token,
        )
    except peers.WadoTransientError as error:
        raise TransientError(str(error)) from error
    except peers.WadoPermanentError as error:
        raise PermanentError(str(error)) from error
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a concurrent reader sees the whole file or none
    log.info("image fetched over WADO-RS %s", kv(sop=image.sop_instance_uid, bytes=len(data)))
    return path


def evict(root: Path, max_bytes: int, *, keep: frozenset[Path] | set[Path] = frozenset()) -> int:
    """Remove least recently used files until ``root`` holds at most ``max_bytes``; returns
    how many went. Files in ``keep`` (the study being read) stay even if over the bound."""
    with _lock:
        files = []
        for entry in root.glob("*.dcm"):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in files)
        removed = 0
        for _mtime, size, entry in sorted(files):
            if total <= max_bytes:
                break
            if entry in keep:
                continue
            entry.unlink(missing_ok=True)
            total -= size
            removed += 1
        if removed:
            log.info("image cache evicted %s", kv(files=removed, bytes_left=total))
        return removed
