"""The sign-in limit: failed sign-ins counted per account and address, in the database.

After ``max_failures`` failures within the window, further attempts get 429 Too Many Requests
(RFC 6585 4) with Retry-After until the oldest counted failure leaves the window (OWASP
Authentication Cheat Sheet: limit per account and source, do not lock accounts out).

Why these keys (issue 20):

* A **password** sign-in counts per (user name, address). Over the limit the password is not
  even checked, so guessing stays at ``max_failures`` per window for one account from one
  address. Another account, or the same account from another address, is not affected; the one
  user an attacker can hold up is the account they guess at from the attacker's own address
  (a shared NAT), and that user can still sign in with their API token.
* An **API token** names no account, so its failures count per address, and a *valid* token is
  always accepted: it is looked up before the limit is asked. Guessing is not what the limit
  stops here: a token is 32 random bytes (256 bits), beyond any online guessing at any rate.
  The limit answers a spray of wrong tokens with 429 (and the log says so) without ever
  refusing the colleague behind the same address who holds a real one.
* Failures over the limit are not recorded, so one window's rows per (subject, address) stay
  at ``max_failures``; rows older than the window are deleted when the next failure is
  recorded.

The failures live in the database table ``sign_in_failures`` (:mod:`report_drafts.users`), so
every web process counts the same ones and a restart forgets nothing. Two processes answering
at the same instant may each let one more attempt through (count, then insert, without a lock):
the bound is ``max_failures`` plus the number of web processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

import report_drafts as drafts

__all__ = ["SignInLimit"]


@dataclass(frozen=True)
class SignInLimit:
    max_failures: int
    window_seconds: float

    def wait(self, session: Session, subject: str, address: str) -> int:
        """Seconds until ``subject`` may try again from ``address``; 0 when allowed now."""
        return drafts.sign_in_wait(
            session,
            subject,
            address,
            max_failures=self.max_failures,
            window_seconds=self.window_seconds,
        )

    def failed(self, session: Session, subject: str, address: str) -> None:
        drafts.record_sign_in_failure(session, subject, address, window_seconds=self.window_seconds)

    def succeeded(self, session: Session, subject: str, address: str) -> None:
        drafts.clear_sign_in_failures(session, subject, address)
