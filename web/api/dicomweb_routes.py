"""The DICOMweb service (PS3.18) at ``/dicomweb``: STOW-RS, QIDO-RS and WADO-RS.

- STOW-RS (10.5): ``POST /dicomweb/studies[/{study}]`` with ``multipart/related;
  type="application/dicom"``; each instance is filed by the listener
  (:func:`dicom_listener.ingest_batch`: on disk and recorded before the response), the
  response says per instance what was stored and why the rest was not.
- QIDO-RS (10.6): ``/studies``, ``/series``, ``/instances`` and the nested forms, answered
  ``application/dicom+json``.
- WADO-RS (10.4): instances (``multipart/related; type="application/dicom"``), ``metadata``
  (``application/dicom+json``), ``frames`` (``application/octet-stream``), ``rendered``
  (``image/jpeg`` or ``image/png``) and ``bulk`` data.

Authentication is the API's (a bearer token or the pages' session): reading needs a reader,
radiologist or admin; storing needs a ``sender`` (a modality or gateway) or an admin.
"""

from __future__ import annotations

import json
import logging
import mmap
import tempfile
from collections.abc import Sequence
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.uid import ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool

import dicom_listener
from raddraft import atna
from raddraft.logging import kv
from raddraft.numbers import decimal
from raddraft.settings import Settings
from report_drafts import Role, User
from web.api import query_limits
from web.api.auth import DbSession, Viewer, require
from web.dicomweb import catalog, multipart, pixels, stow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
Sender = Annotated[User, Depends(require(Role.sender, Role.admin))]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _dicom_json(datasets: Sequence[Dataset], headers: dict[str, str] | None = None) -> Response:
    body = json.dumps([ds.to_json_dict() for ds in datasets])
    return Response(body, media_type=DICOM_JSON, headers=headers)


# -- STOW-RS -----------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


#: Bytes of a STOW-RS body kept in memory; beyond this the body goes on to a temporary file.
SPOOL_MEMORY_BYTES = 1 << 20


class _Spooled:
    """A spooled body, read through a memory map: what :func:`multipart.parse_related` asks
    of ``bytes`` (find, startswith, slices), without the body itself in memory."""

    def __init__(self, spool: tempfile.SpooledTemporaryFile[bytes]) -> None:
        spool.flush()
        self.size = spool.tell()
        self._map: mmap.mmap | bytes | None = None
        if self.size > SPOOL_MEMORY_BYTES:  # rolled over to its file (tempfile's rule)
            self._map = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        elif self.size:  # a small body never left memory
            spool.seek(0)
            self._map = spool.read()

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        if self._map is None:
            return -1
        return self._map.find(sub, start, self.size if end is None else end)

    def startswith(self, prefix: bytes, start: int = 0) -> bool:
        return self[start : start + len(prefix)] == prefix

    def __getitem__(self, index: slice) -> bytes:
        return self._map[index] if self._map is not None else b""

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()


async def _bounded_body(
    request: Request, limit: int, spool: tempfile.SpooledTemporaryFile[bytes]
) -> None:
    """The request body into ``spool`` (memory, then a temporary file beyond
    :data:`SPOOL_MEMORY_BYTES`), refused (413) beyond ``limit`` bytes: a declared
    Content-Length is checked before anything is read, and a chunked or lying body as it
    streams in, so a sender can never make the web process hold the body in memory."""
    declared = decimal(request.headers.get("content-length", ""), max_digits=18)
    if declared is not None and declared > limit:
        raise _TooLarge
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        spool.write(chunk)


async def _store(request: Request, user: User, study_uid: str | None) -> Response:
    settings = _settings(request)
    limit = settings.dicomweb_max_request_mb * 1024 * 1024
    content_type = request.headers.get("content-type", "")
    with tempfile.SpooledTemporaryFile(
        max_size=SPOOL_MEMORY_BYTES,
        dir=str(settings.data_dir) if settings.data_dir.is_dir() else None,
    ) as spool:
        try:
            multipart.check_related(content_type)
            await _bounded_body(request, limit, spool)
            body = _Spooled(spool)
            try:
                media, parts = multipart.parse_related(content_type, cast(bytes, body))
            finally:
                body.close()
        except multipart.MultipartError as error:
            return _problem(400, str(error))
        except _TooLarge:
            log.warning("STOW-RS request refused %s", kv(why="too large", limit_mb=limit >> 20))
            return _problem(
                413,
                f"request body larger than {settings.dicomweb_max_request_mb} MB "
                "(RADDRAFT_DICOMWEB_MAX_REQUEST_MB); send fewer instances per request",
            )
    root = media.params.get("type", "").lower()
    if root != "application/dicom":
        return _problem(415, f'only type="application/dicom" is accepted, not {root!r}')
    outcomes = await run_in_threadpool(_file_parts, parts, study_uid, user.name, request, settings)
    answer = stow.response(outcomes, _base(request), study_uid)
    status = stow.http_status(outcomes)
    headers = {"Retry-After": "60"} if status == 503 else None
    return Response(
        json.dumps(answer.to_json_dict()),
        status_code=status,
        media_type=DICOM_JSON,
        headers=headers,
    )


