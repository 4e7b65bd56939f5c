"""A forked process (a Celery prefork child) audits through a sender of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from raddraft import atna
from raddraft.settings import Settings


def test_a_forked_child_sends_its_own_audit_records() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        port = collector.getsockname()[1]
        settings = Settings(atna_collector=f"127.0.0.1:{port}", atna_transport="udp")
        atna.emit(b"<parent/>", settings)  # the parent's sender thread now runs
        assert b"<parent/>" in collector.recv(65536)

        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                atna.emit(b"<child/>", settings)
                code = 0 if atna.flush(5) else 1
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)

        assert os.waitstatus_to_exitcode(status) == 0
        assert b"<child/>" in collector.recv(65536)


def test_records_queued_when_a_process_ends_still_reach_the_collector() -> None:
    """The sender is a daemon thread, killed at exit: the process waits for it (a few seconds
    at most) so that the record of its last action is not lost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.listen()
        collector.settimeout(30)
        port = collector.getsockname()[1]
        script = (
            "from raddraft import atna\n"
            "from raddraft.settings import Settings\n"
            f"atna.emit(b'<last/>', Settings(atna_collector='127.0.0.1:{port}', "
            "atna_transport='tcp'))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        connection, _ = collector.accept()
        with connection:
            connection.settimeout(10)
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
        assert b"<last/>" in received
