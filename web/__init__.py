"""web: the web tier. The review desk and queue pages, the JSON API, DICOMweb, FHIR and metrics.

Like ``worker/``, this is where the folders meet: it reads the archive through
``dicom_listener``'s public face and the reports through ``report_drafts``' public face, and
serves them over HTTP. Nothing below it imports it.

Public API
----------
``create_web_app(settings) -> FastAPI``
    The whole app: ``/api`` (:mod:`web.api`), the pages (:mod:`web.pages`), ``/dicomweb``
    (:mod:`web.dicomweb`), ``/fhir``, ``/metrics`` (:mod:`web.metrics`), ``/healthz`` and
    ``/readyz``. ``raddraft web`` serves it.
"""

from __future__ import annotations

from web.app import create_web_app

__all__ = ["create_web_app"]
