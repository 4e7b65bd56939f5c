"""DICOMweb (PS3.18) over RadDraft's archive and its own SR and GSPS: the service's insides.

The routes are :mod:`web.api.dicomweb_routes`; this package holds what they use:

- :mod:`~web.dicomweb.catalog`: every object a client may find (the archive's instances,
  read through :mod:`dicom_listener`'s public face, and RadDraft's SR and GSPS in the outbox),
  QIDO-RS searching, paged in SQL (PS3.18 8.3.4), and the attributes each level returns;
- :mod:`~web.dicomweb.matching`: PS3.4 C.2.2.2 matching as SQL terms (LIKE with SQL's own
  wildcards escaped, never a regular expression built from a query) and over values in hand;
- :mod:`~web.dicomweb.multipart`: multipart/related bodies in and out (RFC 2387);
- :mod:`~web.dicomweb.pixels`: frames, rendered JPEG/PNG and transcoding for WADO-RS;
- :mod:`~web.dicomweb.stow`: the store transaction's response (PS3.18 10.5.3).

It lives in ``report_drafts`` because it serves both folders' objects: the archive (which
``report_drafts`` may read through ``dicom_listener``) and the outbox (which only
``report_drafts`` knows); STOW-RS files instances through ``dicom_listener.ingest_batch``, so
the listener stays the only writer of the archive.
"""
