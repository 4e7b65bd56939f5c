"""``raddraft model`` and ``raddraft draft``: the model side from the command line.

``raddraft model build-tiny PATH`` builds the random-weight demo checkpoint; ``raddraft draft
PATH...`` runs the eight-stage reading on DICOM files or folders without any network, printing
the structured result (JSON with ``--json``). The reader's configuration comes from
:func:`worker.reader_config.reader_config`, the worker's own mapping, so the command reads a study
as the worker does; ``models/`` itself never reads settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from raddraft.settings import get_settings
from worker.reader_config import reader_config


@click.group()
def model() -> None:
    """The model: CheXOne, or the tiny random-weight demo checkpoint."""


@model.command("build-tiny")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def build_tiny_command(path: Path, seed: int) -> None:
    """Build the tiny random-weight Qwen2.5-VL checkpoint into PATH (a few MB, seconds)."""
    from models import build_tiny

    built = build_tiny(path, seed=seed)
    click.echo(f"tiny checkpoint (demo model, random weights) written to {built}")


def _dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Files given directly, and every file under folders given (sorted, hidden ones skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found


def _study_images(paths: Iterable[Path]) -> list[Any]:
    """``models.StudyImage`` for each readable image file; others are reported and skipped."""
    import pydicom

    from models import StudyImage

    images = []
    for path in _dicom_files(paths):
        if path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
            images.append(StudyImage.from_path(path))
            continue
        try:
            dataset = pydicom.dcmread(str(path))
            if "PixelData" not in dataset:
                raise ValueError("no pixel data")
        except Exception as error:  # not DICOM, or no image: say so and go on
            click.echo(f"skipping {path}: {error}", err=True)
            continue
        images.append(StudyImage.from_dataset(dataset))
    return images


def _summary(reading: Any) -> str:
    """A short human-readable account of a reading."""
    lines = []
    if reading.demo:
        lines.append(f"*** {reading.model.label.upper()} ***")
    lines.append(f"model: {reading.model.model_id} (revision {reading.model.revision})")
    lines.append(f"view: {reading.view or 'not understood'}")
    if reading.quality_warnings:
        lines.append("quality: " + "; ".join(reading.quality_warnings))
    present = [f.label for f in reading.findings if f.present]
    lines.append("present: " + (", ".join(present) if present else "none"))
    for box in reading.boxes:
        lines.append(
            f"  box {box.label}: ({box.x1:.0f},{box.y1:.0f})-({box.x2:.0f},{box.y2:.0f}) "
            f"on image {box.sop_instance_uid or box.image_index}"
        )
    if reading.progression_text:
        lines.append("progression: " + reading.progression_text)
    lines.append("findings: " + reading.findings_text)
    lines.append("impression: " + reading.impression)
    if reading.unparsed:
        lines.append(f"not understood: {len(reading.unparsed)} answer(s)")
    for stage in reading.stages:
        state = f"skipped ({stage.skip_reason})" if stage.skipped else f"{len(stage.turns)} turn(s)"
        lines.append(f"stage {stage.stage} {stage.name}: {state}, {stage.seconds:.2f} s")
    lines.append(f"total: {reading.total_seconds:.2f} s")
    return "\n".join(lines)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--prior",
    "priors",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A prior study's DICOM file or folder (stage 5 compares with its first image).",
)
@click.option("--indication", default=None, help="The order's indication, for the findings.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole reading as JSON.")
@click.option("--max-new-tokens", type=int, default=None, help="Override RADDRAFT_MAX_NEW_TOKENS.")
def draft(
    paths: tuple[Path, ...],
    priors: tuple[Path, ...],
    indication: str | None,
    as_json: bool,
    max_new_tokens: int | None,
) -> None:
    """Run the staged reading on DICOM files or folders and print the result."""
    from models import ModelLoadError, load_reader

    current = _study_images(paths)
    if not current:
        raise click.ClickException("no readable DICOM image among the given paths")
    prior = _study_images(priors) if priors else None
    overrides = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    try:
        reader = load_reader(reader_config(get_settings(), **overrides))
    except ModelLoadError as error:
        raise click.ClickException(str(error)) from error
    if reader.demo:
        click.echo(f"WARNING: {reader.model.label}", err=True)
    reading = reader.read(current, prior, indication)
    click.echo(reading.to_json(indent=2) if as_json else _summary(reading))
