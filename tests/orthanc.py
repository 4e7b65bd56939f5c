"""A real Orthanc PACS for tests: Debian's ``Orthanc`` with its own configuration on loopback.

Use the fixtures by importing them into a ``conftest.py``::

    from tests.orthanc import orthanc, orthanc_factory  # noqa: F401

``orthanc`` is one started server with the defaults; ``orthanc_factory(**options)`` starts
more, or ones configured differently (see :class:`OrthancServer` for the options), e.g.::

    pacs = orthanc_factory(modalities={"RADDRAFT": ("127.0.0.1", listener_port)})
    pacs.upload(path)                       # REST POST /instances
    pacs.study_instance_uids(study_uid)     # what arrived, by DICOM UID
    pacs.stop(); ...; pacs.start()          # PACS down, then back up with the same storage

Every server is killed at the end of the test. Orthanc's own log (``orthanc.log``) and its
stdout/stderr (``orthanc.out``) are in the server's directory; a failed start raises with
their tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from raddraft.settings import DicomNode
from tests.conftest import free_port

ORTHANC_BINARY = (
    os.environ.get("RADDRAFT_TEST_ORTHANC") or shutil.which("Orthanc") or ("/usr/sbin/Orthanc")
)

#: Debian's ``orthanc-dicomweb`` plugin (PS3.18 client and server inside Orthanc).
ORTHANC_DICOMWEB_PLUGIN = os.environ.get("RADDRAFT_TEST_ORTHANC_DICOMWEB") or next(
    iter(sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"), reverse=True)),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)

#: A modality Orthanc may talk to: ``(host, port)`` keyed by its AE title, or the full
#: Orthanc form ``{"AET": ..., "Host": ..., "Port": ...}`` (any DicomModalities option).
ModalitySpec = tuple[str, int] | Mapping[str, Any]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no file)"


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed."""


