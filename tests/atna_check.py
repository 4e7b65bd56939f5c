"""What an audit repository checks of an ATNA message: the DICOM audit message schema (PS3.15
A.5.1, ``tests/atna/audit-message.rng``, validated by libxml2's ``xmllint``) and, per event,
the participants and objects PS3.15 A.5.3 requires (which a schema cannot say).

:func:`audit_errors` returns why a message fails, empty when it passes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree as ET

SCHEMA = Path(__file__).parent / "atna" / "audit-message.rng"
XMLLINT = shutil.which("xmllint") or "/usr/bin/xmllint"

SOURCE, DESTINATION = "110153", "110152"
STUDY_UID, PATIENT_NUMBER, SOP_CLASS_UID = "110180", "2", "110181"


def schema_errors(xml: bytes) -> list[str]:
    """``xml`` against the PS3.15 A.5.1 schema; the validator's complaints."""
    with tempfile.NamedTemporaryFile(suffix=".xml") as handle:
        handle.write(xml)
        handle.flush()
        done = subprocess.run(
            [XMLLINT, "--noout", "--relaxng", str(SCHEMA), handle.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    if done.returncode == 0:
        return []
    return [line for line in done.stderr.splitlines() if "validates" not in line] or [
        f"xmllint exited {done.returncode}"
    ]


def _roles(message: ET.Element) -> list[str]:
    return [
        code.attrib.get("csd-code", "") for code in message.findall("ActiveParticipant/RoleIDCode")
    ]


def _objects(message: ET.Element, type_code: str, role: str, id_type: str) -> list[ET.Element]:
    return [
        node
        for node in message.findall("ParticipantObjectIdentification")
        if node.attrib.get("ParticipantObjectTypeCode") == type_code
        and node.attrib.get("ParticipantObjectTypeCodeRole") == role
        and node.find(f"ParticipantObjectIDTypeCode[@csd-code='{id_type}']") is not None
    ]


def _patients(message: ET.Element) -> list[ET.Element]:
    """Patient objects: person (1), role patient (1), ID type Patient Number (2)."""
    return _objects(message, "1", "1", PATIENT_NUMBER)


def _one_patient(message: ET.Element) -> list[str]:
    count = len(_patients(message))
    return [] if count == 1 else [f"{count} Patient participant objects (1/1, ID type 2), not 1"]


def _source_and_destination(message: ET.Element) -> list[str]:
    roles = _roles(message)
    return [
        f"no active participant with role {role} ({name})"
        for role, name in ((SOURCE, "Source"), (DESTINATION, "Destination"))
        if role not in roles
    ]


def _requestor(message: ET.Element) -> list[str]:
    found = message.find("ActiveParticipant[@UserIsRequestor='true']")
    return [] if found is not None else ["no active participant is the requestor"]


def _studies(message: ET.Element) -> list[str]:
    studies = _objects(message, "2", "3", STUDY_UID)
    return [] if studies else ["no Study participant object (2/3, ID type 110180)"]


def _transferred(message: ET.Element) -> list[str]:
    """A.5.3.4 DICOM Instances Transferred: source, destination, studies, one patient."""
    return _source_and_destination(message) + _studies(message) + _one_patient(message)


def _accessed(message: ET.Element) -> list[str]:
    """A.5.3.3 DICOM Instances Accessed: the person or process, studies, one patient."""
    return _requestor(message) + _studies(message) + _one_patient(message)


def _query(message: ET.Element) -> list[str]:
    """A.5.3.12 Query: source (requestor) and destination; the SOP class queried with the
    query itself (type 2, role 3 "Report" as A.5.3.12 has it, ID type 110181)."""
    queries = [
        node
        for node in _objects(message, "2", "3", SOP_CLASS_UID)
        if node.find("ParticipantObjectQuery") is not None
    ]
    errors = _source_and_destination(message)
    if len(queries) != 1:
        errors.append(f"{len(queries)} query objects (2/3, ID type 110181, with the query)")
    return errors


def _patient_record(message: ET.Element) -> list[str]:
    """A.5.3.10 Patient Record: the requestor and exactly one patient."""
    return _requestor(message) + _one_patient(message)


def _export(message: ET.Element) -> list[str]:
    """A.5.3.6 Data Export: source (the exporter, requestor), destination, one patient."""
    return _source_and_destination(message) + _requestor(message) + _one_patient(message)


def _typed(message: ET.Element) -> list[str]:
    """Security Alert and User Authentication need an EventTypeCode (A.5.3.11, A.5.3.18)."""
    found = message.find("EventIdentification/EventTypeCode")
    return [] if found is not None else ["no EventTypeCode"]


RULES: dict[str, Callable[[ET.Element], list[str]]] = {
    "110104": _transferred,
    "110103": _accessed,
    "110112": _query,
    "110110": _patient_record,
    "110106": _export,
    "110113": _typed,
    "110114": _typed,
}


def structure_errors(xml: bytes) -> list[str]:
    """The participants and objects the message's event needs (PS3.15 A.5.3)."""
    message = ET.fromstring(xml)
    event = message.find("EventIdentification/EventID")
    code = event.attrib.get("csd-code", "") if event is not None else ""
    rule = RULES.get(code)
    if rule is None:
        return [f"event {code!r} is not one RadDraft sends"]
    return [f"event {code}: {error}" for error in rule(message)]


def audit_errors(xml: bytes) -> list[str]:
    """Why an audit repository refuses ``xml``; empty when it takes it."""
    errors = schema_errors(xml)
    return errors or structure_errors(xml)
