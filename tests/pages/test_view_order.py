"""The review page puts frontal images first by the rule the listener chose the images to read
by (dicom_listener.is_frontal): ViewPosition, or the View Code Sequence where it is empty."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from dicom_listener.tables import Patient
from raddraft.db import session_factory, utcnow
from raddraft.settings import Settings
from tests.pages.seed import archive_study
from web.pages import viewmodel


def test_prior_images_are_shown_frontal_first_by_the_listeners_rule(
    pages_settings: Settings, engine: Engine
) -> None:
    session = session_factory(engine)()
    try:
        patient = Patient(patient_id="RD0900", patient_name="VIEW^ORDER", birth_date="", sex="")
        session.add(patient)
        session.flush()
        study = archive_study(
            session,
            pages_settings,
            patient=patient,
            accession="ACC-VIEWS",
            study_date="20240105",
            priority=2,
            indication="",
            views=("LATERAL", "PA"),
            received=utcnow(),
        )
        lateral, frontal = study.instances
        # No ViewPosition on either: only the View Code Sequence says which is which.
        lateral.view_position, lateral.view_code = "", "lateral"
        frontal.view_position, frontal.view_code = "", "postero-anterior"
        session.commit()
        uid = study.study.study_instance_uid
        _, shown = viewmodel.prior_instances(session, {"study_instance_uid": uid})
        assert [i.sop_instance_uid for i in shown] == [
            frontal.sop_instance_uid,
            lateral.sop_instance_uid,
        ]
    finally:
        session.close()
