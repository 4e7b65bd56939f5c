"""``python -m dicom_listener``: the same as ``raddraft listen`` (used by tests and containers)."""

from __future__ import annotations

from raddraft import logging as rlog
from raddraft.commands.listener import listen
from raddraft.settings import get_settings

if __name__ == "__main__":
    rlog.configure(get_settings().log_level)
    listen(prog_name="python -m dicom_listener")
