"""The one MLLP framing (HL7 v2.5.1 Implementation Guide C.4): frames written and read back
whatever the chunking, bytes outside frames skipped, the frame being read bounded."""

from __future__ import annotations

import pytest

from raddraft.mllp import END_BLOCK, SKIPPED_HEAD, START_BLOCK, Deframer, frame

MESSAGES = [b"MSH|^~\\&|A|B\rPID|1", b"MSH|^~\\&|C|D\rOBR|1", b"MSH|^~\\&|E"]


def _stream() -> bytes:
    return b"noise" + b"".join(frame(m) for m in MESSAGES) + b"\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_frames_come_back_whatever_the_chunks(size: int) -> None:
    stream = _stream()
    deframer = Deframer(max_frame=1024)
    got = []
    for at in range(0, len(stream), size):
        got.extend(deframer.feed(stream[at : at + size]))
    assert [f.data for f in got] == MESSAGES
    assert not any(f.too_large for f in got)
    assert deframer.skipped == len(b"noise") + 2 and not deframer.stray_end
    assert not deframer.in_frame and deframer.pending == 0


def test_frame_normalises_segment_ends_and_refuses_framing_bytes() -> None:
    assert frame("MSH|A\r\nPID|1\nOBR|1") == START_BLOCK + b"MSH|A\rPID|1\rOBR|1" + END_BLOCK
    with pytest.raises(ValueError):
        frame(b"MSH|\x1c")
    with pytest.raises(ValueError):
        frame(b"MSH|\x0b")


@pytest.mark.parametrize("size", [1, 5, 100_000])
def test_a_long_frame_is_kept_only_up_to_the_bound(size: int) -> None:
    body = b"X" * 50_000
    stream = frame(body) + frame(b"MSH|ok")
    deframer = Deframer(max_frame=1000)
    got = []
    for at in range(0, len(stream), size):
        got.extend(deframer.feed(stream[at : at + size]))
        assert len(deframer.unfinished()) <= 1000
    long, short = got
    assert long.too_large and long.size == 50_000 and long.data == body[:1000]
    assert short.data == b"MSH|ok" and not short.too_large


def test_an_unfinished_long_frame_says_so_before_its_end() -> None:
    deframer = Deframer(max_frame=10)
    assert deframer.feed(START_BLOCK + b"A" * 8) == []
    assert deframer.in_frame and not deframer.too_large_pending and deframer.pending == 8
    assert deframer.feed(b"B" * 8) == []
    assert deframer.too_large_pending and deframer.pending == 16
    assert deframer.unfinished() == b"A" * 8 + b"BB"


@pytest.mark.parametrize("chunks", [[b"ACK\x1c\r"], [b"ACK\x1c", b"\r"]])
def test_an_end_block_outside_a_frame_is_stray(chunks: list[bytes]) -> None:
    deframer = Deframer(max_frame=100)
    for chunk in chunks:
        assert deframer.feed(chunk) == []
    assert deframer.stray_end


def test_an_end_block_split_across_chunks_ends_the_frame() -> None:
    deframer = Deframer(max_frame=100)
    assert deframer.feed(START_BLOCK + b"MSH|x\x1c") == []
    (got,) = deframer.feed(b"\r")
    assert got.data == b"MSH|x" and got.size == 5


def test_the_ris_client_reads_a_bounded_answer() -> None:
    """An answer that never ends is refused once past the bound, not buffered until the
    time limit (peers.mllp reads ACKs through the Deframer)."""
    import contextlib
    import socket
    import threading

    from peers.mllp import MAX_ACK_BYTES, AckMismatchError, send_message

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_forever() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):  # the client hangs up once past the bound
                conn.sendall(START_BLOCK + b"X" * (MAX_ACK_BYTES + 65536))

    thread = threading.Thread(target=answer_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(AckMismatchError, match="longer than"):
            send_message(
                "127.0.0.1", port, "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|CTL1|P|2.5.1", timeout=10
            )
    finally:
        server.close()
        thread.join(timeout=10)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096])
def test_a_start_block_inside_a_frame_cuts_it_off_when_reading_as_a_server(size: int) -> None:
    """One message per frame (HL7 v2.5.1 IG C.4.2): a start block before the end block ends the
    frame as cut off and begins the next one, whatever the chunking; a 0x1C not followed by
    CR stays data."""
    stream = START_BLOCK + b"MSH|cut\x1c" + START_BLOCK + b"MSH|whole" + END_BLOCK + frame(b"MSH|x")
    deframer = Deframer(max_frame=1024, cut_at_start=True)
    got = []
    for at in range(0, len(stream), size):
        got.extend(deframer.feed(stream[at : at + size]))
    assert [(f.data, f.size, f.cut_off) for f in got] == [
        (b"MSH|cut\x1c", 8, True),
        (b"MSH|whole", 9, False),
        (b"MSH|x", 5, False),
    ]
    assert deframer.skipped == 0 and not deframer.in_frame


def test_a_cut_off_frame_over_the_bound_keeps_its_size_and_only_its_beginning() -> None:
    deframer = Deframer(max_frame=4, cut_at_start=True)
    assert deframer.feed(START_BLOCK + b"ABCDEFGH") == []
    (cut,) = deframer.feed(START_BLOCK + b"MSH")
    assert cut.cut_off and cut.too_large and cut.data == b"ABCD" and cut.size == 8
    assert deframer.in_frame and deframer.pending == 3 and deframer.unfinished() == b"MSH"


def test_without_cut_at_start_a_start_block_is_part_of_the_frame() -> None:
    deframer = Deframer(max_frame=100)
    (got,) = deframer.feed(START_BLOCK + b"A" + START_BLOCK + b"B" + END_BLOCK)
    assert got.data == b"A\x0bB" and not got.cut_off


def test_skipped_bytes_are_taken_since_the_last_look_with_their_beginning() -> None:
    deframer = Deframer(max_frame=100)
    deframer.feed(b"junk" + frame(b"MSH|a") + b"\r\n" + b"z" * 40)
    count, head = deframer.take_skipped()
    assert count == 4 + 2 + 40
    assert head == (b"junk\r\n" + b"z" * 40)[:SKIPPED_HEAD] and len(head) == SKIPPED_HEAD
    assert deframer.take_skipped() == (0, b"")
    deframer.feed(b"more" + START_BLOCK)
    assert deframer.take_skipped() == (4, b"more")
    assert deframer.skipped == 50  # the whole count stays


def test_discard_forgets_the_unfinished_frame() -> None:
    deframer = Deframer(max_frame=100)
    assert deframer.feed(START_BLOCK + b"MSH|half\x1c") == []
    deframer.discard()
    assert not deframer.in_frame and deframer.pending == 0 and deframer.unfinished() == b""
    # Outside a frame now: the rest of the old frame is skipped, the next frame read whole.
    (got,) = deframer.feed(b"\r" + b"tail" + frame(b"MSH|next"))
    assert got.data == b"MSH|next" and deframer.skipped == 5
