"""Reading order messages (ORM^O01, OMI^O23) and writing their acknowledgements (HL7 v2.5.1).

Where each value comes from (HL7 v2.5.1 ch. 4, IHE RAD TF-2 RAD-4 "Procedure Scheduled"):

- accession number: IPC-1 Accession Identifier (OMI^O23); in ORM^O01, OBR-18 Placer Field 1,
  which IHE Scheduled Workflow uses for the accession number; failing both, the filler order
  number ORC-3 / OBR-3 (the department's own order number).
- indication: OBR-31 Reason for Study (CE: text, else identifier), else OBR-13 Relevant
  Clinical Information.
- priority: TQ1-9 (v2.5), ORC-7 or OBR-27 quantity/timing component 6 (TQ), OBR-5: HL7 table
  0027 (S stat, A ASAP, R routine, P preop, C callback, T timing critical, PRN as needed).
- ordering provider: ORC-12, else OBR-16 (XCN: id^family^given).
- patient identity: PID-3 (CX: id^^^assigning authority), PID-5 name.
- order control: ORC-1 (table 0119): CA cancel request and OC order cancelled stop the order;
  so does ORC-5 order status CA (table 0038).

Acknowledgements are original-mode ACKs (ch. 2.9.2): MSA-1 AA accepted, AE application error
(the message was understood but its content is wrong), AR application reject (not a message
we take: unparseable, another message type, a sending facility not allowed); MSA-3 and an ERR
segment (ERR-3 from table 0357, ERR-4 severity E, ERR-8 the text) say why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hl7apy.core import Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from raddraft.jobs import Priority

#: The message types this listener takes (MSH-9 message code ^ trigger event).
ORDER_TYPES = frozenset({"ORM^O01", "OMI^O23"})
#: ORC-1 order control codes that cancel the order (HL7 table 0119).
CANCEL_CONTROLS = frozenset({"CA", "OC"})
#: HL7 table 0027 priority -> RadDraft job priority.
PRIORITIES: dict[str, Priority] = {
    "S": Priority.stat,
    "A": Priority.high,
    "T": Priority.high,
    "P": Priority.high,
    "R": Priority.routine,
    "C": Priority.routine,
    "PRN": Priority.low,
}
#: HL7 table 0357 message error condition codes used in ERR-3.
ERR_REQUIRED_FIELD_MISSING = ("101", "Required field missing")
ERR_UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
ERR_SEGMENT_SEQUENCE = ("100", "Segment sequence error")
ERR_APPLICATION_INTERNAL = ("207", "Application internal error")


class OrderError(ValueError):
    """A message refused: ``code`` AE or AR, ``error`` the table 0357 condition."""

    def __init__(self, code: str, text: str, error: tuple[str, str]) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.error = error


@dataclass(frozen=True)
class Header:
    """What the MSH says: enough to answer even a message we refuse."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # "ORM^O01"
    control_id: str
    version: str


@dataclass(frozen=True)
class OrderFields:
    """The order as read from one message."""

    accession_number: str
    placer_order_number: str
    filler_order_number: str
    order_control: str
    cancelled: bool
    priority: Priority | None  # None: the message does not say
    indication: str
    ordering_provider: str
    patient_id: str
    patient_id_authority: str
    patient_name: str


def _component(value: str, index: int) -> str:
    """Component ``index`` (1-based) of the first repetition of an ER7 field value."""
    parts = value.split("~")[0].split("^")
    return parts[index - 1].strip() if len(parts) >= index else ""


def _field(segment: Segment | None, number: int) -> str:
    if segment is None:
        return ""
    name = f"{segment.name.lower()}_{number}"
    for child in segment.children:
        if child.name.lower() == name:
            return str(child.to_er7())
    return ""


def header_of(raw: str) -> Header:
    """MSH-3..12 read by splitting, so even a message hl7apy cannot parse gets an answer."""
    first = raw.replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        raise OrderError("AR", "not an HL7 v2 message: no MSH segment", ERR_SEGMENT_SEQUENCE)
    fields = first.split(first[3])

    def msh(n: int) -> str:
        return fields[n - 1] if len(fields) >= n else ""

    kind = msh(9).split("^")
    return Header(
        sending_application=_component(msh(3), 1),
        sending_facility=_component(msh(4), 1),
        receiving_application=_component(msh(5), 1),
        receiving_facility=_component(msh(6), 1),
        message_type="^".join(kind[:2]),
        control_id=msh(10),
        version=msh(12),
    )


def _person(xcn: str) -> str:
    """An XCN as ``id^family^given`` (what the draft shows as ordering provider)."""
    parts = [_component(xcn, i) for i in (1, 2, 3)]
    return "^".join(parts).strip("^")


def _priority(segments: dict[str, Segment]) -> Priority | None:
    for value in (
        _field(segments.get("TQ1"), 9),
        _component(_field(segments.get("ORC"), 7), 6),
        _component(_field(segments.get("OBR"), 27), 6),
        _field(segments.get("OBR"), 5),
    ):
        code = _component(value, 1).upper()
        if code:
            return PRIORITIES.get(code, Priority.routine)
    return None


def _accession(segments: dict[str, Segment]) -> str:
    orc, obr = segments.get("ORC"), segments.get("OBR")
    for value in (
        _field(segments.get("IPC"), 1),
        _field(obr, 18),
        _field(orc, 3),
        _field(obr, 3),
    ):
        accession = _component(value, 1)
        if accession:
            return accession
    return ""


