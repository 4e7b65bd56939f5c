"""Who may open an association and for how long it may take (PS3.8 7.1, 9.3.4).

The called AE title must be the listener's own or an alias (issue 20, item 4); a connection that
never finishes its A-ASSOCIATE-RQ holds its slot only briefly, and one address cannot hold more
than its share of slots (item 5). Loopback only: 127.0.0.2 stands for a second host.
"""

from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack
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


def _stall(port: int, source: str) -> socket.socket:
    """A connection from ``source`` that sends the first bytes of an A-ASSOCIATE-RQ, then
    nothing: no AE title needed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    sock.sendall(hostile.associate_rq()[:10])
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def test_stalled_connections_cannot_lock_senders_out(settings: Settings, tmp_path: Path) -> None:
    env = {
        "RADDRAFT_ASSOCIATION_SETUP_SECONDS": "3",
        "RADDRAFT_MAX_CONNECTIONS_PER_PEER": "4",
        "RADDRAFT_NETWORK_TIMEOUT_SECONDS": "60",
    }
    with (
        ListenerProcess(tmp_path / "listener.log", env=env).start() as listener,
        ExitStack() as out,
    ):
        # Twenty half-open connections from one host (the attack: 16 slots by default).
        stalled = [out.enter_context(_stall(listener.port, "127.0.0.2")) for _ in range(20)]
        # One more from a third host trickles a byte every half second: still cut at the deadline.
        trickle = out.enter_context(_stall(listener.port, "127.0.0.3"))
        started = time.monotonic()
        time.sleep(0.5)
        closed, _, _ = select.select(stalled, [], [], 0)
        assert len(closed) == 16  # four per address; the rest closed at accept
        assert echoscu(listener.port).returncode == 0  # a real sender is served at once
        assert time.monotonic() - started < 5
        for _ in range(8):
            try:
                trickle.sendall(b"\0")
            except OSError:
                break
            time.sleep(0.5)
        assert all(_closed_within(s, 6) for s in [*stalled, trickle])
        assert time.monotonic() - started < 12  # not network_timeout's 60 s
        wait_for(lambda: "association not negotiated in time" in listener.log_text())
        assert "too many from this address" in listener.log_text()
        assert hostile.echo(listener.port)
