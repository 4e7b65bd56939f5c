"""MLLP client against a real MLLP listener (hl7apy's MLLPServer) answering AA, AE, AR, CR,
a wrong control id, or nothing."""

from __future__ import annotations

import time

import pytest

from peers.mllp import (
    AckMismatchError,
    NoAckError,
    RejectedError,
    send_message,
    send_with_retries,
)
from raddraft.mllp import frame
from report_drafts.builders.hl7_oru_r01 import oru_r01, text_lines
from report_drafts.content import ReportContent
from tests.builders.helpers import TRICKY
from tests.conftest import free_port
from tests.mllp_listener import Listener, serving

CONTENT = ReportContent(findings_text=f"Effusion. {TRICKY}", impression="Effusion.")


def _message(control_id: str = "RD000001") -> str:
    return oru_r01(
        CONTENT,
        patient_id="RD0001",
        patient_name="TEST^CHEST",
        accession="ACC0001",
        study_uid="1.2.3",
        control_id=control_id,
        sending_app="RADDRAFT",
        sending_facility="GH",
        receiving_app="RIS",
        receiving_facility="GH",
        demo=False,
    )


def test_frame() -> None:
    framed = frame("MSH|^~\\&|A\nPID|1")
    assert framed == b"\x0bMSH|^~\\&|A\rPID|1\x1c\x0d"
    with pytest.raises(ValueError):
        frame("MSH|\x1c")


def test_accepted(listener: tuple[Listener, int]) -> None:
    state, port = listener
    message = _message()
    ack = send_message("127.0.0.1", port, message, timeout=5)
    assert (ack.code, ack.control_id) == ("AA", "RD000001")
    assert len(state.received) == 1
    # the listener got the message intact, escaped text included
    received = state.received[0]
    assert received.rstrip("\r") == message
    assert f"Effusion. {TRICKY}" in text_lines(received)


@pytest.mark.parametrize("code", ["AE", "AR"])
def test_negative_ack_is_transient_rejection(listener: tuple[Listener, int], code: str) -> None:
    state, port = listener
    state.default = code
    with pytest.raises(RejectedError) as caught:
        send_message("127.0.0.1", port, _message(), timeout=5)
    assert caught.value.code == code and caught.value.transient
    assert caught.value.control_id == "RD000001"


def test_no_answer_times_out(listener: tuple[Listener, int]) -> None:
    state, port = listener
    state.default = "SILENT"
    started = time.monotonic()
    with pytest.raises(NoAckError) as caught:
        send_message("127.0.0.1", port, _message(), timeout=0.5)
    assert isinstance(caught.value, TimeoutError) and caught.value.transient
    # The 0.5 s asked for, not the 10 s default: a bound far from both, so a busy machine that
    # stalls the test process for seconds (CI once saw 3 s) cannot fail it, an ignored deadline can.
    assert time.monotonic() - started < 8


def test_nobody_listening() -> None:
    with pytest.raises(NoAckError):
        send_message("127.0.0.1", free_port(), _message(), timeout=2)


def test_wrong_control_id(listener: tuple[Listener, int]) -> None:
    state, port = listener
    state.default = "WRONG"
    with pytest.raises(AckMismatchError):
        send_message("127.0.0.1", port, _message(), timeout=5)


def test_retries_until_accepted(listener: tuple[Listener, int]) -> None:
    state, port = listener
    state.script = ["AE", "SILENT", "AR"]
    waits: list[float] = []
    ack = send_with_retries(
        "127.0.0.1", port, _message(), attempts=4, backoff=0.1, timeout=0.5, sleep=waits.append
    )
    assert ack.code == "AA"
    assert len(state.received) == 4
    assert waits == [0.1, 0.2, 0.4]


def test_retries_give_up(listener: tuple[Listener, int]) -> None:
    state, port = listener
    state.default = "AE"
    waits: list[float] = []
    with pytest.raises(RejectedError):
        send_with_retries(
            "127.0.0.1", port, _message(), attempts=3, backoff=0.01, timeout=5, sleep=waits.append
        )
    assert len(state.received) == 3 and len(waits) == 2


def test_permanent_rejection_not_retried(listener: tuple[Listener, int]) -> None:
    state, port = listener
    state.default = "CR"
    with pytest.raises(RejectedError) as caught:
        send_with_retries(
            "127.0.0.1", port, _message(), attempts=5, backoff=0.01, timeout=5, sleep=lambda _: None
        )
    assert not caught.value.transient
    assert len(state.received) == 1


def test_the_listener_reads_strictly_and_fails_the_test_on_an_invalid_message() -> None:
    """What an ORU with a 232-character OBX-5 line got before the builder wrapped it: AE from
    a strict reader (hl7apy reads OBX-5 as ST, 199 characters), and a failed test."""
    state, port = Listener(), free_port()
    long_line = "word " * 46 + "ab"  # 232 characters
    message = _message().replace("Effusion.", long_line, 1)
    with (
        pytest.raises(AssertionError, match="MaxLengthReached"),
        serving(state, port),
        pytest.raises(RejectedError, match="AE"),
    ):
        send_message("127.0.0.1", port, message, timeout=5)
    assert len(state.invalid) == 1
