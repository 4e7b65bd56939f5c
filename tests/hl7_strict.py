"""hl7apy's strict validation of an ER7 message, as a strict RIS reads what RadDraft sends.

:func:`strict_errors` parses with ``VALIDATION_LEVEL.STRICT`` (lengths, data types, the
message structure of HL7 v2.5.1) and runs hl7apy's validator over the result; on top of what
hl7apy checks it checks what hl7apy leaves out for an ORU: OBX-2 is a value type of HL7 table
0125 and OBX-5 is present only with one (ch. 7.4.2.2); MSH-9 has all three components, its
message structure matching the message (ch. 2.14.9.9).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

#: HL7 v2.5.1 table 0125 (value type), the values OBX-2 may take.
VALUE_TYPES = frozenset(
    {
        "AD", "CE", "CF", "CK", "CN", "CP", "CX", "DT", "ED", "FT", "MO", "NM", "PN",
        "RP", "SN", "ST", "TM", "TN", "TS", "TX", "XAD", "XCN", "XON", "XPN", "XTN",
    }
)  # fmt: skip
_STRUCTURES = {"ORU^R01": "ORU_R01", "ACK": "ACK"}


def _parse(message: str) -> Message:
    parsed = parse_message(
        message.replace("\n", "\r"), find_groups=True, validation_level=VALIDATION_LEVEL.STRICT
    )
    parsed.validate()
    return parsed


def _msh9_errors(parsed: Message) -> list[str]:
    parts = parsed.msh.msh_9.to_er7().split("^")
    if len(parts) != 3:
        return [f"MSH-9 {parts!r} lacks a component (code^trigger^structure)"]
    expected = _STRUCTURES.get(parts[0], _STRUCTURES.get(f"{parts[0]}^{parts[1]}"))
    if expected is not None and parts[2] != expected:
        return [f"MSH-9.3 {parts[2]!r} is not {expected!r}"]
    return []


def _obx_errors(message: str) -> list[str]:
    errors: list[str] = []
    for segment in message.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] != "OBX":
            continue
        value_type = fields[2] if len(fields) > 2 else ""
        value = fields[5] if len(fields) > 5 else ""
        if value and value_type not in VALUE_TYPES:
            errors.append(f"OBX-2 {value_type!r} is not a value type (table 0125): {segment}")
    return errors


def strict_errors(message: str) -> list[str]:
    """Why a strict HL7 v2.5.1 reader refuses ``message``; empty when it reads it."""
    try:
        parsed = _parse(message)
    except HL7apyException as error:
        return [f"{type(error).__name__}: {error}"]
    return _msh9_errors(parsed) + _obx_errors(message)


def assert_strict(message: str) -> Message:
    """``message`` parsed strictly; the test fails with the reasons otherwise."""
    errors = strict_errors(message)
    assert not errors, "\n".join([*errors, message.replace("\r", "\n")])
    return _parse(message)


class BuiltMessages:
    """Every ORU^R01 this process builds (hl7apy's ``Message.to_er7``), checked strictly.

    :meth:`install` wraps ``Message.to_er7`` (looked up on the class at each call, so every
    builder is covered however it was imported); :attr:`refused` collects what failed, with
    why. The check's own use of hl7apy is not checked again.
    """

    def __init__(self) -> None:
        self.refused: list[str] = []
        self._checking = threading.local()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = Message.to_er7

        def to_er7(message: Message, *args: Any, **kwargs: Any) -> Any:
            text = original(message, *args, **kwargs)
            if message.name == "ORU_R01" and not getattr(self._checking, "on", False):
                self._checking.on = True
                try:
                    errors = strict_errors(str(text))
                finally:
                    self._checking.on = False
                if errors:
                    self.refused.append("\n".join([*errors, str(text).replace("\r", "\n")]))
            return text

        monkeypatch.setattr(Message, "to_er7", to_er7)
