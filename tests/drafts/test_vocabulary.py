"""One coded vocabulary of findings (report_drafts/vocabulary.py): the labels the model is asked
about, the prompt's phrase, the page's names, the SR's codes and the reconciliation's terms all
come from it (they were four tables: models' prompts, the pages, reconcile and the builders)."""

from __future__ import annotations

from pathlib import Path

import models
import report_drafts
from models._prompts import DEFAULT_FINDINGS, finding_phrase
from raddraft.settings import Settings
from report_drafts import reconcile, vocabulary
from report_drafts.builders._dicom import PRIVATE_SCHEME, finding_code
from web.pages import viewmodel
from worker.reader_config import reader_config


def test_the_worker_asks_the_model_about_the_vocabularys_labels(tmp_path: Path) -> None:
    config = reader_config(Settings(data_dir=tmp_path))
    assert config.findings_vocabulary == vocabulary.labels() == report_drafts.finding_labels()
    assert len(set(vocabulary.labels())) == len(vocabulary.FINDINGS) == 13


def test_models_own_default_and_phrase_agree_with_the_vocabulary() -> None:
    # models/ imports no RadDraft folder, so it keeps a default of its own for standalone use;
    # the product always passes the vocabulary's labels, and the two may not drift apart.
    assert models.ReaderConfig().findings_vocabulary == DEFAULT_FINDINGS == vocabulary.labels()
    for concept in vocabulary.FINDINGS:
        assert finding_phrase(concept.label) == concept.phrase


def test_the_pages_offer_the_vocabularys_names() -> None:
    assert viewmodel.FINDING_LABELS == vocabulary.page_names() == report_drafts.finding_page_names()


def test_the_sr_codes_each_label_and_term_as_the_vocabulary_says() -> None:
    for concept in vocabulary.FINDINGS:
        coded = finding_code(concept.label)
        if concept.code is None:
            assert coded.scheme_designator == PRIVATE_SCHEME
        else:
            assert (coded.scheme_designator, coded.value, coded.meaning) == (
                concept.code.scheme,
                concept.code.value,
                concept.code.meaning,
            )
    for term in vocabulary.TERMS:
        if term.code is not None:
            assert finding_code(term.text).value == term.code.value


def test_reconciliation_reads_the_vocabularys_terms() -> None:
    assert {t.text: t.label for t in vocabulary.TERMS if t.in_text} == reconcile.TERMS
    labels = set(vocabulary.labels())
    assert {t.label for t in vocabulary.TERMS if t.label is not None} <= labels
    assert reconcile.assertions(
        "Small left pleural effusion. No pneumothorax.", reconcile.TERMS
    ) == {"pleural effusion": reconcile.PRESENT}
