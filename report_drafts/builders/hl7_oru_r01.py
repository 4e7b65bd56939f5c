"""HL7 v2.5.1 ORU^R01 "unsolicited observation result" for a report version (HL7 v2.5.1 ch. 7).

MSH, PID, ORC (when a placer order is known), OBR and one OBX of type TX per display line of the
report text (chapter 7.4.2: a TX value is one line of display text; consecutive OBX with the same
OBX-3 and OBX-4 are the lines of one observation), preceded by one ST OBX carrying the Study
Instance UID (DCM 110180). A report line longer than :data:`TX_LINE_LIMIT` escaped characters is
wrapped at spaces over several OBX (:func:`display_lines`), as a receiver word-wraps TX text
between hard line ends (ch. 2.A.80): the words stay complete and in order. OBR-25 / OBX-11
result status: P for a draft, F once signed, C for an amendment or correction; a withdrawal
(:data:`WITHDRAWN_RESULT_STATUS`) X with every OBX W. OBR-32 names the principal result
interpreter of a signed report. Values are escaped
(ch. 2.7): ``\\ | ^ & ~`` become ``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``, line ends ``\\.br\\``;
other control characters are removed. The report text is cleaned first
(:func:`report_drafts.text_safety.safe_content`) and sent as UTF-8, which MSH-18 declares
(``UNICODE UTF-8``, table 0211). A version suspecting a critical finding (``content.critical``)
is marked STAT and critical: OBR-5 priority ``S`` (HL7 table 0027), ORC-7 quantity/timing
component 6 and TQ1-9 priority ``S`` (ch. 4.5.4), and OBX-8 abnormal flag ``AA`` "critical
abnormal" (table 0078) on its text lines; the text itself says it is an AI suspicion pending
review while unsigned.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from hl7apy.core import Message

from report_drafts.content import ReportContent, ReportStatus, Signer
from report_drafts.text_safety import HL7_UTF8, clean_text, safe_content

HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"

#: OBR-25 / OBX-11 per report status (HL7 table 0123 / 0085).
RESULT_STATUS: dict[ReportStatus, str] = {
    ReportStatus.preliminary: "P",
    ReportStatus.final: "F",
    ReportStatus.amended: "C",
    ReportStatus.corrected: "C",
}

#: A withdrawn draft (rejected or superseded). HL7 v2.5.1 table 0123 (OBR-25 Result Status)
#: has no "withdrawn" value: "X" ("No results available; Order canceled") is the one that says
#: the result sent for this order is no longer available ("W" is not in table 0123). Table 0085
#: (OBX-11 Observation Result Status) has "W": "Post original as wrong, e.g., transmitted for
#: wrong patient", which tells the RIS to replace the observations it holds with this message's.
#: The ORC stays RE (observations to follow), never CA: the order itself is not cancelled.
WITHDRAWN_RESULT_STATUS = "X"
WITHDRAWN_OBSERVATION_STATUS = "W"

#: OBX-3 per report section (LOINC radiology narrative codes; warnings in RadDraft's scheme).
SECTION_CODES: dict[str, tuple[str, str, str]] = {
    "FINDINGS": ("18782-3", "Radiology Study observation (narrative)", "LN"),
    "IMPRESSION": ("19005-8", "Radiology Imaging study [Impression] (narrative)", "LN"),
    "COMPARISON": ("18834-2", "Radiology Comparison study (narrative)", "LN"),
    "REVIEW": ("REVIEW", "RadDraft review note", "99RADDRAFT"),
    "WARNING": ("WARNING", "RadDraft warning", "99RADDRAFT"),
}
#: HL7 table 0027 priority and table 0078 abnormal flag of a version with a critical finding.
STAT_PRIORITY = "S"
CRITICAL_ABNORMAL = "AA"
STUDY_UID_CODE = ("110180", "Study Instance UID", "DCM")
#: The most escaped characters in one OBX-5 TX line. TX itself allows 65536 (ch. 2.A.80), but
#: OBX-5 is of type varies, which strict parsers without OBX-2 dispatch (hl7apy among them) read
#: as ST, whose length is 199 (ch. 2.A.75): a longer line is refused by a strict RIS.
TX_LINE_LIMIT = 199
REPORT_CODE = ("36643-5", "XR Chest 2 Views", "LN")

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_UNESCAPE_RE = re.compile(r"\\(E|F|S|T|R|X[0-9A-Fa-f]*|\.br)\\")
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~", ".br": "\n"}


def escape(value: str) -> str:
    """HL7 escaping of one value (v2.5.1 2.7.1); the escape character goes first.

    Line ends would end the segment: they become ``\\.br\\``. Any other control character
    (which MLLP framing or a parser may act on) is removed (:func:`text_safety.clean_text`):
    a hex escape ``\\Xhh\\`` would not survive hl7apy, which escapes its backslashes again.
    """
    value = clean_text(value)
    for char, sequence in _ESCAPES:
        value = value.replace(char, sequence)
    return value.replace("\n", "\\.br\\")


def unescape(value: str) -> str:
    """Undo :func:`escape` (and hex ``\\Xhh\\`` sequences, as UTF-8 bytes per MSH-18)."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("X"):
            return bytes.fromhex(code[1:]).decode("utf-8", errors="replace")
        return _UNESCAPES[code]

    return _UNESCAPE_RE.sub(one, value)