def first_segments(raw: str) -> str:
    """The first segment of each name, in order: all the order reads. hl7apy builds a tree of
    objects per segment, and a message of 20,000 NTE segments cost the listener 150 MB
    (bench/fuzz.py); the raw message is stored whole all the same."""
    first: dict[str, str] = {}
    for segment in raw.replace("\n", "\r").split("\r"):
        if segment:
            first.setdefault(segment[:3], segment)
    return "\r".join(first.values())


def parse_order(raw: str, header: Header) -> OrderFields:
    """The order in ``raw``; :class:`OrderError` (AE/AR) when it cannot be taken."""
    if header.message_type not in ORDER_TYPES:
        raise OrderError(
            "AR",
            f"message type {header.message_type.replace('^', ' ') or '(none)'} is not taken "
            f"here: only {', '.join(sorted(t.replace('^', ' ') for t in ORDER_TYPES))}",
            ERR_UNSUPPORTED_MESSAGE_TYPE,
        )
    try:
        message = parse_message(first_segments(raw), find_groups=False)
    except (HL7apyException, ValueError) as error:
        raise OrderError(
            "AR", f"message cannot be parsed: {error}", ERR_SEGMENT_SEQUENCE
        ) from error
    segments: dict[str, Segment] = {}
    for child in message.children:
        segments.setdefault(child.name, child)
    for needed in ("PID", "ORC"):
        if needed not in segments:
            raise OrderError("AE", f"the order has no {needed} segment", ERR_SEGMENT_SEQUENCE)
    orc, obr, pid = segments["ORC"], segments.get("OBR"), segments["PID"]
    accession = _accession(segments)
    if not accession:
        raise OrderError(
            "AE",
            "no accession number (IPC-1, OBR-18, ORC-3 or OBR-3 are all empty)",
            ERR_REQUIRED_FIELD_MISSING,
        )
    control = _component(_field(orc, 1), 1).upper()
    patient_id = _component(_field(pid, 3), 1)
    if not patient_id:
        raise OrderError("AE", "no patient identifier in PID-3", ERR_REQUIRED_FIELD_MISSING)
    reason = _field(obr, 31)
    return OrderFields(
        accession_number=accession[:64],
        placer_order_number=_component(_field(orc, 2) or _field(obr, 2), 1)[:64],
        filler_order_number=_component(_field(orc, 3) or _field(obr, 3), 1)[:64],
        order_control=control[:4],
        cancelled=control in CANCEL_CONTROLS or _component(_field(orc, 5), 1).upper() == "CA",
        priority=_priority(segments),
        indication=_component(reason, 2) or _component(reason, 1) or _field(obr, 13),
        ordering_provider=_person(_field(orc, 12) or _field(obr, 16)),
        patient_id=patient_id[:64],
        patient_id_authority=_component(_field(pid, 3), 4)[:64],
        patient_name=_field(pid, 5).split("~")[0][:324],
    )


def _clean(value: str, limit: int = 200) -> str:
    """Text safe inside one ER7 field: separators and line ends replaced."""
    for char in "|^~\\&\r\n":
        value = value.replace(char, " ")
    return value[:limit]


#: HD component lengths in HL7 v2.5.1 (ch. 2.A.36): namespace ID (IS), universal ID, its type.
_HD_LENGTHS = (20, 199, 6)


def _hd(value: str) -> str:
    """An HD (MSH-3 to MSH-6) echoed into an ACK: its components kept, each cleaned of other
    separators and cut to its length (a longer namespace ID is refused by strict readers)."""
    parts = value.split("^")[: len(_HD_LENGTHS)]
    cleaned = (_clean(part, limit) for part, limit in zip(parts, _HD_LENGTHS, strict=False))
    return "^".join(cleaned).rstrip("^")


def ack(
    header: Header | None,
    code: str,
    text: str = "",
    error: tuple[str, str] | None = None,
    *,
    application: str = "RADDRAFT",
    now: dt.datetime | None = None,
) -> str:
    """An original-mode ACK (MSA-1 ``code``, MSA-2 the message's control id, MSA-3 ``text``)
    with an ERR segment when ``error`` is given; sender and receiver swapped."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    sender = header.sending_application if header else ""
    facility = header.sending_facility if header else ""
    receiving_facility = header.receiving_facility if header else ""
    control_id = header.control_id if header else ""
    trigger = header.message_type.split("^")[1] if header and "^" in header.message_type else ""
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                _hd(application),
                _hd(receiving_facility),
                _hd(sender),
                _hd(facility),
                stamp,
                "",
                f"ACK^{_clean(trigger, 3)}^ACK",
                # MSH-10 is at most 20 characters in v2.5.1: A + yymmddhhmmss + 7.
                "A" + stamp[2:] + _clean(control_id, 7),
                "P",
                "2.5.1",
            ]
        ),
        f"MSA|{code}|{_clean(control_id, 50)}|{_clean(text, 80)}",
    ]
    if error is not None:
        # ERR-3 HL7 error code (table 0357), ERR-4 severity, ERR-8 user message.
        segments.append(f"ERR|||{error[0]}^{_clean(error[1])}^HL70357|E||||{_clean(text)}")
    return "\r".join(segments)
