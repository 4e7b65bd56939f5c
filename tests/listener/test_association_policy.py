"""Who may open an association and for how long it may take (PS3.8 7.1, 9.3.4).

The called AE title must be the listener's own or an alias (issue 20, item 4); a connection that
never finishes its A-ASSOCIATE-RQ holds its slot only briefly, and one address cannot hold more
than its share of slots (item 5). Loopback only: 127.0.0.2 stands for a second host.
"""

from __future__ import annotations

import socket
from pathlib import Path

from raddraft.settings import Settings
from tests import hostile
from tests.listener.conftest import wait_for
from tests.listener_process import ListenerProcess, echoscu


def _reject_of(port: int, called: str) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ to a hand-made RQ, None if accepted."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(hostile.associate_rq(called=called, calling="ECHOSCU"))
        head = sock.recv(10)
    if head[:1] != b"\x03":
        return None
    return head[7], head[8], head[9]


def test_a_called_ae_title_not_ours_is_rejected_permanently(
    settings: Settings, tmp_path: Path
) -> None:
    env = {"RADDRAFT_CALLED_AE_ALIASES": "RADDRAFT_CXR"}
    with ListenerProcess(tmp_path / "listener.log", env=env).start() as listener:
        # PS3.8 Table 9-21: rejected-permanent (1), service-user (1), called AE title not
        # recognized (7). AE titles compare exactly: lower case is another title.
        assert _reject_of(listener.port, "ANY-SCP") == (1, 1, 7)
        assert _reject_of(listener.port, "raddraft") == (1, 1, 7)
        assert _reject_of(listener.port, "RADDRAFT") is None
        assert _reject_of(listener.port, "RADDRAFT_CXR") is None  # an alias
        refused = echoscu(listener.port, aec="OTHER")
        assert refused.returncode != 0
        assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
        assert echoscu(listener.port, aec="RADDRAFT_CXR").returncode == 0
        assert echoscu(listener.port).returncode == 0
        wait_for(lambda: "called AE title 'OTHER' not recognised" in listener.log_text())