def result_status(status: ReportStatus | str) -> str:
    """OBR-25 for a report status: P, F or C; unknown statuses are refused."""
    try:
        return RESULT_STATUS[ReportStatus(status)]
    except ValueError:
        raise ValueError(f"invalid report status {status!r}") from None


def _statuses(content: ReportContent, *, withdrawn: bool) -> tuple[str, str]:
    """OBR-25 and OBX-11 of a message: the version's status, or X / W for a withdrawal."""
    if not withdrawn:
        status = result_status(content.status)
        return status, status
    if content.status.is_signed:
        raise ValueError("only an unsigned draft is withdrawn; a signed report is amended")
    return WITHDRAWN_RESULT_STATUS, WITHDRAWN_OBSERVATION_STATUS


def _escaped_width(char: str) -> int:
    """How many characters ``char`` takes once escaped (ch. 2.7: a separator becomes three)."""
    return 3 if char in "\\|^&~" else 1


def _fit(text: str, limit: int) -> int:
    """How many leading characters of ``text`` fit in ``limit`` escaped characters."""
    used = 0
    for index, char in enumerate(text):
        used += _escaped_width(char)
        if used > limit:
            return index
    return len(text)


def wrap_line(text: str, limit: int = TX_LINE_LIMIT) -> list[str]:
    """One report line as TX display lines of at most ``limit`` escaped characters each.

    Breaks at the last space that fits (the space itself becomes the line end, as a receiver
    that word-wraps would show it; trailing spaces are dropped, ch. 2.A.80); a word longer
    than a line is cut. The words come back complete and in order: joining the pieces with
    single spaces gives the line with its runs of spaces at the breaks made single.
    """
    if limit < 3:  # an escaped separator takes three characters
        raise ValueError("a line holds at least one escaped separator (3 characters)")
    text = clean_text(text)
    pieces: list[str] = []
    while _fit(text, limit) < len(text):
        cut = _fit(text, limit)
        space = text.rfind(" ", 0, cut + 1)
        head = text[:space].rstrip(" ") if space > 0 else ""
        if head:
            pieces.append(head)
            text = text[space:].lstrip(" ")
        else:
            pieces.append(text[:cut])
            text = text[cut:]
    pieces.append(text)
    return pieces


#: HD-1 namespace ID (IS) length in HL7 v2.5.1 (ch. 2.A.36).
NAMESPACE_ID_LIMIT = 20


def namespace_id(value: str) -> str:
    """MSH-3 to MSH-6 (HD) from a name, escaped: cut to the 20 characters of HD-1 (a longer
    one, such as a full institution name, is refused by strict readers)."""
    value = clean_text(value)
    return escape(value[: _fit(value, NAMESPACE_ID_LIMIT)])


def _components(*parts: str) -> str:
    return "^".join(escape(p) for p in parts).rstrip("^")


