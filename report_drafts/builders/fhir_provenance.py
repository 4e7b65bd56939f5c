"""Who made a report version (FHIR R4B Provenance, https://hl7.org/fhir/R4B/provenance.html):
the AI model as a Device author (https://hl7.org/fhir/R4B/device.html) and, once signed, the
radiologist as a Practitioner verifier (https://hl7.org/fhir/R4B/practitioner.html).

The Device carries the same UID as the SR's Device Observer UID (PS3.16 TID 1004), so the FHIR
and DICOM sides name the same model version.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance

from report_drafts.builders._fhir import (
    DICOM_UID_SYSTEM,
    PARTICIPANT_TYPE,
    USER_SYSTEM,
    check_id,
    instant,
    practitioner_reference,
    resource_id_for,
)
from report_drafts.content import DEMO_WARNING, Algorithm, Signer


def practitioner(signer: Signer) -> Practitioner:
    """The signing radiologist (R4B Practitioner), id derived from the login."""
    family, _, given = signer.name.partition("^")
    name: dict[str, Any] = {"text": signer.name.replace("^", " ").strip()}
    if family:
        name["family"] = family
    if given:
        name["given"] = [g for g in given.split("^") if g][:1] or [given]
    return Practitioner.model_validate(
        {
            "resourceType": "Practitioner",
            "id": resource_id_for(signer.login),
            "identifier": [{"system": USER_SYSTEM, "value": signer.login}],
            "name": [name],
        }
    )


def device(algorithm: Algorithm, *, resource_id: str, device_uid: str) -> Device:
    """The AI model as a Device: the same UID as the SR's Device Observer UID (TID 1004)."""
    data: dict[str, Any] = {
        "resourceType": "Device",
        "id": check_id(resource_id),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{device_uid}"}],
        "manufacturer": "RadDraft",
        "deviceName": [{"name": algorithm.name, "type": "model-name"}],
        "version": [{"value": algorithm.version}],
        "status": "active",
    }
    if algorithm.demo:
        data["note"] = [{"text": DEMO_WARNING}]
    return Device.model_validate(data)


def provenance(
    *,
    resource_id: str,
    targets: Sequence[str],
    recorded: dt.datetime,
    algorithm: Algorithm,
    device_id: str,
    signer: Signer | None = None,
) -> Provenance:
    """Who made a report version (R4B 6.3): the AI device as author, the radiologist as
    verifier once signed. ``targets`` are literal references, e.g. ``DiagnosticReport/42``."""
    if not targets:
        raise ValueError("a Provenance needs at least one target")

    def agent(code: str, display: str, who: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": code, "display": display}]},
            "who": who,
        }

    agents = [
        agent(
            "author",
            "Author",
            {
                "reference": f"Device/{check_id(device_id)}",
                "type": "Device",
                "display": f"{algorithm.name} {algorithm.version} (RadDraft "
                f"{algorithm.program_version})",
            },
        )
    ]
    if signer is not None:
        agents.append(agent("verifier", "Verifier", practitioner_reference(signer)))
    return Provenance.model_validate(
        {
            "resourceType": "Provenance",
            "id": check_id(resource_id),
            "target": [{"reference": t} for t in targets],
            "recorded": instant(recorded, "recorded"),
            "agent": agents,
        }
    )
