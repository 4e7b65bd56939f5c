"""RadDraft's DICOMweb service against a real client (``dicomweb-client``) and raw HTTP.

STOW-RS must keep C-STORE's promise (on disk and recorded before the answer; bad instances
quarantined with the reason in the response; a full disk refuses everything, keeps nothing),
QIDO-RS must match the common keys, WADO-RS must give back exactly what was stored, and
RadDraft's own SR and GSPS must be found and retrieved beside the images.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.engine import Engine

from dicom_listener import Instance, StudyVersion
from raddraft import jobs
from raddraft.db import session_scope
from raddraft.settings import Settings
from tests.conftest import reload_settings
from tests.dicom_factory import StudyIds, make_study
from tests.drafts.helpers import make_draft
from tests.pages.conftest import LiveServer

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"


def _client(web: LiveServer, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{web.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def _study(tmp_path: Path, **kwargs: object) -> tuple[StudyIds, list[Dataset]]:
    ids, paths = make_study(tmp_path / "study", ("PA", "LATERAL"), **kwargs)
    return ids, [pydicom.dcmread(p) for p in paths]


def _multipart(parts: list[bytes], boundary: str = "xyzBOUNDARYxyz") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _post(web: LiveServer, token: str, parts: list[bytes], study: str = "") -> httpx.Response:
    body, content_type = _multipart(parts)
    url = f"{web.url}/dicomweb/studies" + (f"/{study}" if study else "")
    return httpx.post(
        url,
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _recorded(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        return set(session.scalars(select(Instance.sop_instance_uid)))


def test_stow_files_like_c_store_and_qido_wado_give_it_back(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    ids, datasets = _study(tmp_path, study_date="20261101")
    answer = _client(web, tokens["sender"]).store_instances(datasets)

    stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
    assert stored == [str(ds.SOPInstanceUID) for ds in datasets]
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"/dicomweb/studies/{ids.study_uid}")
    # Durable and recorded before the response, like C-STORE.
    assert _recorded(engine) == set(stored)
    for ds in datasets:
        path = settings.archive_dir / ids.study_uid / ids.series_uid / f"{ds.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    # The end of the request is the push's end: a PA + lateral completes and gets its draft job.
    with session_scope(engine) as session:
        version = session.scalars(select(StudyVersion)).one()
        assert (version.state, version.eligible) == ("complete", True)
        assert session.scalar(select(jobs.Job.key)) == f"draft:version:{version.id}"

    reader = _client(web, tokens["reader"])
    found = reader.search_for_studies(
        search_filters={"PatientID": ids.patient_id, "StudyDate": "20261001-20261130"}
    )
    assert [f["0020000D"]["Value"] for f in found] == [[ids.study_uid]]
    assert found[0]["00080061"]["Value"] == ["DX"]  # ModalitiesInStudy
    assert found[0]["00201208"]["Value"] == [2]  # NumberOfStudyRelatedInstances
    assert reader.search_for_studies(search_filters={"StudyDate": "20261102-"}) == []
    assert reader.search_for_studies(search_filters={"ModalitiesInStudy": "CT"}) == []
    assert len(reader.search_for_studies(search_filters={"PatientName": "test^*"})) == 1
    assert len(reader.search_for_studies(search_filters={"AccessionNumber": ids.accession})) == 1

    series = reader.search_for_series(ids.study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [ids.series_uid]
    instances = reader.search_for_instances(
        ids.study_uid, ids.series_uid, fields=["ViewPosition"], limit=1, offset=1
    )
    assert len(instances) == 1
    assert instances[0]["00185101"]["Value"] == ["LL"]  # includefield read from the header

    first = datasets[0]
    sop = str(first.SOPInstanceUID)
    back = reader.retrieve_instance(ids.study_uid, ids.series_uid, sop)
    assert back.PixelData == first.PixelData
    metadata = reader.retrieve_instance_metadata(ids.study_uid, ids.series_uid, sop)
    assert metadata["00100020"]["Value"] == [ids.patient_id]
    assert "BulkDataURI" in metadata["7FE00010"]
    frame = reader.retrieve_instance_frames(ids.study_uid, ids.series_uid, sop, [1])[0]
    assert np.array_equal(
        np.frombuffer(frame, dtype="<u2").reshape(first.Rows, first.Columns), first.pixel_array
    )
    png = reader.retrieve_instance_rendered(
        ids.study_uid, ids.series_uid, sop, media_types=("image/png",)
    )
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (first.Columns, first.Rows))
    assert np.asarray(image).std() > 0  # a picture, not a blank
    jpeg = reader.retrieve_instance_rendered(
        ids.study_uid, ids.series_uid, sop, media_types=("image/jpeg",)
    )
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert len(reader.retrieve_study(ids.study_uid)) == 2


def test_stow_answers_per_instance_and_quarantines_what_it_cannot_store(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    ids, datasets = _study(tmp_path)
    good = Path(datasets[0].filename).read_bytes()
    # A DICOM file in form whose data set lacks every identifier: 0xA900, as C-STORE says.
    garbage = b"\x00" * 128 + b"DICM" + b"this is not a data set" * 10

    response = _post(web, tokens["sender"], [good, garbage])
    assert response.status_code == 202
    body = response.json()
    assert [i["00081155"]["Value"][0] for i in body[REFERENCED_SOP_SEQUENCE]["Value"]] == [
        str(datasets[0].SOPInstanceUID)
    ]
    assert [i[FAILURE_REASON]["Value"][0] for i in body[FAILED_SOP_SEQUENCE]["Value"]] == [0xA900]
    quarantined = sorted(settings.quarantine_dir.glob("*.dcm"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == garbage

    other = make_study(tmp_path / "other", ("PA",))[1][0].read_bytes()
    response = _post(web, tokens["sender"], [other], study=ids.study_uid)
    assert response.status_code == 409
    failed = response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[0][FAILURE_REASON]["Value"] == [0xA900]
    assert _recorded(engine) == {str(datasets[0].SOPInstanceUID)}

    response = _post(web, tokens["sender"], [b"not dicom at all"])
    assert response.status_code == 409
    assert response.json()[FAILED_SOP_SEQUENCE]["Value"][0][FAILURE_REASON]["Value"] == [0xC000]


def test_stow_above_the_disk_watermark_refuses_all_and_keeps_nothing(
    settings: Settings,
    engine: Engine,
    tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RADDRAFT_DISK_WATERMARK_PERCENT", "0")
    full = reload_settings()
    from web import create_web_app

    _ids, datasets = _study(tmp_path)
    parts = [Path(ds.filename).read_bytes() for ds in datasets]
    with LiveServer(create_web_app(full)) as web:
        response = _post(web, tokens["sender"], parts)
    assert response.status_code == 503
    assert response.headers["retry-after"]
    reasons = [i[FAILURE_REASON]["Value"][0] for i in response.json()[FAILED_SOP_SEQUENCE]["Value"]]
    assert reasons == [0xA700, 0xA700]
    assert _recorded(engine) == set()
    assert not list(full.archive_dir.rglob("*.dcm"))


def test_dicomweb_needs_the_right_user(
    web: LiveServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    _ids, datasets = _study(tmp_path)
    part = Path(datasets[0].filename).read_bytes()
    assert httpx.get(f"{web.url}/dicomweb/studies").status_code == 401
    assert _post(web, tokens["reader"], [part]).status_code == 403
    bad = httpx.get(
        f"{web.url}/dicomweb/studies",
        headers={"Authorization": f"Bearer {tokens['sender']}"},
    )
    assert bad.status_code == 403  # a sender stores, it does not read


def test_raddraft_sr_and_gsps_are_found_and_retrieved(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str]
) -> None:
    _report_pk, study = make_draft(engine, settings)
    reader = _client(web, tokens["reader"])
    found = reader.search_for_studies(search_filters={"StudyInstanceUID": study.study_instance_uid})
    assert set(found[0]["00080061"]["Value"]) == {"DX", "PR", "SR"}
    by_modality = {
        s["00080060"]["Value"][0]: s for s in reader.search_for_series(study.study_instance_uid)
    }
    sr_series = by_modality["SR"]["0020000E"]["Value"][0]
    [sr] = reader.search_for_instances(study.study_instance_uid, sr_series)
    sr_uid = sr["00080018"]["Value"][0]
    back = reader.retrieve_instance(study.study_instance_uid, sr_series, sr_uid)
    on_disk = pydicom.dcmread(settings.data_dir / "outbox" / f"{sr_uid}.dcm")
    assert back.ContentSequence == on_disk.ContentSequence
    gsps_series = by_modality["PR"]["0020000E"]["Value"][0]
    [gsps] = reader.search_for_instances(study.study_instance_uid, gsps_series)
    meta = reader.retrieve_instance_metadata(
        study.study_instance_uid, gsps_series, gsps["00080018"]["Value"][0]
    )
    assert "00700001" in meta  # GraphicAnnotationSequence: the boxes a viewer draws
    rendered = httpx.get(
        f"{web.url}/dicomweb/studies/{study.study_instance_uid}/series/{sr_series}"
        f"/instances/{sr_uid}/rendered",
        headers={"Authorization": f"Bearer {tokens['reader']}", "Accept": "image/png"},
    )
    assert rendered.status_code == 400  # an SR has no pixels to render
    assert json.loads(rendered.text)["detail"]


def test_stow_target_reads_raddrafts_own_answers(
    settings: Settings,
    web: LiveServer,
    tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RadDraft's STOW-RS service as the peer of its STOW-RS target: a 202 with one failed
    instance is permanent for that one and delivered for the other; a 503 is transient."""
    from peers import Outbound, StowPermanentError, StowSender, StowTransientError
    from web import create_web_app

    _ids, datasets = _study(tmp_path)
    good = Outbound(str(datasets[0].SOPInstanceUID), Path(datasets[0].filename))
    junk_path = tmp_path / "junk.dcm"
    junk_path.write_bytes(b"\x00" * 128 + b"DICM" + b"no data set here")
    junk = Outbound("2.25.1", junk_path)
    target = StowSender(f"{web.url}/dicomweb", token=tokens["sender"])
    with pytest.raises(StowPermanentError) as refused:
        target.send([good, junk])
    assert refused.value.delivered == (good.identifier,)
    assert refused.value.failed == (junk.identifier,)
    assert refused.value.http_status == 202

    monkeypatch.setenv("RADDRAFT_DISK_WATERMARK_PERCENT", "0")
    with LiveServer(create_web_app(reload_settings())) as full:
        busy = StowSender(f"{full.url}/dicomweb", token=tokens["sender"])
        with pytest.raises(StowTransientError) as later:
            busy.send([Outbound(str(datasets[1].SOPInstanceUID), Path(datasets[1].filename))])
    assert later.value.http_status == 503
    assert later.value.delivered == ()


