"""Synthetic DICOM test data: chest radiographs (and non-chest ones) that look like a modality's.

Reusable by every test and by ``bench/ingest.py``. Datasets carry proper UIDs, the patient,
study, series and image attributes a PACS sends (PS3.3 A.26 DX image IOD, A.2 CR image IOD) and a
16-bit (12 bits stored) pixel matrix. Nothing here needs a network or a database.

Main entry points:

- :func:`make_cxr` one image (PA, AP, LATERAL, ...) as a :class:`~pydicom.dataset.Dataset`,
  written to disk when given a path.
- :func:`make_study` several views of one study written into a folder.
- :func:`compress` a file re-encoded into another transfer syntax (DCMTK or pydicom).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

# Every UID this module makes sits under one root, so test data is recognisable in an archive.
UID_ROOT = "1.2.826.0.1.3680043.10.1077."

# View Code Sequence (0054,0220) items, SNOMED CT (PS3.16 CID 4010 "DX View").
_VIEW_CODES: dict[str, tuple[str, str]] = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182009", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "LATERAL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}


def new_uid() -> UID:
    """A fresh UID under this module's root."""
    return generate_uid(prefix=UID_ROOT)


@dataclass
class StudyIds:
    """The identifiers one study's images share."""

    patient_id: str = "RD0001"
    patient_name: str = "TEST^CHEST"
    study_uid: UID = field(default_factory=new_uid)
    series_uid: UID = field(default_factory=new_uid)
    accession: str = "ACC0001"


def _pixels(rows: int, cols: int, bits_stored: int, seed: int) -> np.ndarray:
    """A smooth gradient plus a little noise: compresses like an image, not like noise."""
    rng = np.random.default_rng(seed)
    top = (1 << bits_stored) - 1
    y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, cols, dtype=np.float32)[None, :]
    base = (0.25 + 0.5 * y * (1.0 - np.abs(x - 0.5))) * top
    noise = rng.integers(0, 64, size=(rows, cols), dtype=np.uint16)
    return np.clip(base.astype(np.int32) + noise, 0, top).astype(np.uint16)