def _coded(code: tuple[str, str, str]) -> str:
    return _components(*code)


def person_name(dicom_name: str) -> str:
    """An XPN from a DICOM PN (``Family^Given^Middle^Prefix^Suffix``, first group only)."""
    alphabetic = dicom_name.split("=")[0]
    return _components(*alphabetic.split("^")[:5])


def _interpreter(signer: Signer) -> str:
    """OBR-32 (NDL): the first component is a CNN whose parts are subcomponents."""
    family, _, given = signer.name.split("=")[0].partition("^")
    parts = [signer.login, family, given.split("^")[0]]
    return "&".join(escape(p) for p in parts).rstrip("&")


@dataclass(frozen=True)
class ObxLine:
    """One OBX text line: its section and the unescaped text."""

    section: str
    text: str


def report_lines(content: ReportContent, *, demo: bool) -> list[ObxLine]:
    """The report text split into lines, each tagged with its section (headings included).

    ``"\\n".join(line.text for line in report_lines(...)) == content.text(demo=demo)``.
    """
    lines: list[ObxLine] = []
    for index, (heading, body) in enumerate(content.sections(demo=demo)):
        if index:
            lines.append(ObxLine(heading, ""))
        lines.append(ObxLine(heading, f"{heading}:"))
        lines.extend(ObxLine(heading, line) for line in body.split("\n"))
    return lines


def display_lines(
    content: ReportContent, *, demo: bool, withdrawal: str | None = None
) -> list[ObxLine]:
    """The TX lines :func:`oru_r01` sends, in order: :func:`report_lines` (after a withdrawal's
    WARNING line) with each line wrapped by :func:`wrap_line` into lines that fit one OBX-5.

    ``content`` is taken as it is: :func:`oru_r01` cleans it first
    (:func:`report_drafts.text_safety.safe_content`).
    """
    lines = report_lines(content, demo=demo)
    if withdrawal is not None:
        lines.insert(0, ObxLine("WARNING", f"WITHDRAWN: {withdrawal}"))
    return [ObxLine(line.section, piece) for line in lines for piece in wrap_line(line.text)]


def _hl7_time(value: dt.datetime) -> str:
    text = value.strftime("%Y%m%d%H%M%S")
    if value.tzinfo is not None:
        text += value.strftime("%z")
    return text


def _check_plain(value: str, what: str, limit: int) -> str:
    if not value or len(value) > limit or any(c in value for c in "|^&~\\\r\n"):
        raise ValueError(f"{what} must be 1-{limit} characters without HL7 separators: {value!r}")
    return value


def _mark_stat(order: Any, *, with_orc: bool) -> None:
    """STAT priority of an order observation: OBR-5, ORC-7.6 (when there is an ORC), TQ1-9."""
    if with_orc:
        order.orc.orc_7 = "^^^^^" + STAT_PRIORITY
    order.obr.obr_5 = STAT_PRIORITY
    timing = order.add_group("ORU_R01_TIMING_QTY").tq1
    timing.tq1_1 = "1"
    timing.tq1_9 = STAT_PRIORITY


def _order_and_request(
    order: Any,
    content: ReportContent,
    *,
    accession: str,
    order_placer: str | None,
    observed: dt.datetime | None,
    now: dt.datetime,
    status: str,
) -> None:
    """ORC (when the placer order is known) and OBR of the order observation (ch. 4.5.1, 7.4.1):
    order numbers, the report code, times, result status, the interpreter once signed, and the
    STAT marks of a critical suspicion."""
    if order_placer:
        order.orc.orc_1 = "RE"
        order.orc.orc_2 = escape(order_placer)
        order.orc.orc_3 = escape(accession)
        order.orc.orc_5 = "CM"
    obr = order.obr
    obr.obr_1 = "1"
    if order_placer:
        obr.obr_2 = escape(order_placer)
    obr.obr_3 = escape(accession)
    obr.obr_4 = _coded(REPORT_CODE)
    if observed is not None:
        obr.obr_7 = _hl7_time(observed)
    obr.obr_22 = _hl7_time(now)
    obr.obr_24 = "RAD"
    obr.obr_25 = status
    if content.status.is_signed:
        assert content.signer is not None
        obr.obr_32 = _interpreter(content.signer)
    if content.critical:
        _mark_stat(order, with_orc=bool(order_placer))


