"""IHE ATNA audit records: DICOM PS3.15 A.5 audit messages sent over syslog.

Each event the profile names has a builder here (PS3.15 A.5.3): User Authentication (login,
logout, failed login), DICOM Instances Transferred (received by the listener or STOW-RS, sent
to a PACS, read by WADO-RS), DICOM Instances Accessed, Query (a C-FIND RadDraft sends, a QIDO-RS
search it answers), Security Alert (node authentication failures: a refused association, a
failed TLS handshake), Patient Record (a report signed, amended or rejected) and Data Export (a
report sent to the RIS over HL7 v2 or to a FHIR server, which IHE ITI audits as Export of the
sender). Every message is valid against the schema of A.5.1: each participant object carries a
name or a query, detail values are base64. The message is the XML of the DICOM audit message
schema (A.5.1), framed as an RFC 5424 syslog message (facility 10 security/authorization,
severity 5 notice: ``<85>``; MSGID ``IHE+RFC-3881`` per IHE ITI TF-2 3.20.7) and sent:

- over TLS with octet counting (RFC 5425), the profile's transport; the client certificate is
  ``RADDRAFT_ATNA_TLS_CERT``/``KEY`` (else ``RADDRAFT_TLS_CERT``/``KEY``), the collector is
  checked against ``RADDRAFT_ATNA_TLS_CA``;
- over UDP (RFC 5426), one message per datagram, for labs; or plain TCP with octet counting.

Sending never blocks or fails the caller: :func:`emit` puts the message on a bounded queue that
one background thread drains, reconnecting after a failure (the message is kept and retried).
The database audit log (report_drafts/audit.py) stays the record of what happened; this is the
hospital's copy. Without ``RADDRAFT_ATNA_COLLECTOR`` nothing is sent.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import ipaddress
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from sqlalchemy import event
from sqlalchemy.orm import Session

from raddraft.settings import Settings, get_settings
from raddraft.tls import client_context

__all__ = [
    "Participant",
    "ParticipantObject",
    "dicomweb_read",
    "dicomweb_search",
    "emit",
    "emit_on_commit",
    "enabled",
    "export",
    "flush",
    "instances_accessed",
    "instances_sent",
    "instances_transferred",
    "patient_record",
    "query",
    "security_alert",
    "syslog_frame",
    "user_authentication",
]

log = logging.getLogger(__name__)

PRI = "<85>"  # facility 10 (security/authorization), severity 5 (notice): RFC 5424 6.2.1
MSGID = "IHE+RFC-3881"
_QUEUE_LIMIT = 10_000

# Outcome indicators (PS3.15 A.5.1): success, minor failure, serious failure, major failure.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


@dataclass(frozen=True)
class Code:
    """A coded entry (csd-code, codeSystemName, originalText), PS3.15 A.5.1 CodedValueType."""

    code: str
    system: str
    meaning: str

    def element(self, tag: str) -> ET.Element:
        return ET.Element(
            tag,
            {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.meaning},
        )


# Event IDs and types (PS3.16 CID 400-403 codes, DCM).
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
EXPORT = Code("110106", "DCM", "Export")
# Active participant roles (CID 402) and object ID types (CID 404, RFC 3881).
SOURCE_ROLE = Code("110153", "DCM", "Source Role ID")
DESTINATION_ROLE = Code("110152", "DCM", "Destination Role ID")
APPLICATION = Code("110150", "DCM", "Application")
STUDY_UID = Code("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
REPORT_NUMBER = Code("9", "RFC-3881", "Report Number")
URI = Code("12", "RFC-3881", "URI")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode (PS3.15 A.5.1): 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "1"
    return "2"


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant (PS3.15 A.5.2.1): who or what took part, from where."""

    user_id: str
    requestor: bool
    address: str = ""
    role: Code | None = None
    name: str = ""

    def element(self) -> ET.Element:
        attributes = {"UserID": self.user_id, "UserIsRequestor": str(self.requestor).lower()}
        if self.name:
            attributes["UserName"] = self.name
        if self.address:
            attributes["NetworkAccessPointID"] = self.address
            attributes["NetworkAccessPointTypeCode"] = _access_point_type(self.address)
        node = ET.Element("ActiveParticipant", attributes)
        if self.role is not None:
            node.append(self.role.element("RoleIDCode"))
        return node


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObjectIdentification (PS3.15 A.5.2.4): the patient, study, query.

    The schema (A.5.1) wants a ParticipantObjectName or a ParticipantObjectQuery: without a
    query the name is ``name``, else the ID. Detail values are written base64 (ValuePair).
    """

    object_id: str
    id_type: Code
    type_code: str  # 1 person, 2 system object
    role: str  # 1 patient, 3 report, 24 query ...
    name: str = ""
    query: bytes = b""
    details: tuple[tuple[str, str], ...] = ()
    sop_classes: tuple[tuple[str, int], ...] = field(default=())

    def element(self) -> ET.Element:
        node = ET.Element(
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": self.object_id,
                "ParticipantObjectTypeCode": self.type_code,
                "ParticipantObjectTypeCodeRole": self.role,
            },
        )
        node.append(self.id_type.element("ParticipantObjectIDTypeCode"))
        if self.query:
            ET.SubElement(node, "ParticipantObjectQuery").text = base64.b64encode(
                self.query
            ).decode()
        else:
            ET.SubElement(node, "ParticipantObjectName").text = self.name or self.object_id
        for kind, value in self.details:
            encoded = base64.b64encode(value.encode()).decode()
            ET.SubElement(node, "ParticipantObjectDetail", {"type": kind, "value": encoded})
        if self.sop_classes:
            description = ET.SubElement(node, "ParticipantObjectDescription")
            for uid, count in self.sop_classes:
                ET.SubElement(
                    description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)}
                )
        return node


def message(
    event: Code,
    action: str,
    outcome: str,
    participants: Iterable[Participant],
    objects: Iterable[ParticipantObject] = (),
    *,
    event_type: Code | None = None,
    settings: Settings | None = None,
    when: dt.datetime | None = None,
) -> bytes:
    """One AuditMessage (PS3.15 A.5.1) as UTF-8 XML."""
    settings = settings or get_settings()
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": (when or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": outcome,
        },
    )
    identification.append(event.element("EventID"))
    if event_type is not None:
        identification.append(event_type.element("EventTypeCode"))
    for participant in participants:
        root.append(participant.element())
    source = ET.SubElement(
        root,
        "AuditSourceIdentification",
        {"AuditSourceID": settings.atna_source_id or settings.ae_title},
    )
    # 4: application server process tier (PS3.15 A.5.1.2.1); a bare digit, as the schema allows
    # (a codeSystemName would need an originalText too)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})
    for item in objects:
        root.append(item.element())
    # One line: syslog collectors store a message per line (no newline after the declaration).
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def _application(settings: Settings, *, requestor: bool, role: Code | None = None) -> Participant:
    return Participant(
        settings.ae_title,
        requestor,
        address=socket.gethostname(),
        role=role or APPLICATION,
        name=f"AETITLES={settings.ae_title}",
    )


def user_authentication(
    user: str, address: str, *, logout: bool = False, success: bool = True
) -> bytes:
    """A login, logout or failed login at the web app (PS3.15 A.5.3.18)."""
    settings = get_settings()
    return message(
        USER_AUTHENTICATION,
        "E",
        SUCCESS if success else MINOR_FAILURE,
        [Participant(user, True, address=address), _application(settings, requestor=False)],
        event_type=LOGOUT if logout else LOGIN,
        settings=settings,
    )


def patient(patient_id: str, name: str = "") -> ParticipantObject:
    """The Patient participant object: person (1), role patient (1), Patient Number (2)."""
    return ParticipantObject(patient_id, PATIENT_NUMBER, "1", "1", name=name)


def _study_objects(
    patient_id: str, studies: dict[str, dict[str, int]], patient_name: str = ""
) -> list[ParticipantObject]:
    objects = [
        ParticipantObject(
            study, STUDY_UID, "2", "3", sop_classes=tuple(sorted(sop_classes.items()))
        )
        for study, sop_classes in sorted(studies.items())
    ]
    if patient_id:
        objects.append(patient(patient_id, patient_name))
    return objects


def instances_transferred(
    *,
    source_aet: str,
    source_address: str,
    patient_id: str,
    studies: dict[str, dict[str, int]],
    outcome: str = SUCCESS,
) -> bytes:
    """Instances received by the listener (PS3.15 A.5.3.4, action C: created)."""
    settings = get_settings()
    return message(
        INSTANCES_TRANSFERRED,
        "C",
        outcome,
        [
            Participant(source_aet, True, address=source_address, role=SOURCE_ROLE),
            _application(settings, requestor=False, role=DESTINATION_ROLE),
        ],
        _study_objects(patient_id, studies),
        settings=settings,
    )


def instances_sent(
    *,
    source: Participant,
    destination: Participant,
    patient_id: str,
    studies: dict[str, dict[str, int]],
    patient_name: str = "",
    outcome: str = SUCCESS,
) -> bytes:
    """Instances RadDraft sent: SR/GSPS/KOS stored to a PACS, images read by WADO-RS (PS3.15
    A.5.3.4). Action R: the audit source is not the receiver and cannot know whether the
    receiver held them before. ``source`` and ``destination`` say who asked (UserIsRequestor)."""
    return message(
        INSTANCES_TRANSFERRED,
        "R",
        outcome,
        [replace_role(source, SOURCE_ROLE), replace_role(destination, DESTINATION_ROLE)],
        _study_objects(patient_id, studies, patient_name),
    )


def replace_role(participant: Participant, role: Code) -> Participant:
    """``participant`` in ``role`` (Source, Destination)."""
    return Participant(
        participant.user_id,
        participant.requestor,
        address=participant.address,
        role=role,
        name=participant.name,
    )


def raddraft(settings: Settings | None = None, *, requestor: bool) -> Participant:
    """RadDraft itself as an active participant (its AE title, this host)."""
    return _application(settings or get_settings(), requestor=requestor)


def export(
    *,
    destination: str,
    address: str,
    patient_id: str,
    patient_name: str,
    data: Iterable[ParticipantObject],
    outcome: str = SUCCESS,
) -> bytes:
    """A report sent out of RadDraft: an ORU^R01 to the RIS, FHIR resources to a server.

    IHE ITI audits a push of patient data to another system as Export (DCM 110106, PS3.15
    A.5.3.6) by the sender: RadDraft the Source and requestor, the receiver the Destination,
    the patient (1/1/2) and the data sent (``data``: the report, the resources) as participant
    objects.
    """
    settings = get_settings()
    return message(
        EXPORT,
        "R",
        outcome,
        [
            _application(settings, requestor=True, role=SOURCE_ROLE),
            Participant(destination, False, address=address, role=DESTINATION_ROLE),
        ],
        [patient(patient_id, patient_name), *data],
        settings=settings,
    )


#: The SOP class a QIDO-RS search stands for (PS3.18 10.6 maps it onto the Study Root C-FIND).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def dicomweb_search(user: str, address: str, request: str) -> bytes:
    """A QIDO-RS search RadDraft answered: Query (PS3.15 A.5.3.12), the user the Source and
    requestor, ``request`` (the path and query string) the query."""
    return query(
        destination="",
        address="",
        sop_class_uid=STUDY_ROOT_FIND,
        identifier=request.encode(),
        outcome=SUCCESS,
        requestor=Participant(user, True, address=address),
        transfer_syntax=None,
    )


def dicomweb_read(
    user: str, address: str, instances: Iterable[tuple[str, str, str, str]]
) -> list[bytes]:
    """A WADO-RS read (instances, metadata, frames, rendered): DICOM Instances Transferred
    (A.5.3.4) from RadDraft to the user who asked, one record per patient. ``instances``:
    (patient ID, patient name, Study Instance UID, SOP Class UID) of each instance read."""
    tally: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for patient_id, patient_name, study_uid, sop_class_uid in instances:
        classes = tally.setdefault((patient_id, patient_name), {}).setdefault(study_uid, {})
        classes[sop_class_uid] = classes.get(sop_class_uid, 0) + 1
    return [
        instances_sent(
            source=raddraft(requestor=False),
            destination=Participant(user, True, address=address),
            patient_id=patient_id,
            patient_name=patient_name,
            studies=studies,
        )
        for (patient_id, patient_name), studies in tally.items()
    ]


def instances_accessed(user: str, address: str, patient_id: str, study_uid: str) -> bytes:
    """A user read a study's images or report (PS3.15 A.5.3.3, action R: read)."""
    settings = get_settings()
    return message(
        INSTANCES_ACCESSED,
        "R",
        SUCCESS,
        [Participant(user, True, address=address), _application(settings, requestor=False)],
        _study_objects(patient_id, {study_uid: {}}),
        settings=settings,
    )


