"""CI installs packages with services forbidden to start and stops nothing (.ci/install,
.ci/run): a system Orthanc, or one a user or another test run started, is never touched."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"{log}"
if [ "$1" = install ]; then "$CI_POLICY_RC_D" orthanc start; echo "policy $?" >>"{log}"; fi
"""


def _install(tmp_path: Path, *packages: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for name in ("apt-get", "service", "systemctl", "invoke-rc.d", "pkill", "killall"):
        (bin_dir / name).write_text(STUB.format(log=log))
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CI_POLICY_RC_D": str(tmp_path / "policy-rc.d"),
    }
    subprocess.run(
        ["bash", str(ROOT / ".ci" / "install"), *packages], env=env, check=True, timeout=60
    )
    return log.read_text().splitlines() if log.exists() else []


def test_packages_install_with_services_forbidden_and_the_policy_removed_after(
    tmp_path: Path,
) -> None:
    calls = _install(tmp_path, "orthanc", "orthanc-dicomweb")
    assert calls == [
        "apt-get update -qq",
        "apt-get install -y -qq orthanc orthanc-dicomweb",
        "policy 101",
    ]  # invoke-rc.d(8): 101 = action forbidden by policy
    assert not (tmp_path / "policy-rc.d").exists()


def test_a_machine_policy_is_put_back_as_it_was(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    policy.chmod(0o750)
    calls = _install(tmp_path, "rsyslog")
    assert "policy 101" in calls
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert policy.stat().st_mode & 0o777 == 0o750


def test_nothing_to_install_calls_nothing(tmp_path: Path) -> None:
    assert _install(tmp_path) == []


@pytest.mark.parametrize("script", [".ci/run", ".ci/install"])
def test_ci_stops_no_service_and_kills_no_process_by_name(script: str) -> None:
    text = (ROOT / script).read_text()
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    stopping = re.compile(r"\b(service\s+\S+\s+stop|systemctl\s+stop|pkill|killall|kill\s)")
    assert [line for line in commands if stopping.search(line)] == []
