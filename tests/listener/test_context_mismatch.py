"""A data set that does not match its presentation context is refused and quarantined, never
archived (issue 20, item 6; PS3.4 B.2.3, PS3.5 A.4, PS3.7 9.1.1.1, PS3.8 7.1.1.13).

The three mismatches of the issue, each sent byte for byte after its file meta (the file meta
names the context: DX, and the transfer syntax): a CT data set in a DX context (0xA900), an
implicit VR body in an explicit VR context and native pixels in a JPEG context (0xC000). DCMTK's
``dcmdump`` then reads every archived file without an error, and each quarantined one sits
beside a text saying why.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests import hostile
from tests.dicom_factory import CT_IMAGE, dataset_bytes, make_cxr
from tests.listener.conftest import instance_count
from tests.listener_process import DCMTK_BIN, ListenerProcess

DCMDUMP = DCMTK_BIN / "dcmdump"


def _body(*, implicit: bool = False, sop_class: str = "") -> tuple[bytes, str]:
    ds = make_cxr(None, rows=64, cols=64)
    if sop_class:
        ds.SOPClassUID = sop_class
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return dataset_bytes(ds, syntax), str(ds.SOPInstanceUID)


def dcmdump_errors(path: Path) -> str:
    """What dcmdump says is wrong with ``path`` ("" when it reads it cleanly)."""
    run = subprocess.run(
        [str(DCMDUMP), "-q", "+E", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in run.stderr.splitlines() if line.startswith(("E:", "F:"))]
    if run.returncode != 0 and not problems:
        problems = [f"exit {run.returncode}"]
    return "\n".join(problems)


def mismatches() -> list[tuple[str, bytes, int, str]]:
    """(name, Part 10 bytes whose meta names the context, status expected, reason's words)."""
    ct_body, ct_sop = _body(sop_class=CT_IMAGE)
    implicit_body, implicit_sop = _body(implicit=True)
    native_body, native_sop = _body()
    return [
        ("CT in a DX context", hostile.part10(ct_body, ct_sop), 0xA900, "does not match SOP"),
        (
            "implicit VR body in an explicit VR context",
            hostile.part10(implicit_body, implicit_sop, hostile.EXPLICIT),
            0xC000,
            "no explicit VR",
        ),
        (
            "native pixels in a JPEG context",
            hostile.part10(native_body, native_sop, hostile.JPEG_BASELINE),
            0xC000,
            "native Pixel Data",
        ),
    ]


@pytest.mark.skipif(not DCMDUMP.exists(), reason="DCMTK's dcmdump is not installed")
def test_mismatched_contexts_are_refused_quarantined_and_the_archive_reads_in_dcmtk(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    with ListenerProcess(tmp_path / "listener.log").start() as listener:
        for name, data, status, words in mismatches():
            assert hostile.send_part10(listener.port, data, tmp_path) == status, name
            reasons = [p.read_text() for p in settings.quarantine_dir.glob("*.txt")]
            assert any(words in r for r in reasons), (name, reasons)
        assert hostile.send_part10(listener.port, hostile.valid(64, 64), tmp_path) == 0
        assert hostile.echo(listener.port)
    assert instance_count(engine) == 1
    assert len(list(settings.quarantine_dir.glob("*.dcm"))) == 3
    archived = [p for p in settings.archive_dir.rglob("*.dcm") if ".tmp" not in p.parts]
    assert len(archived) == 1
    for path in archived:
        assert dcmdump_errors(path) == "", path


@pytest.mark.skipif(not DCMDUMP.exists(), reason="DCMTK's dcmdump is not installed")
def test_the_mismatched_bodies_are_what_dcmtk_cannot_read(tmp_path: Path) -> None:
    """The premise: were they archived, DCMTK could not read two of them (the CT one reads,
    but as a CT where the archive says DX)."""
    unreadable = 0
    for number, (_name, data, status, _words) in enumerate(mismatches()):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(data)
        unreadable += bool(dcmdump_errors(path)) and status == 0xC000
    assert unreadable == 2
