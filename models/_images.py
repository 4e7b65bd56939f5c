"""From a stored DICOM instance to the RGB image the model sees, and back for boxes.

Preparation is: decode (compressed transfer syntaxes through pydicom's pylibjpeg plugins),
modality LUT (rescale slope/intercept), VOI LUT or window centre/width (a percentile window when the
dataset has none), MONOCHROME1 inversion, scaling to 8 bits, then one resize to the size the Qwen
processor would choose itself (:func:`smart_resize`). Because the image already has that size, the
processor does not resize again, so a percentage of the model input is a percentage of the stored
image: :class:`Geometry` keeps the few numbers needed to map boxes both ways.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

# CheXOne's training and evaluation setting (the processor's max_pixels); see the model spec.
DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_MIN_PIXELS = 56 * 56
# Qwen2.5-VL: 14-pixel patches merged 2x2, so each side is a multiple of 28.
RESIZE_FACTOR = 28
# Percentile window used when a dataset carries no VOI LUT and no window centre/width.
PERCENTILE_WINDOW = (0.5, 99.5)


def pixel_bounds(min_pixels: int, max_pixels: int) -> dict[str, int]:
    """The image processor's ``size`` for these pixel bounds (its current form: passing
    ``min_pixels`` and ``max_pixels`` themselves is deprecated in transformers 5)."""
    return {"shortest_edge": min_pixels, "longest_edge": max_pixels}


def smart_resize(
    height: int,
    width: int,
    factor: int = RESIZE_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) the Qwen2-VL image processor resizes an image to.

    A copy of ``transformers``' ``smart_resize`` (a test checks they agree) so that preparing an
    image does not need the model stack installed.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} above 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Geometry:
    """How a prepared model image relates to the stored pixel grid.

    Coordinates are continuous, in (column, row) order, with (0, 0) the top-left corner of the
    first stored pixel, so a box covering stored columns 10..19 spans x 10.0 to 20.0. The prepared
    image is the stored region ``crop`` (x0, y0, x1, y1; the whole image unless cropped) resized to
    ``model_size`` (width, height). Nothing is padded.
    """

    stored_size: tuple[int, int]  # (columns, rows) of the stored image
    model_size: tuple[int, int]  # (width, height) of the image given to the model
    crop: tuple[float, float, float, float]  # stored region the model image shows

    @classmethod
    def identity_crop(cls, stored_size: tuple[int, int], model_size: tuple[int, int]) -> Geometry:
        """The geometry of an uncropped, resized image."""
        return cls(
            stored_size, model_size, (0.0, 0.0, float(stored_size[0]), float(stored_size[1]))
        )

    @property
    def scale(self) -> tuple[float, float]:
        """Stored pixels per model pixel along x and y."""
        x0, y0, x1, y1 = self.crop
        return (x1 - x0) / self.model_size[0], (y1 - y0) / self.model_size[1]

    def model_pixels_to_stored(self, x: float, y: float) -> tuple[float, float]:
        """A point in model-image pixels to stored-image coordinates."""
        sx, sy = self.scale
        return self.crop[0] + x * sx, self.crop[1] + y * sy

    def stored_to_model_pixels(self, x: float, y: float) -> tuple[float, float]:
        """A point in stored-image coordinates to model-image pixels."""
        sx, sy = self.scale
        return (x - self.crop[0]) / sx, (y - self.crop[1]) / sy

    def percent_to_stored(self, px: float, py: float) -> tuple[float, float]:
        """A point in percent (0-100) of the model image to stored-image coordinates."""
        return self.model_pixels_to_stored(
            px / 100.0 * self.model_size[0], py / 100.0 * self.model_size[1]
        )

    def stored_to_percent(self, x: float, y: float) -> tuple[float, float]:
        """A point in stored-image coordinates to percent (0-100) of the model image."""
        mx, my = self.stored_to_model_pixels(x, y)
        return mx / self.model_size[0] * 100.0, my / self.model_size[1] * 100.0

    def box_percent_to_stored(
        self, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        """A (x1, y1, x2, y2) box in percent of the model image to stored coordinates."""
        x1, y1 = self.percent_to_stored(box[0], box[1])
        x2, y2 = self.percent_to_stored(box[2], box[3])
        return x1, y1, x2, y2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {key: list(value) for key, value in asdict(self).items()}


def _first_value(value: Any) -> float:
    """A DICOM numeric that may be multi-valued (several windows): the first one."""
    if value is None:
        raise ValueError("missing value")
    try:
        return float(value[0])
    except (TypeError, IndexError, KeyError):
        return float(value)


def percentile_of_counts(
    values: np.ndarray, counts: np.ndarray, q: tuple[float, ...]
) -> tuple[float, ...]:
    """``np.percentile(np.repeat(values, counts), q)`` (numpy's default, linear method) without
    building the repeated array: a few million pixels are a few hundred distinct values, and
    sorting them all was most of an image's preparation. The two order statistics around each
    virtual index are read off the cumulative counts and interpolated with numpy's own
    arithmetic (``_quantile``'s indexes, ``_lerp``), so the result is numpy's, exactly."""
    order = np.argsort(values, kind="stable")
    values = np.asarray(values, dtype=np.float64)[order]
    ends = np.cumsum(counts[order])
    n = int(ends[-1])
    virtual = (n - 1) * (np.asarray(q, dtype=np.float64) / 100)
    previous = np.floor(virtual).astype(np.intp)
    following = previous + 1
    previous[virtual >= n - 1] = n - 1
    following[virtual >= n - 1] = n - 1
    gamma = virtual - np.floor(virtual)
    a = values[np.searchsorted(ends, previous, side="right")]
    b = values[np.searchsorted(ends, following, side="right")]
    difference = b - a
    result = np.where(gamma >= 0.5, b - difference * (1 - gamma), a + difference * gamma)
    return tuple(float(x) for x in result)


def _window(dataset: Any, pixels: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Apply the VOI transform and return floats in 0..1 (MONOCHROME2 sense).

    ``counts``, when given, says how many pixels hold each of ``pixels``' values (the distinct
    values of an image, see :func:`dataset_to_gray`): only the percentile window needs it.
    """
    from pydicom.pixels.processing import apply_voi_lut

    if "VOILUTSequence" in dataset:
        # apply_voi_lut maps through the LUT; its output range is the LUT's (BitsStored of it).
        out = np.asarray(apply_voi_lut(pixels, dataset), dtype=np.float64)
        low, high = float(out.min()), float(out.max())
        lut = dataset.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) if "LUTDescriptor" in lut else 16
        return np.clip(out / float(2**bits - 1), 0.0, 1.0) if high > low else np.zeros_like(out)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center = _first_value(dataset.WindowCenter)
        width = max(_first_value(dataset.WindowWidth), 1.0)
        # PS3.3 C.11.2.1.2.1 linear function (the DICOM default VOI LUT function).
        low = center - 0.5 - (width - 1.0) / 2.0
        return np.clip((pixels - low) / (width - 1.0 if width > 1.0 else 1.0), 0.0, 1.0)
    if counts is None:
        low, high = np.percentile(pixels, PERCENTILE_WINDOW)
    else:
        low, high = percentile_of_counts(pixels, counts, PERCENTILE_WINDOW)
    if high <= low:
        low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros_like(pixels, dtype=np.float64)
    return np.clip((pixels - low) / (high - low), 0.0, 1.0)


def _display_gray(dataset: Any, raw: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Stored values to uint8 grey: modality LUT, VOI, MONOCHROME1 inversion, 8 bits."""
    from pydicom.pixels.processing import apply_modality_lut

    pixels = np.asarray(apply_modality_lut(raw, dataset), dtype=np.float64)
    unit = _window(dataset, pixels, counts)
    if str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1 shows low values white; the model expects bright bone
    return np.round(unit * 255.0).astype(np.uint8)


# Integer images whose values span at most this many steps are mapped through a lookup table.
_LOOKUP_SPAN = 1 << 16


def _lookup_gray(dataset: Any, raw: np.ndarray) -> np.ndarray | None:
    """:func:`_display_gray` of an integer image through a table of its distinct values.

    Every step is a function of the stored value alone, except the percentile window, which
    gets each value's pixel count: so the result is the same, exactly, for a few thousand values
    computed instead of a million (the drafting worker prepares every image of every study).
    None when the values are not integers or span too much for a table.
    """
    if raw.dtype.kind not in "iu" or raw.size == 0:
        return None
    # Unsigned values index the table as they are; signed ones from their minimum.
    low = min(int(raw.min()), 0) if raw.dtype.kind == "i" else 0
    span = int(raw.max()) - low + 1
    if span > _LOOKUP_SPAN:
        return None
    offsets = raw if low == 0 else np.subtract(raw, low, dtype=np.int32)
    counts = np.bincount(offsets.ravel(), minlength=span)
    present = np.flatnonzero(counts)
    table = np.zeros(span, dtype=np.uint8)
    values = (present + low).astype(raw.dtype)
    table[present] = _display_gray(dataset, values, counts[present])
    gray: np.ndarray = table[offsets]
    return gray


def dataset_to_gray(dataset: Any) -> np.ndarray:
    """Decode a single-frame grayscale or colour dataset to uint8 grey, display-ready (0 black)."""
    raw = dataset.pixel_array
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raw = raw[0]  # radiographs are single-frame; take the first frame of anything else
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(dataset, "SamplesPerPixel", 1)) > 1 or raw.ndim == 3:
        rgb = np.asarray(raw)
        if photometric.startswith("YBR"):
            from pydicom.pixels.processing import convert_color_space

            rgb = convert_color_space(rgb, photometric, "RGB")
        return np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L"))
    gray = _lookup_gray(dataset, raw)
    return gray if gray is not None else _display_gray(dataset, raw)


def prepare_gray(
    gray: np.ndarray,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, Geometry]:
    """An 8-bit grey array to the RGB model image and its geometry."""
    rows, cols = gray.shape[:2]
    height, width = smart_resize(rows, cols, min_pixels=min_pixels, max_pixels=max_pixels)
    image = Image.fromarray(np.ascontiguousarray(gray), mode="L")
    if (width, height) != (cols, rows):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image.convert("RGB"), Geometry.identity_crop((cols, rows), (width, height))


def prepare_image(
    dataset: Any,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, Geometry]:
    """A pydicom Dataset to (RGB model image, Geometry). See the module docstring for the steps."""
    return prepare_gray(dataset_to_gray(dataset), min_pixels=min_pixels, max_pixels=max_pixels)


def prepare_pil(
    image: Image.Image,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, Geometry]:
    """A plain picture (PNG, JPEG) to (RGB model image, Geometry), for non-DICOM input."""
    if image.mode in ("I;16", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(array, PERCENTILE_WINDOW)
        unit = np.clip((array - low) / max(high - low, 1e-9), 0.0, 1.0)
        gray = np.round(unit * 255.0).astype(np.uint8)
    else:
        gray = np.asarray(image.convert("L"))
    return prepare_gray(gray, min_pixels=min_pixels, max_pixels=max_pixels)
