"""Hostile model output through every format it leaves in: control bytes (0x02, 0x05, 0x1D and
friends), HL7 delimiters, Chinese and Greek text, very long lines.

The text is cleaned once (:mod:`report_drafts.text_safety`); the SR is dciodvfy clean, declares
ISO_IR 192 and comes back from a real Orthanc with the same text; the ORU^R01 declares UTF-8 in
MSH-18 and the MLLP peer parses it back with hl7apy to the same text; the DiagnosticReport
parses with fhir.resources to the same text.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from pydicom import dcmread

from peers.mllp import send_message
from report_drafts import text_safety
from report_drafts.builders import build_gsps, build_sr, device_uid_for
from report_drafts.builders._fhir import PatientRef
from report_drafts.builders.fhir_diagnostic_report import (
    diagnostic_report,
    parse_diagnostic_report,
    presented_text,
)
from report_drafts.builders.hl7_oru_r01 import (
    display_lines,
    escape,
    oru_r01,
    text_lines,
    unescape,
)
from report_drafts.content import Finding, ReportContent
from tests.builders.helpers import ALGORITHM, dciodvfy_ok, findings_for, make_study, save
from tests.mllp_listener import Listener
from tests.orthanc import OrthancServer

CONTROL = "\x02\x05\x1d\x00\x1c\x1b\x7f\x9b\u202e"  # removed (VT, FF, NEL become LF)
DELIMITERS = "|^~\\&"
CHINESE = "左下肺野见少量胸腔积液，心影不大。"
GREEK = "Μικρή πλευριτική συλλογή αριστερά."
LONG_LINE = " ".join(["No acute cardiopulmonary abnormality."] * 400)  # one ~15 kB line

HOSTILE_FINDINGS = (
    f"\x02Small left effusion{CONTROL}.\r\n{DELIMITERS} MSH|^~\\&|X\r{CHINESE}\n{GREEK}\t"
    f"tabbed\n{LONG_LINE}\x05"
)
HOSTILE_IMPRESSION = f"Effusion\x1d {DELIMITERS}\\F\\ \\X0D\\ {GREEK}"
EXPECTED_FINDINGS = (
    f"Small left effusion.\n{DELIMITERS} MSH|^~\\&|X\n{CHINESE}\n{GREEK} tabbed\n{LONG_LINE}"
)
EXPECTED_IMPRESSION = f"Effusion {DELIMITERS}\\F\\ \\X0D\\ {GREEK}"


def hostile_content(study_findings: tuple[Finding, ...] = ()) -> ReportContent:
    """The hostile text; the first finding (grounded when the study's findings are given) gets
    a hostile label."""
    first = study_findings[0] if study_findings else Finding(tracking_uid="1.2.3.4", label="")
    return ReportContent(
        findings_text=HOSTILE_FINDINGS,
        impression=HOSTILE_IMPRESSION,
        progression=f"New\x02 since prior ({CHINESE})",
        findings=(
            Finding(
                tracking_uid=first.tracking_uid,
                label=f"pleural\x05 effusion {GREEK}",
                sop_instance_uid=first.sop_instance_uid,
                box=first.box,
                laterality="left",
            ),
            *study_findings[1:],
        ),
    )


def test_clean_removes_controls_keeps_text_and_records_what() -> None:
    content = text_safety.safe_content(hostile_content())
    assert content.findings_text == EXPECTED_FINDINGS
    assert content.impression == EXPECTED_IMPRESSION
    assert content.progression == f"New since prior ({CHINESE})"
    assert content.findings[0].label == f"pleural effusion {GREEK}"
    record = content.extra[text_safety.SANITISED_KEY]
    assert record["findings_text"]["U+0002"] == 2
    assert record["findings_text"]["U+001D"] == 1
    assert record["findings_text"]["U+202E"] == 1
    assert record["impression"] == {"U+001D": 1}
    assert record["findings[0].label"] == {"U+0005": 1}
    assert text_safety.removed_count(content.extra) == sum(sum(v.values()) for v in record.values())
    for value in text_safety.content_values(content):
        assert text_safety.clean_text(value) == value
    # cleaning twice changes nothing and keeps the record
    assert text_safety.safe_content(content) is content


def test_visible_shows_every_control_and_sends_none() -> None:
    shown = text_safety.visible("a\x02b\x1dc\x7fd\u202ee\x85f\ng")
    assert shown == "a\u2402b\u241dc\u2421d<U+202E>e<U+0085>f\ng"
    assert text_safety.clean_text(shown) == shown


def test_safe_text_is_unchanged() -> None:
    text = f"Normal heart.\n{CHINESE}\n{GREEK} {DELIMITERS}"
    content = ReportContent(findings_text=text, impression="none")
    assert text_safety.safe_content(content) is content


def _sr_and_gsps(tmp_path: Path) -> tuple[Path, Path, ReportContent, str]:
    study = make_study()
    content = hostile_content(findings_for(study))
    sr = build_sr(
        study.sources,
        content,
        ALGORITHM,
        device_uid=device_uid_for(ALGORITHM),
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=900,
        instance_number=1,
        institution="Πανεπιστημιακό Νοσοκομείο",
    )
    gsps = build_gsps(
        study.pa,
        content.findings,
        ALGORITHM,
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_number=901,
        instance_number=1,
        institution="Πανεπιστημιακό Νοσοκομείο",
    )
    return (
        save(sr, tmp_path / "sr.dcm"),
        save(gsps, tmp_path / "gsps.dcm"),
        content,
        str(study.pa.StudyInstanceUID),
    )


def _sr_texts(ds: object) -> list[str]:
    """Every TEXT content item's value, depth first."""
    found: list[str] = []
    for item in getattr(ds, "ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_sr_texts(item))
    return found


def test_sr_and_gsps_are_valid_utf8_and_orthanc_returns_the_text(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    sr_path, gsps_path, _content, _study_uid = _sr_and_gsps(tmp_path)
    dciodvfy_ok(sr_path)
    dciodvfy_ok(gsps_path)
    sr = dcmread(sr_path)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert dcmread(gsps_path).SpecificCharacterSet == "ISO_IR 192"
    texts = _sr_texts(sr)
    assert any(t.startswith(EXPECTED_FINDINGS.strip()) for t in texts)
    assert any(t.startswith(EXPECTED_IMPRESSION) for t in texts)
    assert all(text_safety.clean_text(t) == t for t in texts)

    # Orthanc stores it and gives back the same text, read in the declared character set.
    answer = orthanc.upload(sr_path)
    orthanc.upload(gsps_path)
    back = dcmread(io.BytesIO(orthanc.rest(f"/instances/{answer['ID']}/file")))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert _sr_texts(back) == texts
    assert str(back.InstitutionName) == "Πανεπιστημιακό Νοσοκομείο"
    tags = orthanc.rest(f"/instances/{answer['ID']}/simplified-tags")
    assert tags["InstitutionName"] == "Πανεπιστημιακό Νοσοκομείο"


def test_ascii_text_keeps_the_source_character_set(tmp_path: Path) -> None:
    study = make_study()
    content = ReportContent(findings_text="Normal\x02.", impression="Normal.")
    sr = build_sr(
        study.sources,
        content,
        ALGORITHM,
        device_uid=device_uid_for(ALGORITHM),
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        series_number=900,
        instance_number=1,
        institution="General Hospital",
    )
    assert sr.get("SpecificCharacterSet") == study.pa.get("SpecificCharacterSet")
    assert "Normal." in "".join(_sr_texts(sr))
    dciodvfy_ok(save(sr, tmp_path / "ascii.dcm"))


def _oru(content: ReportContent, control_id: str = "RDHOSTILE1") -> str:
    return oru_r01(
        content,
        patient_id="P|1",
        patient_name="Παπαδόπουλος^Γιώργος",
        accession="ACC^1",
        study_uid="1.2.3",
        control_id=control_id,
        sending_app="RADDRAFT",
        sending_facility="Hosp~ital\x02",
        receiving_app="RIS",
        receiving_facility="GH",
        demo=False,
    )


def test_hl7_declares_utf8_and_the_mllp_peer_reads_back_the_same_text(
    listener: tuple[Listener, int],
) -> None:
    state, port = listener
    content = hostile_content()
    message = _oru(content)
    assert "\x02" not in message and "\x1d" not in message and "\x0b" not in message
    send_message("127.0.0.1", port, message, timeout=10)
    received = state.received[-1]
    parsed = parse_message(received.replace("\n", "\r"), find_groups=True)
    assert parsed.msh.msh_18.value == "UNICODE UTF-8"
    assert unescape(parsed.msh.msh_4.value) == "Hosp~ital"
    pid = parsed.oru_r01_patient_result.oru_r01_patient.pid
    assert unescape(pid.pid_3.children[0].value) == "P|1"
    assert [unescape(c.value) for c in pid.pid_5.children[:2]] == ["Παπαδόπουλος", "Γιώργος"]
    obr = parsed.oru_r01_patient_result.oru_r01_order_observation.obr
    assert unescape(obr.obr_3.value) == "ACC^1"
    # The report text, line by line, is exactly the cleaned text (every segment intact), its
    # long lines wrapped to fit OBX-5 (display_lines).
    expected = text_safety.safe_content(content).text(demo=False)
    wrapped = display_lines(text_safety.safe_content(content), demo=False)
    assert text_lines(received) == [line.text for line in wrapped]
    assert "".join(text_lines(received)).replace(" ", "") == expected.replace(" ", "").replace(
        "\n", ""
    )
    assert EXPECTED_FINDINGS in expected and EXPECTED_IMPRESSION in expected


def test_fhir_text_is_valid_and_the_same() -> None:
    content = hostile_content()
    report = diagnostic_report(
        content,
        resource_id="dr-hostile",
        patient=PatientRef(id="P1", system="urn:oid:1.2.3.4", name="Παπαδόπουλος^Γιώργος"),
        study_instance_uid="1.2.3",
        issued=dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC),
        demo=False,
    )
    body = json.dumps(json.loads(report.model_dump_json()))
    again = parse_diagnostic_report(body)
    clean = text_safety.safe_content(content)
    assert presented_text(again) == clean.text(demo=False)
    assert again.conclusion is not None and again.conclusion.startswith(EXPECTED_IMPRESSION)
    decoded = presented_text(again)
    assert not any(ord(c) < 0x20 and c not in "\n" for c in decoded + again.conclusion)
    assert CHINESE in decoded and GREEK in again.conclusion


@pytest.mark.parametrize(
    ("char", "after"),
    [("\x02", ""), ("\x05", ""), ("\x1d", ""), ("\x1c", ""), ("\x00", ""), ("\x0b", "\n")],
)
def test_hl7_escape_never_lets_a_control_byte_through(char: str, after: str) -> None:
    escaped = escape(f"a{char}b|c")
    assert char not in escaped
    assert unescape(escaped) == f"a{after}b|c"
