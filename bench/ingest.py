"""Ingest benchmark: RadDraft's listener against DCMTK storescp and Orthanc, all fed by storescu.

    python bench/ingest.py [--runs 3] [--skip-small]

Makes (or reuses, under bench/.cache) 40 DX images of ~10 MB (2500x2048, 16-bit) in 20
two-view studies and 400 small ones (256x256) in 100 four-image studies. Each receiver is
started fresh for each run on a loopback port with its own storage in a temporary folder:

- RadDraft: ``python -m raddraft listen`` (durable: fsync + rename + database commit before
  each response), SQLite in the temporary data directory;
- DCMTK ``storescp -od <dir>`` (writes files, no fsync);
- Orthanc (Debian's /usr/sbin/Orthanc) with its own JSON configuration.

Every set is sent with DCMTK ``storescu`` over one association and with one association per
study (``TCP_NODELAY=1``: Debian's DCMTK otherwise waits ~45 ms per C-STORE). The median of
``--runs`` runs is reported as img/s, MB/s and the receiver's CPU time per image (user+system
of the receiving process, from /proc). The last line is

    RESULT ingest_vs_orthanc=<RadDraft/Orthanc> ingest_vs_storescp=<RadDraft/storescp>

for the large set over one association. The machine may be shared: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dicom_factory import StudyIds, make_cxr  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ImageSet:
    name: str
    studies: list[list[Path]]

    @property
    def files(self) -> list[Path]:
        return [f for study in self.studies for f in study]

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def make_set(name: str, n_studies: int, per_study: int, rows: int, cols: int) -> ImageSet:
    folder = CACHE / name
    done = folder / "complete.json"
    if done.exists():
        layout = json.loads(done.read_text())
        return ImageSet(name, [[folder / f for f in study] for study in layout])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    layout = []
    for s in range(n_studies):
        ids = StudyIds(patient_id=f"BENCH{s:04d}", accession=f"B{s:06d}")
        study = []
        for i in range(per_study):
            filename = f"s{s:04d}_{i:02d}.dcm"
            make_cxr(
                folder / filename,
                patient_id=ids.patient_id,
                study_uid=ids.study_uid,
                series_uid=ids.series_uid,
                accession=ids.accession,
                view="PA" if i % 2 == 0 else "LATERAL",
                rows=rows,
                cols=cols,
                instance_number=i + 1,
                seed=s * 100 + i,
            )
            study.append(filename)
        layout.append(study)
    done.write_text(json.dumps(layout))
    return ImageSet(name, [[folder / f for f in study] for study in layout])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system time of the process (all its threads) and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


class Receiver:
    name = ""
    aet = "ANY-SCP"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env = self.command()
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_port(self.port, self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class RadDraftReceiver(Receiver):
    name = "raddraft"
    aet = "RADDRAFT"

    def command(self) -> tuple[list[str], dict[str, str]]:
        data = self.workdir / "data"
        env = {
            **os.environ,
            "RADDRAFT_DATA_DIR": str(data),
            "RADDRAFT_DATABASE_URL": f"sqlite:///{data / 'raddraft.db'}",
            "RADDRAFT_ALLOWED_CALLERS": "*",
            "RADDRAFT_LOG_LEVEL": "WARNING",
            "RADDRAFT_DISK_MIN_FREE_MB": "256",
            "RADDRAFT_DISK_WATERMARK_PERCENT": "99",
        }
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "raddraft", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        argv = [sys.executable, "-m", "raddraft", "listen", "--host", "127.0.0.1"]
        return [*argv, "--port", str(self.port)], env


class StorescpReceiver(Receiver):
    name = "storescp"

    def command(self) -> tuple[list[str], dict[str, str]]:
        out = self.workdir / "storescp"
        out.mkdir(parents=True, exist_ok=True)
        return [str(DCMTK / "storescp"), "-od", str(out), str(self.port)], DCMTK_ENV


class OrthancReceiver(Receiver):
    name = "orthanc"
    aet = "ORTHANC"

    def command(self) -> tuple[list[str], dict[str, str]]:
        storage = self.workdir / "orthanc"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        return [str(ORTHANC), str(path)], dict(os.environ)


def send(receiver: Receiver, images: ImageSet, per_study: bool) -> float:
    """Send the set with storescu; returns seconds. Fails loudly if anything is not stored."""
    batches = images.studies if per_study else [images.files]
    started = time.perf_counter()
    for batch in batches:
        command = [str(DCMTK / "storescu"), "-aet", "BENCH", "-aec", receiver.aet]
        command += ["127.0.0.1", str(receiver.port), *map(str, batch)]
        result = subprocess.run(
            command,
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{receiver.name}: storescu failed\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


@dataclass(frozen=True)
class Measure:
    seconds: float
    cpu: float


def measure(
    factory: Callable[[Path], Receiver], images: ImageSet, per_study: bool, runs: int
) -> tuple[float, float, float]:
    """(img/s, MB/s, receiver CPU ms per image), medians over ``runs`` fresh receivers."""
    results: list[Measure] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="raddraft-bench-") as tmp:
            receiver = factory(Path(tmp))
            receiver.start()
            try:
                assert receiver.process is not None
                cpu_before = cpu_seconds(receiver.process.pid)
                seconds = send(receiver, images, per_study)
                cpu = cpu_seconds(receiver.process.pid) - cpu_before
            finally:
                receiver.stop()
            results.append(Measure(seconds, cpu))
    seconds = statistics.median(r.seconds for r in results)
    cpu = statistics.median(r.cpu for r in results)
    n = len(images.files)
    return n / seconds, images.megabytes / seconds, 1000 * cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-small", action="store_true")
    args = parser.parse_args()

    for tool in (DCMTK / "storescu", DCMTK / "storescp", ORTHANC):
        if not tool.exists():
            sys.exit(f"missing {tool} (Debian packages dcmtk and orthanc)")
    sets = [make_set("large", 20, 2, 2500, 2048)]
    if not args.skip_small:
        sets.append(make_set("small", 100, 4, 256, 256))
    receivers: dict[str, Callable[[Path], Receiver]] = {
        "raddraft": RadDraftReceiver,
        "storescp": StorescpReceiver,
        "orthanc": OrthancReceiver,
    }
    heading = ("receiver", "set", "associations", "img/s", "MB/s", "cpu ms/img")
    print("{:<9} {:<6} {:<13} {:>8} {:>8} {:>11}".format(*heading))
    table: dict[tuple[str, str, bool], float] = {}
    for images in sets:
        for per_study in (False, True):
            for name, factory in receivers.items():
                rate, mbps, cpu = measure(factory, images, per_study, args.runs)
                table[(name, images.name, per_study)] = rate
                mode = "per study" if per_study else "one"
                print(
                    f"{name:<9} {images.name:<6} {mode:<13} {rate:>8.1f} {mbps:>8.1f} {cpu:>11.1f}",
                    flush=True,
                )
    ours = table[("raddraft", "large", False)]
    vs_orthanc = ours / table[("orthanc", "large", False)]
    vs_storescp = ours / table[("storescp", "large", False)]
    print(f"RESULT ingest_vs_orthanc={vs_orthanc:.2f} ingest_vs_storescp={vs_storescp:.2f}")


if __name__ == "__main__":
    main()
