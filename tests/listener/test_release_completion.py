"""A two-view push completes when the sender releases the association, not after a timer."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from raddraft.settings import Settings
from tests.dicom_factory import make_study
from tests.listener.conftest import complete_versions, versions_of, wait_for
from tests.listener_process import ListenerProcess, storescu

# Timers far away: whatever completes within seconds completed at the release.
SLOW_TIMERS = {
    "RADDRAFT_COMPLETION_POLL_SECONDS": "120",
    "RADDRAFT_COMPLETION_QUIET_SECONDS": "600",
    "RADDRAFT_COMPLETION_CXR_RULE_SECONDS": "300",
}


def test_release_completes_frontal_plus_lateral_at_once(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    two_view, two_files = make_study(tmp_path / "two", ("PA", "LATERAL"))
    one_view, one_files = make_study(tmp_path / "one", ("AP",))
    with ListenerProcess(tmp_path / "listener.log", env=SLOW_TIMERS).start() as listener:
        assert storescu(listener.port, two_files).returncode == 0
        assert storescu(listener.port, one_files).returncode == 0
        completed = wait_for(lambda: complete_versions(engine, two_view.study_uid), timeout=10)
        assert [v.completion_reason for v in completed] == ["cxr_rule"]
        # A single frontal view waits for its timer: a lateral may still come.
        assert [v.state for v in versions_of(engine, one_view.study_uid)] == ["open"]