def make_cxr(
    path: str | Path | None = None,
    *,
    patient_id: str = "RD0001",
    patient_name: str = "TEST^CHEST",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    view: str = "PA",
    rows: int = 256,
    cols: int = 256,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    body_part: str = "CHEST",
    study_description: str = "XR CHEST PA AND LATERAL",
    series_description: str | None = None,
    accession: str = "ACC0001",
    study_date: str | None = None,
    instance_number: int = 1,
    series_number: int = 1,
    for_processing: bool = False,
    priority: str | None = None,
    reason: str | None = None,
    bits_stored: int = 12,
    seed: int = 0,
    sop_class_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One synthetic radiograph; written to ``path`` (DICOM file format) when given.

    ``view`` sets ViewPosition (0018,5101) and the View Code Sequence; pass ``""`` for none.
    ``priority`` (STAT, HIGH, ROUTINE, MEDIUM, LOW) sets RequestedProcedurePriority (0040,1003)
    and ``reason`` the ReasonForTheRequestedProcedure (0040,1002), both in the Request
    Attributes Sequence as a modality fed by a worklist writes them. Uncompressed only; use
    :func:`compress` for other transfer syntaxes.
    """
    modality = modality.upper()
    if sop_class_uid is None:
        if modality == "CR":
            sop_class_uid = CR_IMAGE
        elif modality == "CT":
            sop_class_uid = CT_IMAGE
        elif modality == "DX":
            sop_class_uid = DX_FOR_PROCESSING if for_processing else DX_FOR_PRESENTATION
        else:
            sop_class_uid = SECONDARY_CAPTURE
    sop_uid = sop_uid or new_uid()
    today = dt.date.today().strftime("%Y%m%d")

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date or today
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "RadDraft test factory"
    ds.ReferringPhysicianName = "REFERRER^TEST"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description if series_description is not None else view
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = "LL" if view.upper() == "LATERAL" else view.upper()
        code = _VIEW_CODES.get(view.upper())
        if code:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = code
            item.CodingSchemeDesignator = "SCT"
            ds.ViewCodeSequence = [item]
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["A", "F"] if view.upper() in ("PA", "") else ["P", "F"]
    ds.ImageLaterality = "U"
    if priority or reason:
        request = Dataset()
        request.RequestedProcedureID = accession
        if reason:
            request.ReasonForTheRequestedProcedure = reason
        ds.RequestAttributesSequence = [request]
    if priority:
        ds.RequestedProcedurePriority = priority
    if modality == "DX":
        ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.PixelSpacing = [0.139, 0.139]

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 1 << (bits_stored - 1)
    ds.WindowWidth = 1 << bits_stored
    ds.PixelData = _pixels(rows, cols, bits_stored, seed).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(UID_ROOT + "1")
    ds.file_meta = meta
    if path is not None:
        ds.save_as(path, enforce_file_format=True)
    return ds


def make_study(
    folder: str | Path,
    views: tuple[str, ...] = ("PA", "LATERAL"),
    *,
    ids: StudyIds | None = None,
    **kwargs: object,
) -> tuple[StudyIds, list[Path]]:
    """Write one study with an image per view into ``folder``; returns its ids and files."""
    ids = ids or StudyIds()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, view in enumerate(views, start=1):
        path = folder / f"{ids.study_uid[-12:]}_{number}_{view}.dcm"
        make_cxr(
            path,
            patient_id=ids.patient_id,
            patient_name=ids.patient_name,
            study_uid=ids.study_uid,
            series_uid=ids.series_uid,
            accession=ids.accession,
            view=view,
            instance_number=number,
            seed=number,
            **kwargs,  # type: ignore[arg-type]
        )
        paths.append(path)
    return ids, paths


# DCMTK converters for the syntaxes pydicom cannot write without extra plug-ins.
_DCMTK = {
    JPEGBaseline8Bit: ["dcmcjpeg", "+eb"],
    JPEGExtended12Bit: ["dcmcjpeg", "+ee"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
    JPEGLSLossless: ["dcmcjpls", "+el"],
    JPEGLSNearLossless: ["dcmcjpls", "+en"],
    RLELossless: ["dcmcrle"],
}


def compress(source: str | Path, target: str | Path, transfer_syntax: str) -> Path:
    """Re-encode the file ``source`` into ``transfer_syntax`` at ``target``.

    JPEG (baseline needs 8-bit data: it is converted first), JPEG-LS and RLE go through DCMTK
    (``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle``); JPEG 2000 and the uncompressed syntaxes go
    through pydicom (``pylibjpeg-openjpeg`` encodes JPEG 2000).
    """
    from pydicom import dcmread

    source, target = Path(source), Path(target)
    syntax = UID(transfer_syntax)
    if syntax in _DCMTK:
        tool, *flags = _DCMTK[syntax]
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} (DCMTK) is not installed")
        if syntax == JPEGBaseline8Bit:
            # Baseline JPEG is 8-bit only (PS3.5 A.4.1): shrink the pixel depth first.
            ds = dcmread(source)
            pixels = ds.pixel_array
            shift = max(int(ds.BitsStored) - 8, 0)
            ds.PixelData = (pixels >> shift).astype(np.uint8).tobytes()
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
            ds.WindowCenter, ds.WindowWidth = 128, 256
            eight_bit = target.with_suffix(".8bit.dcm")
            ds.save_as(eight_bit, enforce_file_format=True)
            source = eight_bit
        subprocess.run([tool, *flags, str(source), str(target)], check=True)
        return target
    ds = dcmread(source)
    if syntax in (JPEG2000Lossless, JPEG2000):
        kwargs: dict[str, object] = {}
        if syntax == JPEG2000:
            kwargs = {"j2k_cr": [20], "use_mct": False}
        ds.compress(syntax, encoding_plugin="pylibjpeg", **kwargs)  # type: ignore[arg-type]
    elif syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        raise ValueError(f"no converter for transfer syntax {syntax}")
    ds.save_as(target, enforce_file_format=True)
    return target


def dataset_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset encoded without file meta, as a C-STORE carries it (PS3.7 9.3.1.1)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = UID(transfer_syntax) == ImplicitVRLittleEndian
    body = Dataset(ds)
    if hasattr(body, "file_meta"):
        del body.file_meta
    write_dataset(buffer, body)
    return buffer.getvalue()
