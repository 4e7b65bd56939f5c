"""Sign-in rate limiting: after N failures for one user name from one address within a window,
further attempts get 429 Too Many Requests (RFC 6585 4) with Retry-After until the window has
passed (OWASP Authentication Cheat Sheet: limit per account and source, do not lock out).

Kept in the web process's memory: with several web processes each counts its own, so the bound
is N per process; a restart forgets. That is enough to make online guessing slow.
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["LoginLimiter"]


class LoginLimiter:
    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def retry_after(self, user: str, address: str, now: float | None = None) -> int:
        """Seconds until ``user`` may try again from ``address``; 0 when allowed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent((user.lower(), address), now)
            if len(times) < self.max_failures:
                return 0
            return max(int(self.window - (now - times[0])) + 1, 1)

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent((user.lower(), address), now).append(now)
            if len(self._failures) > 100_000:  # a spray of names must not grow without bound
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop((user.lower(), address), None)
