"""An amendment keeps the SR's structure true to its text: laterality, site and presence of a
finding follow the radiologist's words; a finding the radiologist added names the radiologist
as its observer (Person Observer, TID 1002/1003), not the algorithm. Read back with highdicom."""

from __future__ import annotations

from typing import Any

import highdicom as hd
import pydicom
from pydicom import Dataset
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import signoff
from report_drafts.tables import Role
from report_drafts.users import add_user
from tests.builders.helpers import dciodvfy_ok
from tests.drafts.helpers import make_draft

RIGHT = "24028007"
LEFT = "7771000"
ALGORITHM_NAME = "111001"  # DCM "Algorithm Name"
PERSON_OBSERVER_NAME = "121008"  # DCM "Person Observer Name"


def _groups(sr: Any) -> dict[str, Any]:
    """The SR's measurement groups (TID 1410 and 1501) by finding meaning, lower case."""
    content = sr.content
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_image_measurement_groups(),
    ]
    return {str(g.finding_type.meaning).lower(): g for g in groups}


def _codes(group: Any, value: str) -> list[Dataset]:
    """Content items of a group's tree whose concept name code is ``value``."""
    found = []
    stack = list(group[0].ContentSequence)
    while stack:
        item = stack.pop()
        if item.ConceptNameCodeSequence[0].CodeValue == value:
            found.append(item)
        stack.extend(item.get("ContentSequence", []))
    return found


def test_amended_sr_structure_follows_the_text_and_names_who_found_what(
    engine: Engine, settings: Settings
) -> None:
    report_id, study = make_draft(engine, settings)
    with session_scope(engine) as session:
        user, _ = add_user(session, "house", Role.radiologist, display_name="House^Gregory")
        signoff.open_report(session, report_id, user)
        current = signoff.get_report(session, report_id).current_version
        signoff.add_finding(
            session,
            report_id,
            user,
            expected_version=current,
            label="pneumothorax",
            laterality="right",
        )
        current = signoff.get_report(session, report_id).current_version
        signoff.sign(
            session,
            report_id,
            user,
            expected_version=current,
            edit_reason="content",
            settings=settings,
        )
        current = signoff.get_report(session, report_id).current_version
        amended = signoff.amend(
            session,
            report_id,
            user,
            expected_version=current,
            reason="laterality",
            corrected=True,
            findings_text="Small right pleural effusion at the right lung base. Heart size normal.",
            impression="Small right pleural effusion. Small right pneumothorax.",
            settings=settings,
        )
        sr_uid = amended.sr_sop_instance_uid
        structure = amended.content["extra"]["structure_changes"]
    assert {"finding": "pleural effusion", "laterality": "right", "site": "base"} in structure
    path = settings.data_dir / "outbox" / f"{sr_uid}.dcm"
    dciodvfy_ok(path)
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    groups = _groups(sr)

    # The effusion's coded laterality is now Right, as the corrected text says.
    effusion = groups["pleural effusion"]
    (site,) = effusion.finding_sites
    assert site.laterality is not None and site.laterality.value == RIGHT
    assert _codes(effusion, ALGORITHM_NAME)  # the AI's finding keeps its algorithm

    # The radiologist's finding: no Algorithm Name, the radiologist as its Person Observer.
    added = groups["pneumothorax"]
    assert _codes(added, ALGORITHM_NAME) == []
    (observer,) = _codes(added, PERSON_OBSERVER_NAME)
    assert str(observer.PersonName) == "House^Gregory"
    assert study.study_instance_uid == sr.StudyInstanceUID