def _file_parts(
    parts: Sequence[multipart.Part],
    study_uid: str | None,
    caller: str,
    request: Request,
    settings: Settings,
) -> list[stow.StowOutcome]:
    """File each part through the listener; parts of another type or study are refused."""
    outcomes: list[stow.StowOutcome | None] = []
    to_file: list[tuple[int, bytes, tuple[str, str, str, str]]] = []
    for index, part in enumerate(parts):
        ids = stow.identify(part.body)
        kind = multipart.MediaType.parse(part.content_type).type
        if kind != "application/dicom":
            outcomes.append(stow.StowOutcome(*ids, stow.CANNOT_UNDERSTAND, f"part is {kind}"))
        elif study_uid and ids[2] and ids[2] != study_uid:
            why = f"instance of study {ids[2]} posted to study {study_uid}"
            outcomes.append(stow.StowOutcome(*ids, stow.DOES_NOT_MATCH, why))
        else:
            outcomes.append(None)
            to_file.append((index, part.body, ids))
    client = request.client.host if request.client else ""
    results = dicom_listener.ingest_batch(
        [body for _, body, _ in to_file],
        calling_ae_title=f"STOW:{caller}"[:16],
        peer=f"dicomweb {client}",
        settings=settings,
    )
    if atna.enabled():  # the process's settings, as every other record of the web app
        _audit_transferred(results, caller, client)
    for (index, _, ids), result in zip(to_file, results, strict=True):
        outcomes[index] = stow.StowOutcome(
            *ids, int(result.status), result.reason, transient=result.transient
        )
    return [o for o in outcomes if o is not None]


def _audit_transferred(
    results: Sequence[dicom_listener.IngestResult], caller: str, client: str
) -> None:
    """One DICOM Instances Transferred record per patient (PS3.15 A.5.3.4) for the instances
    this request stored, as the listener sends one per association: the request is the
    transfer, the sending user its source."""
    tally: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        if result.status == 0x0000:
            classes = tally.setdefault(result.patient_id, {}).setdefault(
                result.study_instance_uid, {}
            )
            classes[result.sop_class_uid] = classes.get(result.sop_class_uid, 0) + 1
    for patient_id, studies in tally.items():
        xml = atna.instances_transferred(
            source_aet=caller, source_address=client, patient_id=patient_id, studies=studies
        )
        atna.emit(xml)


#: The app's body bound does not apply to STOW-RS: its bound is RADDRAFT_DICOMWEB_MAX_REQUEST_MB,
#: checked as the body streams to a spool on disk (:func:`_bounded_body`).
STOW_BODY_CEILING = 1 << 50


@router.post(
    "/studies",
    summary="STOW-RS: store instances (PS3.18 10.5)",
    max_body_size=STOW_BODY_CEILING,
)
async def store_instances(request: Request, user: Sender) -> Response:
    return await _store(request, user, None)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study",
    max_body_size=STOW_BODY_CEILING,
)
async def store_study_instances(study: str, request: Request, user: Sender) -> Response:
    return await _store(request, user, study)


# -- QIDO-RS -----------------------------------------------------------------------------------


#: PS3.18 8.3.4.4: a page the server cut (its default or its maximum) says so.
TRUNCATED_WARNING = (
    '299 RadDraft "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


def _search(
    request: Request,
    session: DbSession,
    level: str,
    fixed: dict[str, str],
) -> Response:
    """One QIDO-RS search, paged and time-limited (a plain ``def`` endpoint: it runs in the
    thread pool and never holds up the event loop)."""
    settings = _settings(request)
    try:
        query = catalog.parse_query(request.query_params.multi_items(), level)
        query.match.update(fixed)
        limit, cut = catalog.page_size(query, settings)
        with query_limits.time_limit(session, settings.query_timeout_seconds):
            found = catalog.search(session, settings, level, query, limit)
    except catalog.QueryError as error:
        return _problem(400, str(error))
    except query_limits.QueryTimeoutError as error:
        log.warning("QIDO-RS search stopped %s", kv(level=level, seconds=error.seconds))
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "60"})
    base = _base(request)
    answers = []
    for hit in found.hits:
        ds = catalog.answer(hit, level, query, settings.archive_dir)
        ds.RetrieveURL = _url(base, hit, level)
        answers.append(ds)
    warnings = []
    if query.ignored:
        names = ", ".join(query.ignored)
        warnings.append(f'299 RadDraft "The following query keys are not supported: {names}"')
    if found.more and (query.limit is None or cut):
        warnings.append(TRUNCATED_WARNING)
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return _dicom_json(answers, headers)


