"""Image preparation and geometry: the model's view of a DICOM image, and boxes mapped back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from models import Geometry, prepare_image, smart_resize
from models._images import dataset_to_gray
from tests.models.conftest import radiograph


def bright_box(image: Image.Image) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive, of the pixels brighter than mid-grey."""
    gray = np.asarray(image.convert("L"))
    rows, cols = np.nonzero(gray > 128)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_smart_resize_matches_transformers() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    for height in range(30, 3000, 97):
        for width in (31, 255, 512, 999, 2048, 2500):
            if max(height, width) / min(height, width) > 200:
                continue
            assert smart_resize(height, width) == reference(
                height, width, factor=28, min_pixels=56 * 56, max_pixels=512 * 512
            )


def _box(
    point: Callable[[float, float], tuple[float, float]], box: tuple[float, ...]
) -> tuple[float, float, float, float]:
    """A box's two corners through a point mapping of :class:`Geometry`."""
    (x1, y1), (x2, y2) = point(box[0], box[1]), point(box[2], box[3])
    return x1, y1, x2, y2


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize(
    ("rows", "cols", "rect"),
    [
        (301, 257, (40, 61, 123, 180)),  # odd, non-square, portrait
        (199, 411, (300, 20, 390, 77)),  # odd, landscape
        (512, 512, (0, 0, 64, 100)),  # touching the corner
        (1111, 927, (200, 300, 700, 900)),  # downscaled
    ],
)
def test_rectangle_round_trip(
    photometric: str, rows: int, cols: int, rect: tuple[int, ...]
) -> None:
    ds = radiograph(rows, cols, rect, photometric=photometric)
    image, geometry = prepare_image(ds)
    assert image.mode == "RGB"
    assert image.size == geometry.model_size
    assert geometry.stored_size == (cols, rows)
    assert image.size[0] % 28 == 0 and image.size[1] % 28 == 0
    assert image.size[0] * image.size[1] <= 512 * 512
    # The rectangle must stay bright after windowing and (for MONOCHROME1) inversion.
    seen = bright_box(image)
    back = _box(geometry.model_pixels_to_stored, tuple(float(v) for v in seen))
    # Within a pixel when the model image is not smaller; a downscaled image cannot locate an
    # edge better than one of its own pixels (``scale`` stored pixels).
    tolerance = max(1.0, *geometry.scale)
    assert back == pytest.approx(tuple(float(v) for v in rect), abs=tolerance)
    # Percent round trip (what the model writes) lands within a pixel, both ways.
    percent = _box(geometry.stored_to_percent, tuple(float(v) for v in rect))
    assert all(0.0 <= v <= 100.0 for v in percent)
    assert geometry.box_percent_to_stored(percent) == pytest.approx(rect, abs=1e-6)
    rounded = tuple(round(v, 2) for v in percent)  # CXRTrek writes two decimals
    assert geometry.box_percent_to_stored(rounded) == pytest.approx(rect, abs=1.0)


def test_monochrome1_is_inverted() -> None:
    mono2 = dataset_to_gray(radiograph(64, 80, (10, 10, 30, 30)))
    mono1 = dataset_to_gray(radiograph(64, 80, (10, 10, 30, 30), photometric="MONOCHROME1"))
    assert mono2[20, 20] > 200 and mono2[50, 70] < 50
    # Same display up to the half-pixel asymmetry of the DICOM linear window function.
    assert np.abs(mono1.astype(int) - mono2.astype(int)).max() <= 1


def test_window_and_modality_lut() -> None:
    # Stored 200/3000 with slope 2, intercept -100 -> 300/5900; window 3000 +- 1000 puts the
    # background below the window (black) and the rectangle above it (white).
    ds = radiograph(50, 60, (5, 5, 20, 20), window=(3000.0, 2000.0), slope=2.0, intercept=-100.0)
    gray = dataset_to_gray(ds)
    assert gray[10, 10] == 255 and gray[40, 40] == 0


def test_percentile_window_when_absent() -> None:
    gray = dataset_to_gray(radiograph(80, 80, (0, 0, 40, 80), window=None))
    assert gray[:, :40].min() == 255 and gray[:, 40:].max() == 0


def test_eight_bit_data() -> None:
    image, _ = prepare_image(radiograph(120, 90, (20, 30, 50, 70), bits=8, window=None))
    assert bright_box(image) is not None


def test_compressed_rle_decodes_like_uncompressed() -> None:
    from pydicom.uid import RLELossless

    plain = radiograph(97, 131, (11, 13, 60, 77))
    packed = radiograph(97, 131, (11, 13, 60, 77))
    packed.compress(RLELossless)
    assert packed.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(dataset_to_gray(plain), dataset_to_gray(packed))


