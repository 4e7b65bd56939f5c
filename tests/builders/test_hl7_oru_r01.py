"""ORU^R01: result status P/F/C, OBR-32 for signed reports, escaping that round-trips; every
message built here passes hl7apy's strict validation (:mod:`tests.hl7_strict`)."""

from __future__ import annotations

import dataclasses

import pytest
from hl7apy.parser import parse_message

from report_drafts.builders.hl7_oru_r01 import (
    TX_LINE_LIMIT,
    display_lines,
    escape,
    oru_r01,
    result_status,
    text_lines,
    unescape,
    wrap_line,
)
from report_drafts.content import DEMO_WARNING, DRAFT_WARNING, ReportContent, ReportStatus
from tests.builders.helpers import SIGNER, TRICKY
from tests.hl7_strict import BuiltMessages, assert_strict, strict_errors

CONTENT = ReportContent(
    findings_text=f"Small left effusion.\n{TRICKY}\n\nHeart normal.",
    impression="Small left pleural effusion ~ unchanged | see prior ^ & \\",
    progression="New since 2024-01-01.",
)


def _message(content: ReportContent, *, demo: bool = False, **kwargs: object) -> str:
    options: dict[str, object] = {
        "patient_id": "RD^0001",
        "patient_name": "O'BRIEN^MARY^ANN",
        "accession": "ACC0001",
        "study_uid": "1.2.826.0.1.3680043.10.1077.1",
        "control_id": "RD000001",
        "sending_app": "RADDRAFT",
        "sending_facility": "GH",
        "receiving_app": "RIS",
        "receiving_facility": "GH",
        "order_placer": "ORD77",
    }
    options.update(kwargs)
    message = oru_r01(content, demo=demo, **options)  # type: ignore[arg-type]
    assert_strict(message)  # as a strict RIS reads it
    return message


def _obr(message: str):  # type: ignore[no-untyped-def]
    parsed = parse_message(message, find_groups=True)
    order = parsed.oru_r01_patient_result.oru_r01_order_observation
    return parsed, order


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (ReportStatus.preliminary, "P"),
        (ReportStatus.final, "F"),
        (ReportStatus.amended, "C"),
        (ReportStatus.corrected, "C"),
    ],
)
def test_result_status_and_interpreter(status: ReportStatus, code: str) -> None:
    signer = SIGNER if status.is_signed else None
    content = dataclasses.replace(CONTENT, status=status, signer=signer)
    message = _message(content)
    parsed, order = _obr(message)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_10.to_er7() == "RD000001"
    assert parsed.msh.msh_12.to_er7() == "2.5.1"
    assert order.obr.obr_25.to_er7() == code
    assert order.orc.orc_2.to_er7() == "ORD77"
    assert order.obr.obr_3.to_er7() == "ACC0001"
    statuses = {obs.obx.obx_11.to_er7() for obs in order.oru_r01_observation}
    assert statuses == {code}
    interpreter = order.obr.obr_32.to_er7()
    if status.is_signed:
        assert interpreter == "jdoe&Doe&Jane"
    else:
        assert interpreter == ""
    assert result_status(status) == code


def test_text_lines_round_trip_with_escaping() -> None:
    message = _message(CONTENT, demo=True)
    lines = text_lines(message)
    assert "\n".join(lines) == CONTENT.text(demo=True)
    assert TRICKY in lines
    assert DEMO_WARNING in lines and DRAFT_WARNING in lines
    # separators in values never reach the wire unescaped: each segment keeps its field count
    for segment in message.split("\r"):
        if segment.startswith("OBX"):
            assert segment.count("|") == 11, segment
    parsed, order = _obr(message)
    assert (
        unescape(parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_3.pid_3_1.to_er7())
        == "RD^0001"
    )
    assert parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_5.pid_5_1.to_er7() == "O'BRIEN"
    first = order.oru_r01_observation[0].obx
    assert first.obx_2.to_er7() == "ST"
    assert first.obx_5.to_er7() == "1.2.826.0.1.3680043.10.1077.1"
    tx = [obs.obx for obs in order.oru_r01_observation if obs.obx.obx_2.to_er7() == "TX"]
    assert len(tx) == len(CONTENT.text(demo=True).split("\n"))


