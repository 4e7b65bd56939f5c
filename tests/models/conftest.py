"""Shared fixtures for the model tests: the tiny checkpoint built once per session, loaded
offline through ``from_pretrained``, and synthetic radiographs with a bright rectangle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Nothing here may touch the network; the tiny checkpoint must load offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("transformers")

from models._hf import TransformersBackend
from models._tiny import build_tiny


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, built once for the whole session."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_backend(tiny_path: Path) -> Iterator[TransformersBackend]:
    """The tiny model loaded like CheXOne (from_pretrained + AutoProcessor), offline, fp32."""
    backend = TransformersBackend.load(tiny_path, device="cpu", dtype="auto", local_files_only=True)
    yield backend


def radiograph(
    rows: int,
    cols: int,
    rect: tuple[int, int, int, int],
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    window: tuple[float, float] | None = (2000.0, 3000.0),
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Dataset:
    """A DICOM radiograph: dark background, one bright (MONOCHROME2 sense) rectangle.

    ``rect`` is (column0, row0, column1, row1), end-exclusive. For MONOCHROME1 the stored
    values are inverted so the rectangle still *displays* bright.
    """
    high = 3000 if bits > 8 else 230
    low = 200 if bits > 8 else 20
    pixels = np.full((rows, cols), low, dtype=np.uint16 if bits > 8 else np.uint8)
    c0, r0, c1, r1 = rect
    pixels[r0:r1, c0:c1] = high
    if photometric == "MONOCHROME1":
        top = 4095 if bits > 8 else 255
        pixels = (top - pixels).astype(pixels.dtype)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = 12 if bits > 8 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        center, width = window
        if photometric == "MONOCHROME1":
            center = 4095 - center
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.tobytes()
    return ds