def oru_r01(  # noqa: PLR0913 (one keyword per MSH/PID/OBR field (HL7 v2.5.1 ch. 7))
    content: ReportContent,
    *,
    patient_id: str,
    patient_name: str,
    accession: str,
    study_uid: str,
    control_id: str,
    sending_app: str,
    sending_facility: str,
    receiving_app: str,
    receiving_facility: str,
    demo: bool,
    order_placer: str | None = None,
    patient_id_authority: str | None = None,
    observed: dt.datetime | None = None,
    timestamp: dt.datetime | None = None,
    processing_id: str = "P",
    withdrawal: str | None = None,
) -> str:
    """The ORU^R01 of one report version as ER7 text (segments joined by ``\\r``).

    ``withdrawal`` (why, in words) makes it the withdrawal of an unsigned draft sent before:
    OBR-25 X, OBX-11 W on every observation, and a first WARNING line saying so.

    ``control_id`` (MSH-10, at most 20 characters) must be unique per message: the ACK echoes it.
    ``accession`` is the filler order number (OBR-3), ``order_placer`` the placer order number
    (ORC-2 / OBR-2, with an ORC when given). ``observed`` is the study time (OBR-7).
    """
    content.check_consistent()
    content = safe_content(content)
    status, observation_status = _statuses(content, withdrawn=withdrawal is not None)
    _check_plain(control_id, "control_id", 20)
    now = timestamp or dt.datetime.now(dt.UTC)

    message = Message("ORU_R01", version=HL7_VERSION)
    msh = message.msh
    msh.msh_3 = namespace_id(sending_app)
    msh.msh_4 = namespace_id(sending_facility)
    msh.msh_5 = namespace_id(receiving_app)
    msh.msh_6 = namespace_id(receiving_facility)
    msh.msh_7 = _hl7_time(now)
    msh.msh_9 = MESSAGE_TYPE
    msh.msh_10 = control_id
    msh.msh_11 = _check_plain(processing_id, "processing_id", 3)
    msh.msh_12 = HL7_VERSION
    msh.msh_18 = HL7_UTF8

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = _components(patient_id, "", "", patient_id_authority or "", "MR")
    pid.pid_5 = person_name(patient_name)

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order_and_request(
        order,
        content,
        accession=accession,
        order_placer=order_placer,
        observed=observed,
        now=now,
        status=status,
    )

    set_ids = iter(range(1, 10_000))

    def add_obx(value_type: str, code: tuple[str, str, str], sub_id: str, value: str) -> None:
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(next(set_ids))
        obx.obx_2 = value_type
        obx.obx_3 = _coded(code)
        obx.obx_4 = sub_id
        if value:
            obx.obx_5 = value
        if content.critical and value_type == "TX":
            obx.obx_8 = CRITICAL_ABNORMAL
        obx.obx_11 = observation_status

    add_obx("ST", STUDY_UID_CODE, "", escape(study_uid))
    sections = [heading for heading, _ in content.sections(demo=demo)]
    for line in display_lines(content, demo=demo, withdrawal=withdrawal):
        sub_id = str(sections.index(line.section) + 1)
        add_obx("TX", SECTION_CODES[line.section], sub_id, escape(line.text))
    return str(message.to_er7())


def text_lines(message: str) -> list[str]:
    """The unescaped OBX-5 of every TX OBX of an ER7 message, in order (for checks and traces).

    Parsed with hl7apy, so this also checks the message is well formed.
    """
    from hl7apy.parser import parse_message

    parsed = parse_message(message.replace("\n", "\r"), find_groups=True)
    lines: list[str] = []
    for result in parsed.oru_r01_patient_result:
        for order in result.oru_r01_order_observation:
            for observation in order.oru_r01_observation:
                obx = observation.obx
                if obx.obx_2.value == "TX":
                    lines.append(unescape(obx.obx_5.value if obx.obx_5.children else ""))
    return lines
