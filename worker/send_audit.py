"""The ATNA records of what RadDraft sends (IHE ITI ATNA, PS3.15 A.5.3): one call,
:func:`send_audited`, around a peers sender's send, so every outbound path is audited alike.

- SR, GSPS and KOS stored to a PACS (C-STORE or STOW-RS): DICOM Instances Transferred
  (A.5.3.4), RadDraft the Source and requestor, the PACS the Destination, one record per patient;
- an ORU^R01 to the RIS (the report, or a critical-finding notice), FHIR resources to a server:
  Export (A.5.3.6) with the patient and the report (its MSH-10 control id, its resources' URLs).

What was delivered is recorded as a success, what the peer refused or never took as a minor
failure. The facts come from the payloads being sent (DICOM header, ER7 PID, FHIR subject), so
the record names exactly what left. Without a collector nothing is read or built.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import pydicom

import peers
from raddraft import atna

log = logging.getLogger(__name__)

_DICOM_KINDS = frozenset(("dicom", "stow"))
#: The kinds audited: a critical-finding e-mail (``smtp``) names its patient only in prose.
_AUDITED_KINDS = _DICOM_KINDS | {"hl7", "fhir"}
_HL7_ESCAPES = (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~"), ("\\E\\", "\\"))


@dataclass(frozen=True)
class _Sent:
    """One object as the record names it: its patient, and its study and SOP class (DICOM)."""

    identifier: str
    patient_id: str
    patient_name: str
    study_uid: str = ""
    sop_class_uid: str = ""


def send_audited(sender: peers.Sender, outbound: Sequence[peers.Outbound]) -> peers.Delivery:
    """``sender.send(outbound)``, then its ATNA records; a failure is recorded and re-raised."""
    if sender.kind not in _AUDITED_KINDS or not atna.enabled():
        return sender.send(outbound)
    try:
        delivery = sender.send(outbound)
    except peers.DeliveryError as error:
        _audit(sender, outbound, error.delivered, error.failed)
        raise
    _audit(sender, outbound, delivery.delivered, ())
    return delivery


def _audit(
    sender: peers.Sender,
    outbound: Sequence[peers.Outbound],
    delivered: Sequence[str],
    failed: Sequence[str],
) -> None:
    by_id = {item.identifier: item for item in outbound}
    for identifiers, outcome in ((delivered, atna.SUCCESS), (failed, atna.MINOR_FAILURE)):
        items = [by_id[i] for i in identifiers if i in by_id]
        if not items:
            continue
        try:
            for xml in _records(sender, items, outcome):
                atna.emit(xml)
        except (OSError, ValueError) as error:  # an unreadable payload must not fail a send
            log.error("ATNA record of a send not built %s", f"error={error!r}")


def _records(
    sender: peers.Sender, items: Sequence[peers.Outbound], outcome: str
) -> Iterator[bytes]:
    sent = _fill_patient([_read(sender.kind, item) for item in items])
    user, address = _peer(sender)
    by_patient: dict[tuple[str, str], list[_Sent]] = defaultdict(list)
    for one in sent:
        by_patient[(one.patient_id, one.patient_name)].append(one)
    for (patient_id, patient_name), group in by_patient.items():
        if sender.kind in _DICOM_KINDS:
            studies: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for one in group:
                studies[one.study_uid][one.sop_class_uid] += 1
            yield atna.instances_sent(
                source=atna.raddraft(requestor=True),
                destination=atna.Participant(user, False, address=address),
                patient_id=patient_id,
                patient_name=patient_name,
                studies={study: dict(classes) for study, classes in studies.items()},
                outcome=outcome,
            )
        else:
            yield atna.export(
                destination=user,
                address=address,
                patient_id=patient_id,
                patient_name=patient_name,
                data=[_data_object(sender, one) for one in group],
                outcome=outcome,
            )


def _fill_patient(sent: list[_Sent]) -> list[_Sent]:
    """Objects that name no patient (a FHIR Provenance) take the one patient of the batch: a
    batch is one report version's."""
    known = {(one.patient_id, one.patient_name) for one in sent if one.patient_id}
    if len(known) != 1:
        return sent
    ((patient_id, patient_name),) = known
    return [
        one if one.patient_id else _Sent(one.identifier, patient_id, patient_name) for one in sent
    ]


def _peer(sender: peers.Sender) -> tuple[str, str]:
    """The receiver as an active participant: its AE title or URL, and its host."""
    destination = sender.destination
    if "://" in destination:
        return destination, urlsplit(destination).hostname or ""
    aet, _, where = destination.rpartition("@")
    host = where.rsplit(":", 1)[0].strip("[]")
    return aet or destination, host


def _data_object(sender: peers.Sender, sent: _Sent) -> atna.ParticipantObject:
    """The report sent: its MSH-10 (RFC 3881 Report Number), or its FHIR resource's URL."""
    if sender.kind == "fhir":
        url = f"{sender.destination.rstrip('/')}/{sent.identifier}"
        return atna.ParticipantObject(url, atna.URI, "2", "3")
    return atna.ParticipantObject(
        sent.identifier, atna.REPORT_NUMBER, "2", "3", details=(("MSH-10", sent.identifier),)
    )


def _read(kind: str, item: peers.Outbound) -> _Sent:
    if kind in _DICOM_KINDS:
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        return _Sent(
            item.identifier,
            str(ds.get("PatientID", "")),
            str(ds.get("PatientName", "")),
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SOPClassUID", "")),
        )
    text = item.path.read_text(encoding="utf-8")
    if kind == "fhir":
        return _fhir_patient(item.identifier, json.loads(text))
    return _hl7_patient(item.identifier, text)


def _fhir_patient(identifier: str, resource: dict[str, object]) -> _Sent:
    """The patient a FHIR resource is about (``subject``, by identifier: RadDraft serves no
    Patient resource); a Provenance names none, so its sender's patient is unknown here."""
    subject = resource.get("subject")
    if isinstance(subject, dict):
        ident = subject.get("identifier")
        value = ident.get("value", "") if isinstance(ident, dict) else ""
        return _Sent(identifier, str(value or subject.get("reference", "")), "")
    return _Sent(identifier, "", "")


def _hl7_unescape(value: str) -> str:
    for sequence, char in _HL7_ESCAPES:
        value = value.replace(sequence, char)
    return value


def _hl7_patient(identifier: str, er7: str) -> _Sent:
    """PID-3.1 and PID-5 of an ER7 message (HL7 v2.5.1 ch. 3.4.2)."""
    for segment in er7.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "PID" and len(fields) > 3:
            name = fields[5] if len(fields) > 5 else ""
            return _Sent(
                identifier,
                _hl7_unescape(fields[3].split("~")[0].split("^")[0]),
                _hl7_unescape(name.split("~")[0]),
            )
    return _Sent(identifier, "", "")