def _url(base: str, item: catalog.DicomObject | catalog.Hit, level: str) -> str:
    url = f"{base}/studies/{item.study_uid}"
    if level in ("series", "instance"):
        url += f"/series/{item.series_uid}"
    if level == "instance":
        url += f"/instances/{item.sop_uid}"
    return url


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, session: DbSession, user: Viewer) -> Response:
    _audit_search(request, user)
    return _search(request, session, "study", {})


@router.get("/series", summary="QIDO-RS: search for series")
def search_series(request: Request, session: DbSession, user: Viewer) -> Response:
    _audit_search(request, user)
    return _search(request, session, "series", {})


@router.get("/instances", summary="QIDO-RS: search for instances")
def search_instances(request: Request, session: DbSession, user: Viewer) -> Response:
    _audit_search(request, user)
    return _search(request, session, "instance", {})


@router.get("/studies/{study}/series", summary="QIDO-RS: search for a study's series")
def search_study_series(study: str, request: Request, session: DbSession, user: Viewer) -> Response:
    _audit_search(request, user)
    return _search(request, session, "series", {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for a study's instances")
def search_study_instances(
    study: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    _audit_search(request, user)
    return _search(request, session, "instance", {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/series/{series}/instances", summary="QIDO-RS: search a series' instances"
)
def search_series_instances(
    study: str, series: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    fixed = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    _audit_search(request, user)
    return _search(request, session, "instance", fixed)


# -- WADO-RS -----------------------------------------------------------------------------------


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _audit_search(request: Request, user: User) -> None:
    """A QIDO-RS search, audited as a Query (PS3.15 A.5.3.12)."""
    if atna.enabled():
        asked = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        atna.emit(atna.dicomweb_search(user.name, _client(request), asked))


def _audit_read(
    request: Request, user: User, found: list[catalog.DicomObject]
) -> list[catalog.DicomObject]:
    """``found``, its reading audited as DICOM Instances Transferred (PS3.15 A.5.3.4)."""
    if found and atna.enabled():
        read = [
            (
                str(o.get("PatientID")),
                str(o.get("PatientName")),
                o.study_uid,
                str(o.get("SOPClassUID")),
            )
            for o in found
        ]
        for xml in atna.dicomweb_read(user.name, _client(request), read):
            atna.emit(xml)
    return found


def _objects(
    request: Request,
    session: DbSession,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[catalog.DicomObject]:
    objects = catalog.load_objects(session, _settings(request), study)
    return catalog.find(objects, study, series, instance)


def _wanted_syntax(request: Request) -> str | None:
    """The transfer syntax the client accepts for application/dicom: ``*``, a UID, or None
    (nothing acceptable). Without a transfer-syntax parameter PS3.18 8.7.3.5.2 means
    Explicit VR Little Endian."""
    for media in multipart.accepted(request.headers.get("accept", "")):
        root = media.params.get("type", "application/dicom").lower()
        if media.type in ("multipart/related", "*/*", "multipart/*") and root in (
            "application/dicom",
            "*/*",
        ):
            return media.params.get("transfer-syntax", ExplicitVRLittleEndian)
        if media.type == "application/dicom":
            return media.params.get("transfer-syntax", ExplicitVRLittleEndian)
    return None


def _retrieve(request: Request, found: list[catalog.DicomObject]) -> Response:
    if not found:
        return _problem(404, "no such study, series or instance")
    wanted = _wanted_syntax(request)
    if wanted is None:
        return _problem(406, 'only multipart/related; type="application/dicom" is served')
    boundary = multipart.new_boundary()

    def parts() -> Any:
        for item in found:
            syntax = item.transfer_syntax_uid
            if wanted in ("*", syntax):
                yield f"application/dicom; transfer-syntax={syntax}", item.path
            else:
                body = pixels.as_explicit_little(item.path)
                yield f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}", body

    if wanted not in ("*", ExplicitVRLittleEndian) and any(
        i.transfer_syntax_uid != wanted for i in found
    ):
        return _problem(
            406, f"transfer syntax {wanted} is not offered; ask for * or 1.2.840.10008.1.2.1"
        )
    return StreamingResponse(
        multipart.stream_parts(boundary, parts()),
        media_type=multipart.related_type("application/dicom", boundary),
    )


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(study: str, request: Request, session: DbSession, user: Viewer) -> Response:
    return _retrieve(request, _audit_read(request, user, _objects(request, session, study)))


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(
    study: str, series: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    return _retrieve(request, _audit_read(request, user, _objects(request, session, study, series)))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance"
)
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    return _retrieve(
        request, _audit_read(request, user, _objects(request, session, study, series, instance))
    )


def _metadata(request: Request, found: list[catalog.DicomObject]) -> Response:
    if not found:
        return _problem(404, "no such study, series or instance")
    base = _base(request)
    out = []
    for item in found:
        header = catalog.read_header(item.path)
        url = _url(base, item, "instance")

        def bulk(element: DataElement, url: str = url) -> str:
            return f"{url}/bulk/{element.tag:08X}"

        body = header.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)
        if item.get("Rows"):
            body["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{url}/frames/1"}
        out.append(body)
    return Response(json.dumps(out), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata")
def study_metadata(study: str, request: Request, session: DbSession, user: Viewer) -> Response:
    return _metadata(request, _audit_read(request, user, _objects(request, session, study)))


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata")
def series_metadata(
    study: str, series: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    return _metadata(request, _audit_read(request, user, _objects(request, session, study, series)))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: an instance's metadata",
)
def instance_metadata(
    study: str, series: str, instance: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    return _metadata(
        request, _audit_read(request, user, _objects(request, session, study, series, instance))
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{numbers}",
    summary="WADO-RS: frames, uncompressed (application/octet-stream)",
)
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    numbers: str,
    request: Request,
    session: DbSession,
    user: Viewer,
) -> Response:
    found = _audit_read(request, user, _objects(request, session, study, series, instance))
    if not found:
        return _problem(404, "no such instance")
    try:
        wanted = [int(n) for n in numbers.split(",")]
        data = pixels.frames(found[0].path, wanted)
    except ValueError as error:
        return _problem(400, f"frames are comma-separated numbers from 1: {error}")
    except pixels.NotAnImage as error:
        return _problem(400, str(error))
    except IndexError as error:
        return _problem(404, str(error))
    boundary = multipart.new_boundary()
    syntax = ExplicitVRLittleEndian
    part_type = f"application/octet-stream; transfer-syntax={syntax}"
    return StreamingResponse(
        multipart.stream_parts(boundary, [(part_type, frame) for frame in data]),
        media_type=multipart.related_type("application/octet-stream", boundary, syntax),
    )


def _rendered_type(request: Request) -> str | None:
    for media in multipart.accepted(request.headers.get("accept", "")):
        if media.type in pixels.RENDERED_TYPES:
            return media.type
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
    return None


def _rendered(request: Request, found: list[catalog.DicomObject], frame: int) -> Response:
    if not found:
        return _problem(404, "no such instance")
    media_type = _rendered_type(request)
    if media_type is None:
        return _problem(406, "rendered images are image/jpeg or image/png")
    quality = request.query_params.get("quality", "90")
    try:
        body = pixels.rendered(
            found[0].path,
            media_type,
            frame=frame,
            quality=number if (number := decimal(quality, max_digits=3)) is not None else 90,
        )
    except pixels.NotAnImage as error:
        return _problem(400, f"{error}: nothing to render")
    except IndexError as error:
        return _problem(404, str(error))
    return Response(body, media_type=media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="WADO-RS: the instance rendered for a browser (image/jpeg, image/png)",
)
def rendered_instance(
    study: str, series: str, instance: str, request: Request, session: DbSession, user: Viewer
) -> Response:
    return _rendered(
        request, _audit_read(request, user, _objects(request, session, study, series, instance)), 1
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
    summary="WADO-RS: one frame rendered for a browser",
)
def rendered_frame(
    study: str,
    series: str,
    instance: str,
    frame: int,
    request: Request,
    session: DbSession,
    user: Viewer,
) -> Response:
    return _rendered(
        request,
        _audit_read(request, user, _objects(request, session, study, series, instance)),
        frame,
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}",
    summary="WADO-RS: one bulk data element (a BulkDataURI of the metadata)",
)
def bulk_data(
    study: str,
    series: str,
    instance: str,
    tag: str,
    request: Request,
    session: DbSession,
    user: Viewer,
) -> Response:
    found = _audit_read(request, user, _objects(request, session, study, series, instance))
    try:
        number = int(tag, 16)
    except ValueError:
        return _problem(400, f"{tag!r} is not a tag")
    header = catalog.read_header(found[0].path) if found else None
    if header is None or number not in header:
        return _problem(404, "no such instance or element")
    value = header[number].value
    data = value if isinstance(value, bytes) else str(value).encode()
    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.stream_parts(boundary, [("application/octet-stream", data)]),
        media_type=multipart.related_type("application/octet-stream", boundary),
    )
