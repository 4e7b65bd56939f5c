"""The short CI run of bench/fuzz.py against STOW-RS: hostile multipart bodies (lying or missing
boundaries, bodies over the limit declared or chunked, non-DICOM parts, deflate and pixel bombs,
path-traversal UIDs, random and mutated bodies) to a running ``raddraft web``; after each a valid
POST is stored, every hostile one is answered 4xx, nothing is lost or left outside the archive."""

from __future__ import annotations

from tests.fuzz_run import fuzz


def test_stow_fuzz_short_run_answers_4xx_keeps_serving_and_loses_nothing() -> None:
    figures, output = fuzz("stow", 120, 11)
    assert figures["fuzz_inputs"] == figures["stow_inputs"] == 120
    assert figures["stow_serving"] == 120, output[-4000:]
    assert figures["stow_unanswered"] == 0, output[-4000:]
    assert figures["stray_files"] == 0 and figures["lost"] == 0, output[-4000:]
    assert figures["stow_peak_rss_mb"] < 500, output[-4000:]  # 8 MB limit; a body held whole shows
    assert "413" in output  # the over-limit bodies were refused as too large, not read


def test_wildcard_fuzz_short_run_answers_every_query_and_keeps_serving() -> None:
    """Hostile QIDO-RS wildcard patterns (many ``*`` and ``?``, near misses, over the length
    bound) against a long PatientName: each gets a clear answer, after each a new instance is
    stored and found, and ``/healthz`` was polled throughout (its latency is a bench figure)."""
    figures, output = fuzz("wildcard", 24, 5)
    assert figures["fuzz_inputs"] == figures["wildcard_inputs"] == 24
    assert figures["wildcard_serving"] == 24, output[-4000:]
    assert figures["wildcard_unanswered"] == 0, output[-4000:]
    assert figures["stray_files"] == 0 and figures["lost"] == 0, output[-4000:]
    assert "healthz_worst_ms" in figures and "failed 0," in output, output[-4000:]
    assert "'400'" in output  # the over-length patterns were refused, not matched
