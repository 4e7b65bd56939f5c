"""The embedded broker under a producer and a consumer in two processes at once.

kombu's stock filesystem transport lets a consumer read a message file that the producer is still
writing; the consumer then fails on a cut JSON payload and its loop dies (seen in the queue tests).
RadDraft's transport renames whole files into the queue folder, so every message arrives intact.
"""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path
from typing import Any

from kombu import Connection

TRANSPORT = "worker.fs_transport:Transport"
MESSAGES = 150
PAD = "x" * 300_000  # large payloads widen the window between creating and finishing a file


def _options(folder: Path) -> dict[str, Any]:
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # Without control_folder kombu writes its exchange table into the working directory.
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "polling_interval": 0.001,
    }


def _produce(folder: Path, transport: str) -> None:
    with Connection(
        "filesystem://", transport=transport, transport_options=_options(folder)
    ) as connection:
        outbox = connection.SimpleQueue("stress")
        for index in range(MESSAGES):
            outbox.put({"index": index, "pad": PAD})


def consume_while_producing(folder: Path, transport: str) -> list[int]:
    """Drain the queue while another process fills it; the indexes received, in order."""
    producer = multiprocessing.get_context("fork").Process(
        target=_produce, args=(folder, transport)
    )
    received: list[int] = []
    with Connection(
        "filesystem://", transport=transport, transport_options=_options(folder)
    ) as connection:
        inbox = connection.SimpleQueue("stress")
        producer.start()
        try:
            while len(received) < MESSAGES:
                try:
                    message = inbox.get(timeout=30)
                except queue.Empty:
                    break
                assert message.payload["pad"] == PAD
                received.append(message.payload["index"])
                message.ack()
        finally:
            producer.join(60)
    return received


def test_every_message_arrives_whole(tmp_path: Path) -> None:
    received = consume_while_producing(tmp_path / "broker", TRANSPORT)
    assert sorted(received) == list(range(MESSAGES))