class OrthancServer:
    """One Orthanc process with its own configuration, storage and ports under ``workdir``.

    Options (all keyword, all optional):

    - ``aet``: Orthanc's AE title (``DicomAet``), default ``ORTHANC``.
    - ``modalities``: AE title -> ``(host, port)`` (or an Orthanc modality object) that Orthanc
      may C-MOVE / C-STORE to; more can be added later with :meth:`add_modality`.
    - ``check_called_aet``: ``DicomCheckCalledAet`` (reject associations addressed to another
      AE title), default ``False``.
    - ``allow_unknown_callers``: ``DicomAlwaysAllow{Echo,Store,Find,Move,Get}`` so any calling
      AE title may use it, default ``True``. With ``False`` only ``modalities`` may.
    - ``dicomweb_servers``: load the DICOMweb plugin (Orthanc then serves ``/dicom-web/``) and
      give it these remote DICOMweb servers, name -> ``{"Url": ..., "HttpHeaders": {...}}``
      (``/dicom-web/servers/<name>/...`` queries and retrieves from them). ``{}``: the plugin
      with no remote server.
    - ``config``: extra configuration entries, merged last (they win).

    Ports are picked once (free loopback ports) and kept across :meth:`stop` / :meth:`start`,
    as is the storage, so a restarted server still has what it stored.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, ModalitySpec] | None = None,
        check_called_aet: bool = False,
        allow_unknown_callers: bool = True,
        config: Mapping[str, Any] | None = None,
        dicomweb_servers: Mapping[str, Mapping[str, Any]] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.modalities: dict[str, ModalitySpec] = dict(modalities or {})
        self.check_called_aet = check_called_aet
        self.allow_unknown_callers = allow_unknown_callers
        self.extra_config = dict(config or {})
        self.dicomweb_servers = None if dicomweb_servers is None else dict(dicomweb_servers)
        self.start_timeout = start_timeout
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.out_path = self.workdir / "orthanc.out"
        self.process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def dicom_node(self) -> DicomNode:
        """Orthanc's DICOM address as RadDraft's settings write it (``AET@127.0.0.1:port``)."""
        return DicomNode(self.aet, "127.0.0.1", self.dicom_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http(self) -> httpx.Client:
        """An httpx client on the REST API (base URL set)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30.0)
        return self._client

    # -- configuration ---------------------------------------------------------------------

    def _modality_entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for aet, spec in self.modalities.items():
            if isinstance(spec, Mapping):
                entries[aet.lower()] = {"AET": aet, **spec}
            else:
                host, port = spec
                entries[aet.lower()] = {"AET": aet, "Host": host, "Port": int(port)}
        return entries

    def configuration(self) -> dict[str, Any]:
        """The JSON configuration this server runs with (Orthanc 1.10 option names)."""
        storage = self.workdir / "storage"
        allow = self.allow_unknown_callers
        config: dict[str, Any] = {
            "Name": f"raddraft-test-{self.aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "HttpThreadsCount": 4,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": allow,
            "DicomAlwaysAllowStore": allow,
            "DicomAlwaysAllowFind": allow,
            "DicomAlwaysAllowMove": allow,
            "DicomAlwaysAllowGet": allow,
            "UnknownSopClassAccepted": True,
            "DicomModalities": self._modality_entries(),
            "DicomModalitiesInDatabase": False,
            "DicomThreadsCount": 2,
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "SynchronousCMove": True,
            "StableAge": 2,
            "OverwriteInstances": True,
        }
        if self.dicomweb_servers is not None:
            config["Plugins"] = [str(ORTHANC_DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": {name: dict(spec) for name, spec in self.dicomweb_servers.items()},
            }
        config.update(self.extra_config)
        return config

    def add_modality(self, aet: str, host: str, port: int) -> None:
        """Let Orthanc reach ``aet`` at ``host:port`` (C-MOVE destination), also after restart."""
        self.modalities[aet] = (host, port)
        if self.running:
            self.rest(
                f"/modalities/{aet.lower()}",
                method="PUT",
                json={"AET": aet, "Host": host, "Port": port},
            )

    # -- process ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> OrthancServer:
        """Start Orthanc (again) and wait until REST ``/system`` answers and DICOM listens."""
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.configuration(), indent=2))
        with self.out_path.open("ab") as out:
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, f"--logfile={self.log_path}", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._start_failure(f"Orthanc exited with {self.process.returncode}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.kill()
        raise self._start_failure(f"Orthanc did not answer within {self.start_timeout:g} s")

    def _answers(self) -> bool:
        try:
            response = self.http.get("/system", timeout=2.0)
            if response.status_code != 200:
                return False
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=2.0):
                return True
        except (httpx.HTTPError, OSError):
            return False

    def _start_failure(self, what: str) -> OrthancError:
        return OrthancError(
            f"{what} (binary {ORTHANC_BINARY}, config {self.config_path}, "
            f"DICOM port {self.dicom_port}, HTTP port {self.http_port})\n"
            f"--- {self.log_path} ---\n{_tail(self.log_path)}\n"
            f"--- {self.out_path} ---\n{_tail(self.out_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc cleanly (SIGTERM), killing it if it does not exit; storage is kept."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def kill(self) -> None:
        """SIGKILL Orthanc's process group (a crash, as far as Orthanc can tell)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    # -- REST ------------------------------------------------------------------------------

    def rest(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        """Call the REST API; the decoded JSON answer (or the raw bytes when not JSON)."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise OrthancError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}"
            )
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def upload(self, item: str | Path | bytes | Dataset) -> dict[str, Any]:
        """Store one DICOM file through REST ``POST /instances``; Orthanc's answer (ID, ...)."""
        if isinstance(item, Dataset):
            buffer = BytesIO()
            item.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        elif isinstance(item, bytes):
            data = item
        else:
            data = Path(item).read_bytes()
        answer = self.rest("/instances", method="POST", content=data)
        if not isinstance(answer, dict) or answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload refused: {answer}")
        return answer

    def lookup(self, dicom_uid: str) -> list[dict[str, Any]]:
        """``/tools/lookup``: Orthanc's resources (Type, ID, Path) for a DICOM UID."""
        return list(self.rest("/tools/lookup", method="POST", content=dicom_uid.encode()))

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this StudyInstanceUID, or None."""
        for hit in self.lookup(study_uid):
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study with its main DICOM tags (``/studies/{id}/instances``)."""
        orthanc_id = self.study_id(study_uid)
        if orthanc_id is None:
            return []
        return list(self.rest(f"/studies/{orthanc_id}/instances"))

    def study_instance_uids(self, study_uid: str) -> set[str]:
        """SOPInstanceUIDs Orthanc holds in the study."""
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.study_instances(study_uid)}

    def instance_tags(self, sop_instance_uid: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags`` of the instance with this SOPInstanceUID."""
        for hit in self.lookup(sop_instance_uid):
            if hit.get("Type") == "Instance":
                return dict(self.rest(f"/instances/{hit['ID']}/simplified-tags"))
        raise OrthancError(f"no instance {sop_instance_uid}")

    def instance_count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


def _fresh_workdir(base: Path) -> Path:
    for number in range(1000):
        path = base / f"orthanc{number}"
        if not path.exists():
            return path
    raise OrthancError(f"too many Orthanc servers under {base}")


def start_orthanc(workdir: Path, *, attempts: int = 3, **options: Any) -> OrthancServer:
    """Start an :class:`OrthancServer`, retrying with new ports if a port was taken meanwhile."""
    error: OrthancError | None = None
    for attempt in range(attempts):
        server = OrthancServer(workdir / f"try{attempt}" if attempt else workdir, **options)
        try:
            return server.start()
        except OrthancError as exc:
            server.stop()
            error = exc
    assert error is not None
    raise error


@pytest.fixture
def orthanc_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc servers with :class:`OrthancServer` options; all are killed afterwards."""
    if not Path(ORTHANC_BINARY).exists():
        pytest.fail(f"Orthanc is not installed ({ORTHANC_BINARY}); apt-get install orthanc")
    base = tmp_path_factory.mktemp("orthanc")
    servers: list[OrthancServer] = []

    def make(**options: Any) -> OrthancServer:
        server = start_orthanc(_fresh_workdir(base), **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()
        server.stop()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """One running Orthanc with the default options (AE title ``ORTHANC``)."""
    return orthanc_factory()
