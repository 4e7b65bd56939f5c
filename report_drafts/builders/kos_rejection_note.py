"""The IHE IOCM rejection note that withdraws a draft's SR and GSPS from PACS.

A Key Object Selection Document (DICOM PS3.3 A.35.4, template TID 2010) whose document title
(CID 7010) says why the referenced instances are rejected, and whose Current Requested
Procedure Evidence Sequence (PS3.3 C.17.6) lists each withdrawn SR and GSPS. An IOCM Image
Manager (IHE RAD TF-1 35, "Imaging Object Change Management") hides the instances a rejection
note references from regular queries and viewing; a plain PACS stores the note next to them.

The title is (113001, DCM, "Rejected for Quality Reasons"), not (113037, DCM, "Rejected for
Patient Safety Reasons"). IOCM keeps 113037 for instances that must never be shown for this
patient (wrong patient, wrong study: the data is about someone else) and receivers treat it as
an incident; a withdrawn AI draft is rightly identified and filed, it is only a reading a
radiologist did not endorse (rejected) or an outdated one (superseded by a later draft). That
is the quality case: hidden from clinical use, kept for the record, its provenance intact.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom import Dataset
from pydicom.sr.codedict import codes

from report_drafts.builders._dicom import (
    MANUFACTURER,
    check_same_study,
    new_uid,
    prepared_source,
)

#: The KOS document title of an IOCM rejection note for a withdrawn draft (CID 7010 / 7011).
REJECTION_TITLE = codes.DCM.RejectedForQualityReasons
#: Key Object Selection Document Storage (PS3.4 B.5).
KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"


def build_rejection_note(
    withdrawn: Sequence[Dataset],
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution: str,
    reason: str,
    sop_instance_uid: str | None = None,
) -> KeyObjectSelectionDocument:
    """A rejection note referencing every dataset in ``withdrawn`` (SR and GSPS of one study).

    ``reason`` becomes the Key Object Description (TID 2010 row 4, at most 1024 characters):
    who withdrew the draft and why. Patient and study are inherited from the withdrawn
    objects (PS3.3 C.7.1.1, C.7.2.1).
    """
    if not withdrawn:
        raise ValueError("a rejection note references at least one instance")
    check_same_study(withdrawn)
    evidence = [prepared_source(ds) for ds in withdrawn]
    content = KeyObjectSelection(
        document_title=REJECTION_TITLE,
        referenced_objects=evidence,
        description=reason.strip()[:1024] or None,
    )
    return KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or new_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        institution_name=institution,
    )