def test_compressed_jpeg2000_lossless_decodes() -> None:
    from pydicom.uid import JPEG2000Lossless

    ds = radiograph(96, 128, (11, 13, 60, 77))
    try:
        ds.compress(JPEG2000Lossless)
    except (RuntimeError, NotImplementedError) as error:  # encoder plugin not installed
        pytest.fail(f"no JPEG 2000 encoder (pylibjpeg-openjpeg is a dependency): {error}")
    assert np.array_equal(
        dataset_to_gray(ds), dataset_to_gray(radiograph(96, 128, (11, 13, 60, 77)))
    )


def test_processor_keeps_prepared_size(tiny_backend) -> None:  # type: ignore[no-untyped-def]
    """The Qwen processor must not resize a prepared image again, or percentages would drift."""
    for rows, cols in ((301, 257), (1111, 927), (64, 70)):
        image, geometry = prepare_image(radiograph(rows, cols, (1, 1, 10, 10)))
        out = tiny_backend.processor.image_processor(images=[image], return_tensors="pt")
        _, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
        assert (grid_w * 14, grid_h * 14) == geometry.model_size


def test_geometry_with_crop() -> None:
    geometry = Geometry((1000, 800), (500, 300), (100.0, 50.0, 900.0, 650.0))
    assert geometry.percent_to_stored(0, 0) == (100.0, 50.0)
    assert geometry.percent_to_stored(100, 100) == (900.0, 650.0)
    assert geometry.stored_to_percent(500.0, 350.0) == pytest.approx((50.0, 50.0))


def _noisy(ds: Dataset, rng: np.random.Generator, signed: bool = False) -> None:
    """Give ``ds`` random 12-bit pixels (signed: centred on zero), for exactness checks."""
    shape = (int(ds.Rows), int(ds.Columns))
    if signed:
        ds.PixelRepresentation = 1
        ds.PixelData = rng.integers(-2048, 2048, shape).astype(np.int16).tobytes()
    else:
        ds.PixelData = rng.integers(0, 4096, shape).astype(np.uint16).tobytes()


@pytest.mark.parametrize(
    "case",
    [
        "window",
        "percentile",
        "monochrome1 percentile",
        "negative slope percentile",
        "signed window",
        "voi lut sequence",
    ],
)
def test_lookup_table_path_equals_the_per_pixel_computation(case: str) -> None:
    """The table of distinct values gives every pixel exactly what computing each pixel gives
    (the percentile window included, from the values' counts)."""
    from pydicom.sequence import Sequence

    from models._images import _display_gray, _lookup_gray

    rng = np.random.default_rng(len(case))
    window = (1800.0, 2500.0) if "window" in case else None
    photometric = "MONOCHROME1" if "monochrome1" in case else "MONOCHROME2"
    slope, intercept = (-0.5, 3000.0) if "negative" in case else (1.0, 0.0)
    ds = radiograph(
        73,
        91,
        (5, 5, 30, 30),
        window=window,
        photometric=photometric,
        slope=slope,
        intercept=intercept,
    )
    _noisy(ds, rng, signed="signed" in case)
    if "voi lut" in case:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        item.LUTData = list(rng.integers(0, 4096, 4096))
        ds.VOILUTSequence = Sequence([item])
    raw = ds.pixel_array
    fast = _lookup_gray(ds, raw)
    assert fast is not None
    slow = _display_gray(ds, raw)
    assert fast.dtype == slow.dtype == np.uint8
    assert np.array_equal(fast, slow)
    assert np.array_equal(dataset_to_gray(ds), slow)
    assert len(np.unique(slow)) > 10  # a real spread of grey, not a constant image


def test_float_pixels_and_wide_spans_take_the_per_pixel_path() -> None:
    from models._images import _lookup_gray

    ds = radiograph(8, 8, (1, 1, 4, 4))
    assert _lookup_gray(ds, np.zeros((8, 8), dtype=np.float32)) is None
    wide = np.array([[0, 1 << 20]], dtype=np.int32)
    assert _lookup_gray(ds, wide) is None


def test_percentile_of_counts_is_numpys_percentile_of_the_repeated_values() -> None:
    """Exactly numpy's figure (its linear method) on random values and counts: unsorted,
    negative, repeated a few or many times, with bounds at 0 and 100."""
    from models._images import percentile_of_counts

    rng = np.random.default_rng(7)
    for case in range(3000):
        k = int(rng.integers(1, 30))
        pool = rng.normal(0, 1000, 100) if case % 2 else np.arange(-50.0, 4000.0)
        values = rng.choice(pool, size=k, replace=False)
        counts = rng.integers(1, 40 if case % 3 else 3, size=k)
        q = (float(rng.uniform(0, 100)), 0.5, 99.5, 0.0, 100.0)
        expected = np.percentile(np.repeat(values, counts), q)
        assert np.array_equal(np.array(percentile_of_counts(values, counts, q)), expected), case
