"""``raddraft web``: the web tier (review desk, queue page, API, DICOMweb, FHIR, /metrics)."""

from __future__ import annotations

import gc
import logging
from typing import Any

import click

from raddraft.logging import kv
from raddraft.settings import Settings, get_settings
from raddraft.tls import server_context


def server_config(app: Any, settings: Settings, host: str, port: int) -> Any:
    """uvicorn's configuration of the web app. X-Forwarded-For is believed only from
    RADDRAFT_WEB_TRUSTED_PROXIES: uvicorn by default believes it from any local process, and a
    proxy on another host went unheard, so every client behind it shared one sign-in limit."""
    import uvicorn

    proxies = list(settings.web_trusted_proxies)
    # log_config=None: uvicorn logs through RadDraft's handler, one format for every process;
    # log_level=None: the levels stay as raddraft.logging set them (access lines at INFO).
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=None,
        log_config=None,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


@click.command()
@click.option("--host", default=None, help="Default: RADDRAFT_WEB_HOST.")
@click.option("--port", type=int, default=None, help="Default: RADDRAFT_WEB_PORT.")
def web(host: str | None, port: int | None) -> None:
    """Serve the review desk, the queue page, the API, FHIR and /metrics with uvicorn."""
    import uvicorn

    from web import create_web_app

    settings = get_settings()
    bind, bind_port = host or settings.web_host, port or settings.web_port
    tls = bool(settings.web_tls_cert and settings.web_tls_key)
    url = f"{'https' if tls else 'http'}://{bind}:{bind_port}/"
    config = server_config(create_web_app(settings), settings, bind, bind_port)
    config.load()
    if tls:
        # uvicorn's own ssl options cannot set a minimum version: the PS3.15 B.9 (BCP 195)
        # context from raddraft.tls replaces the one it would build.
        cert, key, ca = settings.web_tls_cert, settings.web_tls_key, settings.web_tls_ca
        assert cert is not None and key is not None
        config.ssl = server_context(cert, key, ca)
    logging.getLogger("raddraft.web").info(
        "web serving %s", kv(url=url, api_docs=f"{url}docs", fhir=f"{url}fhir/")
    )
    # What the imports and the app built lives as long as the process: out of the collector's
    # sight, a full collection no longer walks it (over 200,000 objects, about 0.1 s, every few
    # dozen requests that allocate much: a FHIR page of fifty resources).
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run()