def test_qido_studies_pages_on_the_study_rows(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str]
) -> None:
    from sqlalchemy import delete

    from tests.drafts.conftest import archive_study

    made = [archive_study(engine, settings, patient_id=f"PG{n}") for n in range(4)]
    with session_scope(engine) as session:  # the last one's images are gone (purged)
        session.execute(delete(Instance).where(Instance.version_pk == made[3].study_version_pk))
    reader = _client(web, tokens["reader"])

    def page(offset: int, **filters: str) -> list[str]:
        found = reader.search_for_studies(search_filters=filters, limit=2, offset=offset)
        return [f["0020000D"]["Value"][0] for f in found]

    expected = [m.study_instance_uid for m in made[:3]]
    assert page(0) + page(2) == expected
    assert page(4) == []
    assert page(0, PatientID="PG*") == expected[:2]
    assert page(0, PatientID="PG1") == [expected[1]]
    by_modality = reader.search_for_studies(search_filters={"ModalitiesInStudy": "DX"}, limit=2)
    assert [f["0020000D"]["Value"][0] for f in by_modality] == expected[:2]
    counted = reader.search_for_studies(search_filters={"PatientID": "PG2"})
    assert counted[0]["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances


def test_a_missing_file_is_answered_and_the_connection_kept(
    settings: Settings, engine: Engine, web: LiveServer, tokens: dict[str, str]
) -> None:
    """An image whose file is gone (removed behind RadDraft's back): WADO-RS answers 500 with
    a reason, and the client's kept-alive connection serves its next request (an exception
    left to uvicorn closed it, failing whatever the client sent next: issue 23's bench)."""
    from tests.drafts.conftest import archive_study

    study = archive_study(engine, settings, patient_id="PM1")
    for path in (settings.archive_dir / study.study_instance_uid).rglob("*.dcm"):
        path.unlink()
    with httpx.Client(
        base_url=web.url, headers={"Authorization": f"Bearer {tokens['reader']}"}, timeout=30
    ) as client:
        lost = client.get(f"/dicomweb/studies/{study.study_instance_uid}/metadata")
        assert lost.status_code == 500
        assert lost.json() == {"detail": "a stored file is missing on the server"}
        after = client.get("/dicomweb/studies", params={"PatientID": "PM1"})
        assert after.status_code == 200

        def local_port(response: httpx.Response) -> object:
            return response.extensions["network_stream"].get_extra_info("client_addr")

        assert local_port(after) == local_port(lost)  # the same connection
