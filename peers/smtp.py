"""Critical-finding notices by e-mail: SMTP (RFC 5321) with optional STARTTLS (RFC 3207).

:class:`SmtpSender` sends each outbox message (an RFC 5322 file written once) to the relay at
``host:port`` with :mod:`smtplib`. The acknowledgement is the server's reply to the end of DATA,
``250`` (RFC 5321 4.2.2), kept in the delivery detail. A relay that cannot be reached, times out
or answers 4xx is transient (RFC 5321 4.2.1: "transient negative completion"); a 5xx, or every
recipient refused, is permanent.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time
from collections.abc import Sequence
from email.utils import getaddresses

from peers._sender import Delivery, Outbound, PermanentDeliveryError, TransientDeliveryError
from raddraft.destinations import SmtpTarget
from raddraft.settings import Settings

__all__ = ["SmtpPermanentError", "SmtpSender", "SmtpTransientError"]


class SmtpTransientError(TransientDeliveryError):
    """The relay is down, timed out, or answered 4xx: try again later."""


class SmtpPermanentError(PermanentDeliveryError):
    """The relay refused the message for good (5xx, every recipient refused)."""


class SmtpSender:
    """An SMTP relay at ``host:port``; ``starttls`` upgrades the session before sending."""

    kind = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: bool = False,
        user: str = "",
        password: str = "",
        timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.destination = f"{host}:{port}"
        self.starttls = starttls
        self.user = user
        self.password = password
        self.timeout = timeout
        self.ssl_context = ssl_context

    @classmethod
    def configured(cls, target: SmtpTarget, settings: Settings) -> SmtpSender:
        """The relay ``target`` (``RADDRAFT_CRITICAL_SMTP``) with the session settings."""
        return cls(
            target.host,
            target.port,
            starttls=settings.critical_smtp_starttls,
            user=settings.critical_smtp_user,
            password=settings.critical_smtp_password,
        )

    def send(self, payload: Sequence[Outbound]) -> Delivery:
        """Send each message to the recipients of its To/Cc headers; one session for all."""
        started = time.monotonic()
        delivered: list[str] = []
        acks: dict[str, str] = {}
        current = ""
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as client:
                client.ehlo()
                if self.starttls:
                    client.starttls(context=self.ssl_context or ssl.create_default_context())
                    client.ehlo()
                if self.user:
                    client.login(self.user, self.password)
                for item in payload:
                    current = item.identifier
                    acks[item.identifier] = self._send_one(client, item)
                    delivered.append(item.identifier)
        except smtplib.SMTPRecipientsRefused as error:
            raise SmtpPermanentError(
                f"every recipient refused: {error.recipients}",
                delivered=delivered,
                failed=(current,),
            ) from error
        except smtplib.SMTPResponseException as error:
            kind = SmtpTransientError if 400 <= error.smtp_code < 500 else SmtpPermanentError
            raise kind(
                f"SMTP {error.smtp_code}: {error.smtp_error!r}",
                delivered=delivered,
                failed=(current,) if current else (),
            ) from error
        except (OSError, smtplib.SMTPException) as error:
            raise SmtpTransientError(
                f"SMTP relay {self.destination}: {error}",
                delivered=delivered,
                failed=(current,) if current else (),
            ) from error
        return Delivery(
            destination=self.destination,
            delivered=tuple(delivered),
            seconds=time.monotonic() - started,
            detail={"acks": acks},
        )

    def _send_one(self, client: smtplib.SMTP, item: Outbound) -> str:
        """Send one message; return the 250 reply to its DATA (the acknowledgement)."""
        raw = item.path.read_bytes()
        message = email.message_from_bytes(raw, policy=email.policy.SMTP)
        headers = [*message.get_all("To", []), *message.get_all("Cc", [])]
        recipients = [address for _, address in getaddresses(headers) if address]
        sender = message.get("From", "")
        if not recipients:
            raise SmtpPermanentError(
                f"{item.identifier} has no recipient", failed=(item.identifier,)
            )
        code, reply = client.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, reply)
        if len(refused) == len(recipients):
            client.rset()
            codes = {c for c, _ in refused.values()}
            if all(400 <= c < 500 for c in codes):
                raise smtplib.SMTPResponseException(min(codes), b"recipients deferred")
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = client.data(raw)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        ack = f"{code} {reply.decode(errors='replace')}"
        return ack + (f" (refused: {sorted(refused)})" if refused else "")