def query(
    *,
    destination: str,
    address: str,
    sop_class_uid: str,
    identifier: bytes,
    outcome: str,
    requestor: Participant | None = None,
    transfer_syntax: str | None = "1.2.840.10008.1.2",
) -> bytes:
    """A query (PS3.15 A.5.3.12, action E: execute): a C-FIND RadDraft sent to ``destination``
    or, with ``requestor``, a search RadDraft answered (QIDO-RS: the requestor the Source,
    RadDraft the Destination; ``identifier`` the query as sent). ``transfer_syntax`` is the
    encoding of ``identifier`` when it is a DICOM data set (a detail; none for a URL query)."""
    settings = get_settings()
    if requestor is None:
        participants = [
            _application(settings, requestor=True, role=SOURCE_ROLE),
            Participant(destination, False, address=address, role=DESTINATION_ROLE),
        ]
    else:
        participants = [
            replace_role(requestor, SOURCE_ROLE),
            _application(settings, requestor=False, role=DESTINATION_ROLE),
        ]
    return message(
        QUERY,
        "E",
        outcome,
        participants,
        [
            ParticipantObject(
                sop_class_uid,
                SOP_CLASS_UID,
                "2",
                "3",
                query=identifier,
                details=(("TransferSyntax", transfer_syntax),) if transfer_syntax else (),
            )
        ],
        settings=settings,
    )


