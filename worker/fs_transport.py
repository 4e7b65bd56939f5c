"""kombu's filesystem transport, with message files that appear whole.

The stock transport creates the message file in the queue folder and then writes into it; a
consumer in another process may move and read the file in between, get an empty or cut payload,
and its consume loop dies on the JSON error. Here a message is written to a side folder, synced,
and renamed into the queue folder, so a consumer sees either no file or the whole message.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own base classes disagree on this signature; this one matches the direct parent.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` on ``queue`` atomically (same file name scheme as kombu's)."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        incoming = Path(self.data_folder_out).parent / "incoming"
        incoming.mkdir(exist_ok=True)
        staged = incoming / name
        with open(staged, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, Path(self.data_folder_out) / name)


class Transport(filesystem.Transport):
    Channel = Channel