@pytest.mark.parametrize(
    "value",
    ["a|b", "a^b&c~d", "back\\slash", "\\F\\ literal", "\\E\\", "x\\", "multi\nline", "plain"],
)
def test_escape_round_trips(value: str) -> None:
    escaped = escape(value)
    assert not any(c in escaped for c in "|^&~\r\n")
    assert unescape(escaped) == value


def test_refusals() -> None:
    with pytest.raises(ValueError, match="signer"):
        _message(dataclasses.replace(CONTENT, status=ReportStatus.final))
    with pytest.raises(ValueError, match="control_id"):
        _message(CONTENT, control_id="X" * 21)
    with pytest.raises(ValueError, match="control_id"):
        _message(CONTENT, control_id="A|B")
    with pytest.raises(ValueError, match="invalid report status"):
        result_status("registered")


def test_a_withdrawal_says_x_and_every_observation_w() -> None:
    """HL7 v2.5.1 table 0123 "X" on OBR-25, table 0085 "W" (post original as wrong) on OBX-11."""
    message = _message(CONTENT, withdrawal="AI draft rejected by radiologist House: wrong side")
    _parsed, order = _obr(message)
    assert order.obr.obr_25.to_er7() == "X"
    assert order.orc.orc_1.to_er7() == "RE"  # the order itself stays open
    assert {obs.obx.obx_11.to_er7() for obs in order.oru_r01_observation} == {"W"}
    lines = text_lines(message)
    assert lines[0] == "WITHDRAWN: AI draft rejected by radiologist House: wrong side"
    assert DRAFT_WARNING in lines


def test_a_signed_report_is_never_withdrawn() -> None:
    signed = dataclasses.replace(CONTENT, status=ReportStatus.final, signer=SIGNER)
    with pytest.raises(ValueError, match="amended"):
        _message(signed, withdrawal="no")


def _segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def test_a_critical_version_is_stat_and_critical_abnormal() -> None:
    critical = dataclasses.replace(CONTENT, extra={"critical": ["pneumothorax"]})
    message = _message(critical)
    parse_message(message, find_groups=True)  # still a valid ORU^R01
    (obr,) = _segments(message, "OBR")
    assert obr[5] == "S"  # OBR-5 priority (table 0027)
    (orc,) = _segments(message, "ORC")
    assert orc[7].split("^")[5] == "S"  # ORC-7.6
    (tq1,) = _segments(message, "TQ1")
    assert tq1[9] == "S"  # TQ1-9
    text = [obx for obx in _segments(message, "OBX") if obx[2] == "TX"]
    assert text and {obx[8] for obx in text} == {"AA"}  # OBX-8 critical abnormal (table 0078)
    lines = text_lines(message)
    assert "REVIEW:" in lines
    assert any("AI suspicion of a critical finding (pneumothorax)" in line for line in lines)
    assert any("not a diagnosis" in line for line in lines)


def test_a_routine_version_carries_no_critical_flags() -> None:
    message = _message(CONTENT)
    (obr,) = _segments(message, "OBR")
    assert len(obr) <= 5 or obr[5] == ""
    assert _segments(message, "TQ1") == []
    assert all(len(obx) <= 8 or obx[8] == "" for obx in _segments(message, "OBX"))
    assert "REVIEW:" not in text_lines(message)


# A model's findings paragraph as the pipeline writes it: one line of 232 characters.
LONG = (
    "There is a small left pleural effusion with adjacent basilar atelectasis; the cardiac "
    "silhouette is within normal limits, the mediastinal contours are unremarkable, and there "
    "is no pneumothorax or focal consolidation in either lung. No acute osseous abnormality."
)


