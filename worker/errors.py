"""How a task says what kind of failure it met; the job runner retries or dead-letters."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (a destination rejected us for good, a study cannot be read)."""


class TransientError(Exception):
    """Worth another try after a backoff (a peer is down, a database hiccup)."""
