"""A forked process (a Celery prefork child) audits through a sender of its own."""

from __future__ import annotations

import os
import socket

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
