"""How a task says what kind of failure it met; the job runner retries or dead-letters."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (a destination rejected us for good, a study cannot be read)."""


class TransientError(Exception):
    """Worth another try after a backoff (a peer is down, a database hiccup)."""


class NotYet(Exception):
    """Not now, and no failure: an earlier job must finish first (an older report version
    still being delivered to the same destination). The job comes back after
    ``delay_seconds`` without spending an attempt."""

    def __init__(self, message: str, *, delay_seconds: float) -> None:
        super().__init__(message)
        self.delay_seconds = delay_seconds
