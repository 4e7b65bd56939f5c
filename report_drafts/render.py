"""PNG renderings of archived images for review, windowed, with or without the finding boxes.

Boxes are in the stored pixel grid (the same coordinates the GSPS carries); a rendering scaled
down for the screen scales the boxes with it, so what the radiologist sees matches what PACS
will show.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw

from report_drafts.content import Finding

ACCEPTED_COLOUR = (255, 200, 0)
REJECTED_COLOUR = (220, 40, 40)


def _window(
    pixels: np.ndarray, ds: pydicom.Dataset, center: float | None, width: float | None
) -> np.ndarray:
    """Map pixels to 0..1 by an explicit window, the image's own window, or percentiles."""
    data = pixels.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    data = data * slope + intercept
    if center is None or width is None:
        wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
        if wc is not None and ww is not None:
            # Multi-valued windows: the first is the modality's preferred one.
            center = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
            width = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
    if center is not None and width is not None and width > 0:
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(data, (0.5, 99.5)))
    if high <= low:
        high = low + 1.0
    scaled = np.clip((data - low) / (high - low), 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: high values are dark
    return scaled


def render_png(
    path: Path,
    *,
    findings: Sequence[Finding] = (),
    show_rejected: bool = False,
    window_center: float | None = None,
    window_width: float | None = None,
    max_size: int | None = None,
) -> bytes:
    """The first frame of the DICOM file at ``path`` as PNG, boxes of ``findings`` drawn on."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 3 and str(ds.get("PhotometricInterpretation", "")).startswith("MONO"):
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour: show as it is
        image = Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
    else:
        grey = (_window(pixels, ds, window_center, window_width) * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").convert("RGB")
    scale = 1.0
    if max_size and max(image.size) > max_size:
        scale = max_size / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.LANCZOS,
        )
    draw = ImageDraw.Draw(image)
    line = max(1, round(max(image.size) / 300))
    for finding in findings:
        if finding.box is None or (not finding.accepted and not show_rejected):
            continue
        b = finding.box
        colour = ACCEPTED_COLOUR if finding.accepted else REJECTED_COLOUR
        # Box corners are pixel-edge coordinates; PIL draws on pixel centres, hence the -1.
        x0, y0 = b.x0 * scale, b.y0 * scale
        x1, y1 = max(x0, b.x1 * scale - 1), max(y0, b.y1 * scale - 1)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        draw.text((x0 + 2, y0 + 2), finding.label, fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
