"""The archive on disk: durable placement of received files, quarantine, disk watermark.

Layout (see docs/architecture.md)::

    archive/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   instances exactly as received
    archive/.tmp/                                       in-flight writes, emptied at start
    quarantine/<time>_<name>.dcm + .txt                 unreadable datasets and why

A file reaches its archive name only by ``rename`` after ``fsync``, and the directory entry is
synced too, so after a crash a name in the archive always holds a complete file (POSIX rename is
atomic; ext4/xfs need the directory fsync for the new name itself to survive a power cut).
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from raddraft.logging import kv

log = logging.getLogger(__name__)

TMP_DIR_NAME = ".tmp"
SPOOL_SUFFIX = ".part"
# While a spool file grows, ask the kernel to start writing back every this many bytes, so
# the fsync before the C-STORE response has little left to flush (see Spool.write).
WRITEBACK_STEP = 4 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable (new names, removals)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(path: Path, stop: Path) -> None:
    """``mkdir -p path`` that syncs each parent whose entry it created, up to ``stop``."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != stop and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # another association made it first; that one syncs the parent
        fsync_dir(directory.parent)


class Spool:
    """A file being received, written straight into ``archive/.tmp``.

    It stands in for the ``NamedTemporaryFile`` pynetdicom writes a C-STORE data set into
    (``STORE_RECV_CHUNKED_DATASET``): each P-DATA fragment goes to disk as it arrives instead of
    growing a 10 MB buffer, and ``posix_fadvise(DONTNEED)`` on the written range starts the
    kernel's write-back early (Linux initiates asynchronous writeout for dirty pages in that
    range), so receiving the next fragment overlaps the disk write and the final ``fsync`` is
    short. Only the methods pynetdicom calls are provided.
    """

    def __init__(self, directory: Path, limit: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.limit = limit  # bytes; beyond it the rest is dropped and ``error`` set
        self.fd, name = tempfile.mkstemp(suffix=SPOOL_SUFFIX, dir=directory)
        self.name = name
        self.path = Path(name)
        self.file = self  # pynetdicom calls ``spool.file.flush()``
        self.size = 0
        self._kicked = 0
        self.closed = False
        self.error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; a failed write (a full disk) is remembered, not raised.

        pynetdicom calls this inside its association reactor, where an exception would abort the
        association; the C-STORE handler reads :attr:`error` instead and answers 0xA700, so the
        sender hears "out of resources" and retries later.
        """
        if self.error is not None:
            return len(data)
        view = memoryview(data)
        if self.limit is not None and self.size + len(view) > self.limit:
            # Stop writing (the disk is not the sender's to fill) and answer 0xA700 at the end.
            self.error = OSError(errno.EFBIG, f"data set larger than the {self.limit} byte limit")
            os.ftruncate(self.fd, 0)
            return len(view)
        written = 0
        try:
            while written < len(view):
                written += os.write(self.fd, view[written:])
        except OSError as error:
            self.error = error
            return len(view)
        self.size += written
        if self.size - self._kicked >= WRITEBACK_STEP and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(
                self.fd, self._kicked, self.size - self._kicked, os.POSIX_FADV_DONTNEED
            )
            self._kicked = self.size
        return written

    def flush(self) -> None:
        """Writes go straight to the descriptor; nothing is buffered in Python."""

    def fileno(self) -> int:
        return self.fd

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class DiskState:
    used_percent: float
    free_mb: float
    full: bool
    why: str


class Archive:
    """The archive and quarantine folders of one data directory."""

    def __init__(self, root: Path, quarantine_dir: Path) -> None:
        self.root = root
        self.tmp = root / TMP_DIR_NAME
        self.quarantine_dir = quarantine_dir

    def prepare(self) -> int:
        """Create the folders and remove what a crash left in ``.tmp``; returns files removed.

        Nothing in ``.tmp`` was ever acknowledged (a response is sent only after the rename),
        so removing it loses nothing the sender was told is safe.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        if self.tmp.exists():
            for leftover in self.tmp.iterdir():
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed += 1
        self.tmp.mkdir(exist_ok=True)
        if removed:
            log.warning("removed unfinished writes from a previous run %s", kv(files=removed))
        return removed

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def new_spool(self) -> Spool:
        return Spool(self.tmp)

    def spool_bytes(self, *chunks: bytes) -> Path:
        """Write ``chunks`` to a new spool file in ``.tmp`` and return its path (not synced)."""
        with self.new_spool() as spool:
            for chunk in chunks:
                spool.write(chunk)
        return spool.path

    def place(self, spool: Path, relative: str) -> bool:
        """fsync ``spool``, rename it to ``relative``, fsync the folder; True if it replaced a file.

        The caller decides what a replaced file means (a re-send of an unrecorded instance).
        """
        fd = os.open(spool, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.root / relative
        make_dirs_durably(target.parent, self.root)
        existed = target.exists()
        os.replace(spool, target)
        fsync_dir(target.parent)
        return existed

    def remove(self, relative: str) -> None:
        """Take an instance back out (its database row could not be written)."""
        target = self.root / relative
        target.unlink(missing_ok=True)
        fsync_dir(target.parent)

    def disk_state(self, watermark_percent: float, min_free_mb: float) -> DiskState:
        """Is the archive's file system above the watermark or below the free-space floor?"""
        usage = shutil.disk_usage(self.root)
        used_percent = 100.0 * usage.used / usage.total if usage.total else 100.0
        free_mb = usage.free / (1024 * 1024)
        if used_percent > watermark_percent:
            why = f"disk {used_percent:.1f}% used, above the {watermark_percent:g}% watermark"
            return DiskState(used_percent, free_mb, True, why)
        if free_mb < min_free_mb:
            why = f"disk has {free_mb:.0f} MB free, below the {min_free_mb:g} MB minimum"
            return DiskState(used_percent, free_mb, True, why)
        return DiskState(used_percent, free_mb, False, "")

    def quarantine(self, spool: Path, reason: str, *, name: str = "", context: str = "") -> Path:
        """Move ``spool`` into quarantine with a ``.txt`` beside it saying why; returns the path."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:80]
        base = f"{stamp}_{safe or uuid.uuid4().hex[:12]}"
        target = self.quarantine_dir / f"{base}.dcm"
        note = self.quarantine_dir / f"{base}.txt"
        note.write_text(f"{reason}\n{context}\n".rstrip() + "\n", encoding="utf-8")
        if spool.parent.stat().st_dev == self.quarantine_dir.stat().st_dev:
            os.replace(spool, target)
        else:
            shutil.copyfile(spool, target)
            spool.unlink(missing_ok=True)
        return target
