"""Pixels for WADO-RS: frames (PS3.18 10.4.1.1.5), rendered images (10.4.1.1.6), transcoding.

Frames go out uncompressed (Explicit VR Little Endian pixel layout, ``application/
octet-stream``), decoded with pydicom's plug-ins when the instance is stored compressed.
Rendered images apply the Modality LUT, then the VOI LUT or window the instance carries (else
its value range), invert MONOCHROME1 (PS3.3 C.7.6.3.1.2), and encode JPEG or PNG with Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

RENDERED_TYPES = ("image/jpeg", "image/png")
NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class NotAnImage(ValueError):
    """The instance has no pixel data (an SR, a presentation state): no frames to give."""


def _dataset(path: Path) -> Dataset:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise NotAnImage(f"{ds.SOPInstanceUID} has no pixel data")
    return ds


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def frames(path: Path, numbers: list[int]) -> list[bytes]:
    """Frames ``numbers`` (1-based) of the instance as native little-endian bytes."""
    ds = _dataset(path)
    count = frame_count(ds)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise IndexError(f"no frame {bad[0]}: the instance has {count}")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax in NATIVE_SYNTAXES and int(ds.BitsAllocated) % 8 == 0:
        data = bytes(ds.PixelData)
        size = len(data) // count
        return [data[(n - 1) * size : n * size] for n in numbers]
    return [_frame_of(ds, n - 1) for n in numbers]


def _frame_of(ds: Dataset, index: int) -> bytes:
    array = ds.pixel_array
    if frame_count(ds) > 1:
        array = array[index]
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def rendered(path: Path, media_type: str, *, frame: int = 1, quality: int = 90) -> bytes:
    """The instance's frame as an 8-bit image a browser shows (``image/jpeg`` or ``image/png``)."""
    ds = _dataset(path)
    array = ds.pixel_array
    if frame_count(ds) > 1:
        if not 1 <= frame <= frame_count(ds):
            raise IndexError(f"no frame {frame}: the instance has {frame_count(ds)}")
        array = array[frame - 1]
    image = _to_8bit(ds, array)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=max(1, min(quality, 100)))
    return out.getvalue()


def _to_8bit(ds: Dataset, array: np.ndarray) -> Image.Image:
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
    values = apply_modality_lut(array, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")


def as_explicit_little(path: Path) -> bytes:
    """The instance re-encoded in Explicit VR Little Endian (decompressed if need be)."""
    ds = pydicom.dcmread(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()