def security_alert(*, peer: str, calling_aet: str, why: str) -> bytes:
    """A node that failed authentication: a refused association or TLS handshake (A.5.3.11)."""
    settings = get_settings()
    return message(
        SECURITY_ALERT,
        "E",
        MINOR_FAILURE,
        [
            Participant(calling_aet or peer, False, address=peer.rsplit(":", 1)[0]),
            _application(settings, requestor=True),
        ],
        [ParticipantObject(peer, NODE_ID, "2", "13", details=(("Alert Description", why),))],
        event_type=NODE_AUTHENTICATION,
        settings=settings,
    )


def report_object(report_id: str, version: int, study_uid: str) -> ParticipantObject:
    """A report version as a participant object: system object (2), role Report (3), ID type
    Report Number (RFC 3881 code 9, PS3.15 A.5.2.4), its version a detail."""
    return ParticipantObject(
        report_id,
        REPORT_NUMBER,
        "2",
        "3",
        name=f"report of study {study_uid}" if study_uid else "",
        details=(("Version", str(version)),),
    )


def patient_record(
    *,
    user: str,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    report_id: str,
    version: int,
    action: str = "U",
) -> bytes:
    """A report version signed, amended or rejected (PS3.15 A.5.3.10 Patient Record): the
    Patient participant object (1/1, Patient Number), the report version (2/3, Report Number)
    and its study (2/3, Study Instance UID)."""
    settings = get_settings()
    objects = [
        patient(patient_id, patient_name),
        report_object(report_id, version, study_uid),
        ParticipantObject(study_uid, STUDY_UID, "2", "3"),
    ]
    return message(
        PATIENT_RECORD,
        action,
        SUCCESS,
        [Participant(user, True), _application(settings, requestor=False)],
        objects,
        settings=settings,
    )


