"""Per-finding feedback and the reader-study figures on a scripted review session."""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from report_drafts import _version_writes, signoff
from tests.drafts.conftest import auth
from tests.drafts.helpers import make_draft

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def test_reader_study_figures(
    engine: Engine,
    settings: Settings,
    tokens: dict[str, str],
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    # Opening (the review clock starts) and signing read the clock in these two modules.
    monkeypatch.setattr(_version_writes, "utcnow", clock)
    monkeypatch.setattr(signoff, "utcnow", clock)
    rad = auth(tokens["rad"])

    # The script: (seconds from opening to signing, edit reason, actions before signing).
    script: list[tuple[int, str, list[tuple[str, Any]]]] = [
        (30, "none", []),
        (60, "style", [("edit", {"impression": "Small left effusion."})]),
        (90, "content", [("reject", 1), ("accept", 0)]),
        (200, "both", [("label", 0)]),
        (45, "none", [("edit", {"findings_text": "Normal heart. Small left effusion."})]),
    ]
    for seconds, reason, actions in script:
        report_id, _study = make_draft(engine, settings, accession=f"A{seconds}")
        detail = client.get(f"/api/reports/{report_id}", headers=rad).json()
        findings = detail["content"]["findings"]
        expected = 1
        for kind, arg in actions:
            if kind == "edit":
                r = client.post(
                    f"/api/reports/{report_id}/edit",
                    json={"expected_version": expected, **arg},
                    headers=rad,
                )
            elif kind == "label":
                r = client.post(
                    f"/api/reports/{report_id}/findings/{findings[arg]['tracking_uid']}",
                    json={"expected_version": expected, "action": "edit", "label": "effusion"},
                    headers=rad,
                )
            else:
                r = client.post(
                    f"/api/reports/{report_id}/findings/{findings[arg]['tracking_uid']}",
                    json={"expected_version": expected, "action": kind},
                    headers=rad,
                )
            assert r.status_code == 200, r.text
            expected = r.json()["version"]["number"]
        clock.now += dt.timedelta(seconds=seconds)
        r = client.post(
            f"/api/reports/{report_id}/sign",
            json={"expected_version": expected, "edit_reason": reason},
            headers=rad,
        )
        assert r.status_code == 200, r.text
        clock.now += dt.timedelta(hours=1)

    # A rejected draft does not count as signed.
    rejected_id, _ = make_draft(engine, settings, accession="REJ")
    client.get(f"/api/reports/{rejected_id}", headers=rad)
    client.post(
        f"/api/reports/{rejected_id}/reject",
        json={"expected_version": 1, "reason": "nonsense"},
        headers=rad,
    )

    figures = client.get("/api/figures", headers=auth(tokens["reader"])).json()
    # Expected values, from the script: only the first report left the AI draft untouched
    # (an accept of an already accepted finding changes nothing, but report 3 also rejected).
    unchanged = [not actions for _s, _r, actions in script]
    assert figures["signed"] == len(script)
    assert figures["signed_without_edit"] == sum(unchanged) == 1
    assert figures["share_signed_without_edit"] == pytest.approx(sum(unchanged) / len(script))
    reasons: dict[str, int] = {"none": 0, "content": 0, "style": 0, "both": 0}
    for _s, reason, _a in script:
        reasons[reason] += 1
    assert figures["edit_reasons"] == reasons
    assert figures["median_seconds_to_sign"] == pytest.approx(
        statistics.median(s for s, _r, _a in script)
    )
    assert figures["feedback"] == {"accept": 1, "reject": 1, "edit": 1, "add": 0}
    assert 0 < figures["mean_edit_ratio"] < 1
