"""A real syslog receiver for the ATNA tests: Debian's rsyslogd, our own instance.

:class:`Rsyslog` writes a configuration that listens on free loopback ports, TLS over TCP
(RFC 5425, gtls driver, client certificates checked against the test CA) and UDP (RFC 5426),
and writes every message it receives to one file, one line each, with the RFC 5424 header
fields rsyslog parsed: ``<transport>|<pri>|<app-name>|<msgid>|<msg>``.

Every message it received is checked when it stops (:mod:`tests.atna_check`: the PS3.15 A.5.1
schema and the participants A.5.3 requires of the event); one that fails fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.atna_check import audit_errors
from tests.conftest import free_port
from tests.listener_process import port_open

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


class Rsyslog:
    def __init__(self, folder: Path, certs: dict[str, Path]) -> None:
        self.folder = folder
        self.certs = certs
        self.tls_port = free_port()
        self.udp_port = free_port()
        self.output = folder / "received.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        line = "%inputname%|%pri%|%app-name%|%msgid%|%msg%\\n"
        return f"""
global(
  workDirectory="{self.folder}"
  defaultNetstreamDriverCAFile="{self.certs["ca"]}"
  defaultNetstreamDriverCertFile="{self.certs["server_crt"]}"
  defaultNetstreamDriverKeyFile="{self.certs["server_key"]}"
  maxMessageSize="64k"
  parser.escapeControlCharactersOnReceive="off"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
input(type="imtcp" port="{self.tls_port}" address="127.0.0.1")
module(load="imudp")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1")
template(name="fields" type="string" string="{line}")
action(type="omfile" file="{self.output}" template="fields" flushOnTXEnd="on"
       asyncWriting="off")
"""

    def start(self) -> Rsyslog:
        conf = self.folder / "rsyslog.conf"
        conf.write_text(self.config())
        log = (self.folder / "rsyslogd.out").open("wb")
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.folder / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not port_open(self.tls_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.folder / "rsyslogd.out").read_text())
            time.sleep(0.1)
        return self

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines() if self.output.exists() else []

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.lines()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def invalid(self) -> list[str]:
        """Each received audit message an audit repository would refuse, with why."""
        refused = []
        for line in self.lines():
            xml = line.split("|", 4)[-1].strip().encode()
            errors = audit_errors(xml)
            if errors:
                refused.append("\n".join([*errors, xml.decode(errors="replace")]))
        return refused

    def check(self) -> None:
        """Fail the test if any message received breaks the schema or its event's rules."""
        refused = self.invalid()
        assert not refused, "ATNA messages refused:\n" + "\n\n".join(refused)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        self.stop()
        if exc_type is None:
            self.check()