# -- the syslog transport ------------------------------------------------------------------------


def syslog_frame(xml: bytes, *, when: dt.datetime | None = None, app: str = "raddraft") -> bytes:
    """An RFC 5424 message: ``<85>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - XML``."""
    stamp = (when or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")
    host = (socket.gethostname() or "-")[:255]
    header = f"{PRI}1 {stamp} {host} {app} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + xml


def octet_counted(frame: bytes) -> bytes:
    """RFC 5425 4.3 / RFC 6587 3.4.1 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(frame)).encode() + b" " + frame


class _Sender(threading.Thread):
    """Drains the queue to the collector; reconnects and retries after a failure."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="raddraft-atna", daemon=True)
        self.settings = settings
        self.queue: queue.Queue[bytes] = queue.Queue(_QUEUE_LIMIT)
        self.sock: socket.socket | None = None
        self.idle = threading.Event()
        self.idle.set()
        host, _, port = settings.atna_collector.rpartition(":")
        self.address = (host.strip("[]"), int(port))

    def run(self) -> None:
        while True:
            frame = self.queue.get()
            self.idle.clear()
            delay = 0.5
            while not self._send(frame):
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            if self.queue.empty():
                self.idle.set()

    def _send(self, frame: bytes) -> bool:
        transport = self.settings.atna_transport
        try:
            if transport == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.sendto(frame[:65000], self.address)  # RFC 5426 3.2: one per datagram
                return True
            if self.sock is None:
                self.sock = self._connect()
            self.sock.sendall(octet_counted(frame))
            return True
        except (OSError, ssl.SSLError) as error:
            log.warning("ATNA audit record not sent, retrying %s", f"error={error!r}")
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            return False

    def _connect(self) -> socket.socket:
        raw = socket.create_connection(self.address, timeout=10)
        if self.settings.atna_transport == "tcp":
            return raw
        settings = self.settings
        context = client_context(
            settings.atna_tls_ca,
            settings.atna_tls_cert or settings.tls_cert,
            settings.atna_tls_key or settings.tls_key,
        )
        return context.wrap_socket(raw, server_hostname=self.address[0])


_lock = threading.Lock()
_sender: _Sender | None = None


def _forget_sender() -> None:
    """In a forked child, start over: the parent's sender thread did not come along (its queue
    would fill and never drain), and its connection to the collector stays the parent's."""
    global _lock, _sender
    _lock, _sender = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_sender)