@pytest.mark.parametrize("signed", [False, True])
def test_long_lines_pass_strict_validation_and_keep_every_word_in_order(signed: bool) -> None:
    """HL7 v2.5.1 ch. 2.A.75: OBX-5 read as ST holds 199 characters; a 232-character line (and
    one of separators, which escape to three characters each) is wrapped over several OBX."""
    separators = "|^&~\\" * 60
    content = ReportContent(
        findings_text=f"{LONG}\n{separators}\n{'x' * 450}", impression=LONG + " " + LONG
    )
    if signed:
        content = dataclasses.replace(content, status=ReportStatus.final, signer=SIGNER)
    options = dict(
        patient_id="P1",
        patient_name="DOE^JO",
        accession="A1",
        study_uid="1.2.3",
        control_id="C1",
        sending_app="RADDRAFT",
        sending_facility="GH",
        receiving_app="RIS",
        receiving_facility="GH",
        demo=True,
    )
    message = oru_r01(content, **options)  # type: ignore[arg-type]
    assert strict_errors(message) == []
    for segment in message.split("\r"):
        if segment.startswith("OBX|"):
            assert len(segment.split("|")[5]) <= TX_LINE_LIMIT, segment
    lines = text_lines(message)
    assert lines == [line.text for line in display_lines(content, demo=True)]
    assert len(lines) > len(content.text(demo=True).split("\n"))  # some were wrapped
    # Every character but the spaces at a break comes through, in order ...
    assert "".join(lines).replace(" ", "") == content.text(demo=True).replace(" ", "").replace(
        "\n", ""
    )
    # ... and a paragraph of words comes back whole when its display lines are joined.
    start = lines.index("IMPRESSION:") + 1
    assert " ".join(lines[start : start + 3]) == LONG + " " + LONG


def test_wrap_line_breaks_at_spaces_within_the_limit() -> None:
    assert wrap_line("short line") == ["short line"]
    assert wrap_line("aaa bbb ccc", limit=7) == ["aaa bbb", "ccc"]
    assert wrap_line("aaa    bbb", limit=5) == ["aaa", "bbb"]
    assert wrap_line("  indented words", limit=10) == ["  indented", "words"]
    assert wrap_line("abcdefghij", limit=4) == ["abcd", "efgh", "ij"]
    assert wrap_line("a|b|c", limit=7) == ["a|b", "|c"]  # an escape is never cut
    for piece in wrap_line(LONG + "|" * 100):
        assert len(escape(piece)) <= TX_LINE_LIMIT
    assert wrap_line("|||", limit=3) == ["|", "|", "|"]
    with pytest.raises(ValueError, match="at least one escaped separator"):
        wrap_line("|", limit=2)


def test_a_long_institution_name_still_makes_a_strictly_valid_msh() -> None:
    """MSH-4 / MSH-6 are HD, whose namespace ID holds 20 characters (ch. 2.A.36): RadDraft sends
    the institution name there, which is often longer."""
    name = "General Hospital & Radiology Department"
    message = _message(CONTENT, sending_facility=name, receiving_facility=name)
    fields = message.split("\r")[0].split("|")
    assert fields[3] == fields[5] == "General Hospital \\T\\"  # 20 characters, escaped
    assert unescape(fields[3]) == name[:18]


def test_every_oru_built_in_a_test_is_checked_strictly(strict_hl7: BuiltMessages) -> None:
    """The autouse fixture (tests/conftest.py) sees each ORU^R01 hl7apy writes out: here one
    built without the wrapping, a 232-character OBX-5 line, is caught (and then let go)."""
    message = _message(CONTENT)
    long_line = "word " * 46 + "ab"
    assert len(long_line) == 232
    parsed = parse_message(message, find_groups=True)
    obx = parsed.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation[1].obx
    obx.obx_5 = long_line
    assert strict_hl7.refused == []
    parsed.to_er7()
    assert len(strict_hl7.refused) == 1 and "MaxLengthReached" in strict_hl7.refused[0]
    strict_hl7.refused.clear()
