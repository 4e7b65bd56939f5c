"""The README's "Try it with DCMTK" command, run as written against a running listener."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dicom_listener.tables import Instance
from raddraft.db import session_scope
from tests.dicom_factory import make_study
from tests.listener_process import ListenerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_storescu_command_stores_a_study(
    listener: ListenerProcess, engine: Engine, tmp_path: Path
) -> None:
    commands = re.findall(r"`(storescu [^`]+)`", README.read_text(encoding="utf-8"))
    assert commands, "the README shows how to push a study with storescu"
    _, files = make_study(tmp_path / "study", ("PA", "LATERAL"))
    argv = []
    for word in shlex.split(commands[0]):
        if word == "11112":  # the default port; the test's listener has its own
            word = str(listener.port)
        if word.endswith("*.dcm"):
            argv += [str(f) for f in files]
            continue
        argv.append(word)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(files)
