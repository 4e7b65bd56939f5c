"""The short CI run of bench/fuzz.py against the order listener: hostile MLLP frames (no end
block, oversized frames and fields, binary junk inside and outside frames, malformed segments,
wrong encoding characters, NUL and 8859-1 bytes, mutations; issue 20's two messages in one
frame, a start block inside a frame, bytes before the start block, stalled connections from
another address) to a running ``raddraft orders``; after each a valid ORM gets AA, every
malformed one AE/AR, every ACKed message is stored."""

from __future__ import annotations

from tests.fuzz_run import fuzz


def test_orders_fuzz_short_run_answers_ae_ar_keeps_serving_and_loses_nothing() -> None:
    figures, output = fuzz("orders", 120, 11)
    assert figures["fuzz_inputs"] == figures["orders_inputs"] == 120
    assert figures["orders_serving"] == 120, output[-4000:]
    assert figures["orders_unanswered"] == 0, output[-4000:]
    assert figures["stray_files"] == 0 and figures["lost"] == 0, output[-4000:]
    assert figures["orders_peak_rss_mb"] < 500, output[-4000:]
    assert "oversized-frame=AR" in output and "no-end-block=AR" in output, output[-4000:]
    for case in ("two-in-one-frame", "start-inside-frame", "stalled-connections"):
        assert f"orders:{case} 1" in output, output[-4000:]