def flush_at_exit() -> None:
    """Hand what is queued to the collector before the process ends (its sender thread is a
    daemon, killed at exit); a collector that is down gets a few seconds, not the shutdown."""
    if not flush(_EXIT_FLUSH_SECONDS):
        log.error("ATNA records still queued at exit were not sent; is the collector down?")


_EXIT_FLUSH_SECONDS = 5.0
atexit.register(flush_at_exit)


def enabled(settings: Settings | None = None) -> bool:
    """Whether a collector is configured (callers skip building messages otherwise)."""
    return bool((settings or get_settings()).atna_collector)


def emit(xml: bytes, settings: Settings | None = None) -> None:
    """Queue one audit message for the collector; a no-op without ``RADDRAFT_ATNA_COLLECTOR``."""
    global _sender
    settings = settings or get_settings()
    if not settings.atna_collector:
        return
    with _lock:
        if _sender is None or _sender.settings is not settings:
            _sender = _Sender(settings)
            _sender.start()
        sender = _sender
    try:
        sender.idle.clear()
        sender.queue.put_nowait(syslog_frame(xml))
    except queue.Full:
        log.error("ATNA audit queue full, record dropped; is the collector down?")


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued record was handed to the collector (tests, and at exit:
    :func:`flush_at_exit`)."""
    sender = _sender
    return sender is None or sender.idle.wait(timeout)


def emit_on_commit(session: Session, xml: bytes) -> None:
    """Queue ``xml`` once ``session`` commits, so a rolled-back change leaves no record."""
    if not session.info.get("atna_hooked"):
        # Listeners for the session's whole life: SQLAlchemy keys a listener by its function,
        # so once=True listeners registered again after the first fired would never fire.
        event.listen(session, "after_commit", _flush_pending)
        event.listen(session, "after_rollback", _drop_pending)
        session.info["atna_hooked"] = True
    session.info.setdefault("atna_pending", []).append(xml)


def _flush_pending(session: Session) -> None:
    for xml in session.info.pop("atna_pending", []):
        emit(xml)


def _drop_pending(session: Session) -> None:
    session.info.pop("atna_pending", None)
