"""Shared pieces of the builder tests: synthetic sources, a report, and the DICOM validators."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset

from report_drafts.content import Algorithm, Box, Finding, ReportContent, Signer
from tests.dicom_factory import make_cxr, new_uid

ALGORITHM = Algorithm(name="StanfordAIMI/CheXOne", version="rev-abc123", program_version="0.1.0")
DEMO_ALGORITHM = Algorithm(
    name="tiny-qwen2.5-vl", version="random-1", program_version="0.1.0", demo=True
)
SIGNER = Signer(name="Doe^Jane", login="jdoe", organization="General Hospital Radiology")
TRICKY = "pipes | carets ^ amps & tildes ~ backslash \\ and \\F\\ literal"


@dataclass
class Study:
    """A two-view study: PA (DX, MONOCHROME2) and lateral (CR, MONOCHROME1)."""

    pa: Dataset
    lateral: Dataset

    @property
    def sources(self) -> list[Dataset]:
        return [self.pa, self.lateral]


def make_study() -> Study:
    study_uid = str(new_uid())
    pa = make_cxr(study_uid=study_uid, view="PA", rows=300, cols=250, modality="DX")
    lateral = make_cxr(
        study_uid=study_uid,
        view="LATERAL",
        rows=280,
        cols=240,
        modality="CR",
        photometric="MONOCHROME1",
        instance_number=2,
        series_uid=str(new_uid()),
    )
    # Modalities often omit these: the builders must cope without touching the original.
    del pa.PatientBirthDate
    del pa.StudyID
    del lateral.AccessionNumber
    return Study(pa=pa, lateral=lateral)


def findings_for(study: Study) -> tuple[Finding, ...]:
    """Two grounded accepted findings (one box partly outside the image), one ungrounded
    accepted finding and one rejected grounded finding."""
    return (
        Finding(
            tracking_uid=str(new_uid()),
            label="Pleural effusion",
            sop_instance_uid=str(study.pa.SOPInstanceUID),
            box=Box(30.5, 180.0, 400.0, 320.0),  # past the right and bottom edges: clipped
            laterality="left",
            site="lower lobe of lung",
            certainty=0.82,
        ),
        Finding(
            tracking_uid=str(new_uid()),
            label="lung opacity",
            sop_instance_uid=str(study.lateral.SOPInstanceUID),
            box=Box(50.0, 40.0, 10.0, 90.0),  # corners given in the wrong order
        ),
        Finding(tracking_uid=str(new_uid()), label="cardiomegaly", certainty=0.6),
        Finding(
            tracking_uid=str(new_uid()),
            label="pneumothorax",
            sop_instance_uid=str(study.pa.SOPInstanceUID),
            box=Box(1.0, 1.0, 20.0, 20.0),
            accepted=False,
        ),
    )


def draft_content(study: Study) -> ReportContent:
    return ReportContent(
        findings_text=f"Small left pleural effusion.\nHeart size upper normal. {TRICKY}",
        impression="Small left pleural effusion.",
        progression="Effusion is new since the prior study.",
        findings=findings_for(study),
    )


def run_tool(tool: str, path: Path) -> tuple[int, list[str]]:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, lines


def dciodvfy_ok(path: Path) -> list[str]:
    """Run dciodvfy; fail on any error line, return the warning lines (printed for the log)."""
    _, lines = run_tool("dciodvfy", path)
    errors = [line for line in lines if "Error" in line]
    warnings = [line for line in lines if "Warning" in line]
    assert not errors, f"dciodvfy errors in {path.name}:\n" + "\n".join(errors)
    for line in warnings:
        print(f"dciodvfy {path.name}: {line}")
    return warnings


def dcmpschk_ok(path: Path) -> None:
    rc, lines = run_tool("dcmpschk", path)
    bad = [line for line in lines if line.startswith(("E:", "F:")) or "Error" in line]
    assert rc == 0 and not bad, f"dcmpschk on {path.name}:\n" + "\n".join(lines)
    assert any("Test passed" in line for line in lines), "\n".join(lines)


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
