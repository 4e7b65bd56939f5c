"""The worklist's and review page's urgent marker comes from the critical findings a version
suspects (``content.critical``, read with negation and hedges), not from a list of words."""

from __future__ import annotations

from web.pages import viewmodel


def test_the_marker_shows_the_critical_findings_the_version_suspects() -> None:
    suspected = ["pneumothorax", "free air (uncertain)"]
    assert viewmodel.urgent_labels(suspected) == ["Pneumothorax", "Free air (uncertain)"]
    assert viewmodel.urgent_labels([]) == []


def test_a_finding_is_urgent_only_when_its_version_suspects_it() -> None:
    assert viewmodel.is_urgent("Pneumothorax", ["pneumothorax"])
    assert viewmodel.is_urgent("Pneumothorax", ["pneumothorax (uncertain)"])  # a hedge alerts too
    # The text said "no pneumothorax": the version suspects nothing, the label alone is no alarm.
    assert not viewmodel.is_urgent("Pneumothorax", [])
    # A site that lists pleural effusion as critical (RADDRAFT_CRITICAL_FINDINGS) sees it marked.
    assert viewmodel.is_urgent("Pleural Effusion", ["pleural effusion"])
    assert not viewmodel.is_urgent("Pleural Effusion", ["pneumothorax"])
