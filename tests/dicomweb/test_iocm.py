"""IHE IOCM on RadDraft's own DICOMweb: once a draft is rejected, its SR and GSPS are no longer
found (QIDO-RS) or retrieved (WADO-RS); the rejection note (KOS) that withdrew them is."""

from __future__ import annotations

import httpx
from dicomweb_client.api import DICOMwebClient
from sqlalchemy.engine import Engine

from raddraft.db import session_scope
from raddraft.settings import Settings
from report_drafts import signoff
from report_drafts.builders.kos_rejection_note import KOS_SOP_CLASS_UID
from report_drafts.tables import ReportVersion, Role
from report_drafts.users import add_user
from tests.drafts.helpers import make_draft
from tests.pages.conftest import LiveServer

SOP_CLASS = "00080016"
SOP_INSTANCE = "00080018"
SERIES = "0020000E"


def _instances(client: DICOMwebClient, study_uid: str) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SOP Class UID, Series Instance UID) of what QIDO-RS finds."""
    return {
        i[SOP_INSTANCE]["Value"][0]: (i[SOP_CLASS]["Value"][0], i[SERIES]["Value"][0])
        for i in client.search_for_instances(study_uid)
    }


def test_rejected_objects_are_withheld_and_the_rejection_note_served(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str]
) -> None:
    report_pk, study = make_draft(engine, settings)
    client = DICOMwebClient(
        url=f"{web.url}/dicomweb", headers={"Authorization": f"Bearer {tokens['reader']}"}
    )
    with session_scope(engine) as session:
        draft = session.get(ReportVersion, signoff.get_report(session, report_pk).versions[0].id)
        assert draft is not None
        own = {draft.sr_sop_instance_uid, *draft.gsps_sop_instance_uids} - {None}
    before = _instances(client, study.study_instance_uid)
    assert own and own <= set(before)

    with session_scope(engine) as session:
        user, _ = add_user(session, "house", Role.radiologist, display_name="House^Gregory")
        signoff.open_report(session, report_pk, user)
        withdrawal = signoff.reject(
            session,
            report_pk,
            user,
            expected_version=signoff.get_report(session, report_pk).current_version,
            reason="not this patient's findings",
            settings=settings,
        )
        note_uid = withdrawal.rejection_note_uid
    assert note_uid

    after = _instances(client, study.study_instance_uid)
    assert not own & set(after)
    assert set(study.sop_instance_uids) <= set(after)  # the images stay
    for uid in own:
        _sop_class, series = before[uid]
        retrieved = httpx.get(
            f"{web.url}/dicomweb/studies/{study.study_instance_uid}/series/{series}"
            f"/instances/{uid}",
            headers={"Authorization": f"Bearer {tokens['reader']}"},
        )
        assert retrieved.status_code == 404, uid
    sop_class, series = after[note_uid]
    note = client.retrieve_instance(study.study_instance_uid, series, note_uid)
    assert sop_class == KOS_SOP_CLASS_UID and note.SOPClassUID == KOS_SOP_CLASS_UID
