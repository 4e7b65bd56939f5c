"""No model control token reaches a report: a hostile model's markup is parsed or removed and
flagged, from the model server through the reader, the worker's content, the draft and every
object built for PACS and the RIS (SR, HL7 ORU, FHIR)."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.engine import Engine

import models
from raddraft.db import session_scope
from raddraft.settings import DicomNode, Settings
from report_drafts import drafting, removed_count
from report_drafts.tables import SentObject
from tests.dicom_factory import make_cxr
from tests.drafts.conftest import ALGORITHM, RUN, archive_study
from tests.worker import model_server
from tests.worker.model_server import ScriptedModelServer
from worker import pipeline

SCRIPTED = model_server.answer
QUAD = "<|quad_start|>(55,50),(90,52),(88,88),(57,86)<|quad_end|>"


def hostile(question: str) -> str:
    """The scripted model's answers, with Qwen2.5-VL's and CheXOne's markup leaking into text."""
    q = question.lower()
    if "locate" in q and "pleural effusion" in q:
        return f"<|object_ref_start|>pleural effusion<|object_ref_end|>{QUAD}"
    if "findings section" in q:
        return (
            "Moderate <|object_ref_start|>left pleural effusion<|object_ref_end|>"
            "<|box_start|>(55,50),(90,88)<|box_end|>. Heart size normal.<|im_end|> "
            f"{QUAD} No pneumothorax.<|endoftext|><|vision_pad|>"
        )
    if "impression section" in q or q.startswith("summarize"):
        return "<|ref|>Moderate left pleural effusion<|/ref|><|box|>(55,50),(90,88)<|/box|>."
    if "trajectory" in q:
        return "The left pleural effusion has increased.<|im_start|>assistant"
    return SCRIPTED(question)


def _texts(item: Dataset) -> list[str]:
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found.extend(_texts(child))
    return found


def test_hostile_model_markup_never_reaches_a_report(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_server, "answer", hostile)
    study = archive_study(engine, settings, accession="ACC-TOKENS")
    with ScriptedModelServer() as server:
        config = pipeline.reader_config(
            Settings(
                data_dir=tmp_path,
                model_backend="openai",
                model_server_url=server.url,
                model="StanfordAIMI/CheXOne",
            )
        )
        image = make_cxr(rows=64, cols=48, sop_uid=study.sop_instance_uids[0])
        reading = models.load_reader(config).read([models.StudyImage.from_dataset(image)], [])
    content = pipeline.report_content(reading, study_version_uid="1.2.3.v1")

    # The quad was parsed into the finding's box (its bounding rectangle), not dropped.
    (effusion,) = content.findings
    assert effusion.box is not None
    # The prose kept its words and lost the markup; the draft says what was taken out.
    assert content.findings_text.startswith("Moderate left pleural effusion. Heart size normal.")
    assert "No pneumothorax." in content.findings_text
    assert content.impression == "Moderate left pleural effusion."
    assert removed_count(content.extra) >= 7
    assert "token quad_start" in content.extra["sanitised"]["findings_text"]

    wired = settings.model_copy(
        update={
            "destinations": [DicomNode("PACS", "127.0.0.1", 11113)],
            "ris_mllp": "127.0.0.1:2575",
            "fhir_server_url": "http://127.0.0.1:1/fhir",
            "release_unsigned_hl7": "send",
            "release_unsigned_fhir": "send",
        }
    )
    with session_scope(engine) as session:
        row = drafting.record_draft(
            session,
            study_version_pk=study.study_version_pk,
            content=content,
            run=RUN,
            algorithm=ALGORITHM,
            settings=wired,
        )
        stored = dict(row.content)
        paths = {
            (r.kind, r.path)
            for r in session.scalars(
                select(SentObject).where(SentObject.report_version_pk == row.id)
            )
        }
    assert "<|" not in json.dumps(stored)
    outbox = wired.data_dir / "outbox"
    kinds = {kind for kind, _ in paths}
    assert {"sr", "hl7", "fhir"} <= kinds
    for kind, path in paths:
        if kind in ("sr", "gsps"):
            ds = pydicom.dcmread(outbox / path)
            assert not any("<|" in t for t in _texts(ds)), path
            assert b"<|" not in (outbox / path).read_bytes(), path
        else:
            assert "<|" not in (outbox / path).read_text(), path
