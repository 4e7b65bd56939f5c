"""The builders' layout rule, checked on their source with ``ast``: a builder module imports
nothing of RadDraft but ``report_drafts.content``, the text sanitiser ``report_drafts.text_safety``
(pure functions over content) and the builders package itself (its private ``_dicom`` / ``_fhir``),
so no database, no settings, no SQLAlchemy reach what leaves RadDraft."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import report_drafts.builders as builders

BUILDERS_DIR = Path(builders.__file__).parent
PACKAGE = "report_drafts.builders"
ALLOWED_PREFIXES = (
    "report_drafts.content",
    "report_drafts.text_safety",
    "report_drafts.vocabulary",
    PACKAGE,
)
#: Top-level packages a builder must not import at all: RadDraft's other packages and the ORM.
FORBIDDEN_ROOTS = frozenset({"raddraft", "dicom_listener", "worker", "models", "sqlalchemy"})
EXPECTED_MODULES = {
    "__init__",
    "_dicom",
    "_fhir",
    "fhir_capability_statement",
    "fhir_diagnostic_report",
    "fhir_imaging_study",
    "fhir_provenance",
    "gsps",
    "hl7_oru_r01",
    "kos_rejection_note",
    "sr_tid1500",
}


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The absolute module an ``import from`` names, relative ones resolved from ``module``."""
    if not node.level:
        return node.module or ""
    package = module if module == PACKAGE else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(source: str, module: str) -> list[str]:
    """Every module ``source`` imports, anywhere (function-local imports and
    ``importlib.import_module("...")`` with a literal included), as absolute names;
    ``from package import name`` yields ``package.name``, since the name may be a module."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


def violations(source: str, module: str) -> list[str]:
    """The imports of ``source`` (module ``module``) that break the builders' rule."""

    def allowed(name: str) -> bool:
        root = name.split(".")[0]
        if root in FORBIDDEN_ROOTS:
            return False
        return root != "report_drafts" or any(
            name == prefix or name.startswith(prefix + ".") for prefix in ALLOWED_PREFIXES
        )

    return [name for name in imported_modules(source, module) if not allowed(name)]


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BUILDERS_DIR.glob("*.py"))}


def _module_name(stem: str) -> str:
    return PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"


def test_every_builder_module_is_checked() -> None:
    # a wrong folder or a new module must show here, not make the rule check nothing
    assert set(_modules()) == EXPECTED_MODULES


@pytest.mark.parametrize("stem", sorted(EXPECTED_MODULES))
def test_builder_imports_only_content_and_builders(stem: str) -> None:
    path = _modules()[stem]
    assert violations(path.read_text(encoding="utf-8"), _module_name(stem)) == []


@pytest.mark.parametrize(
    "source",
    [
        "from report_drafts import publish",
        "from report_drafts.tables import Report",
        "import report_drafts.lifecycle",
        "from .. import tables",
        "from ..settings import x",
        "import sqlalchemy.orm",
        "from sqlalchemy import select",
        "from raddraft.settings import Settings",
        "import dicom_listener.tables",
        "def f():\n    from report_drafts import audit\n",
        "import importlib\nimportlib.import_module('raddraft.jobs')",
    ],
)
def test_the_rule_catches_a_forbidden_import(source: str) -> None:
    assert violations(source, f"{PACKAGE}.gsps")


@pytest.mark.parametrize(
    "source",
    [
        "from report_drafts.content import Finding",
        "from report_drafts import content",
        "from report_drafts.builders._dicom import check_uid",
        "from ._fhir import check_id",
        "from . import _dicom",
        "import highdicom\nfrom fhir.resources.R4B.device import Device",
    ],
)
def test_the_rule_allows_content_builders_and_third_party(source: str) -> None:
    assert violations(source, f"{PACKAGE}.gsps") == []


def test_content_imports_nothing_of_raddraft() -> None:
    # the builders' one RadDraft dependency must not bring the rest in behind it
    path = BUILDERS_DIR.parent / "content.py"
    names = imported_modules(path.read_text(encoding="utf-8"), "report_drafts.content")
    assert [n for n in names if n.split(".")[0] in FORBIDDEN_ROOTS | {"report_drafts"}] == []


def test_text_safety_imports_only_content() -> None:
    path = BUILDERS_DIR.parent / "text_safety.py"
    names = imported_modules(path.read_text(encoding="utf-8"), "report_drafts.text_safety")
    raddraft = [n for n in names if n.split(".")[0] in FORBIDDEN_ROOTS | {"report_drafts"}]
    assert raddraft and all(n.startswith("report_drafts.content.") for n in raddraft)


def test_public_face_is_listed_and_importable() -> None:
    doc = builders.__doc__ or ""
    for name in builders.__all__:
        assert getattr(builders, name) is not None
        assert f"``{name}``" in doc, f"{name} is exported but not in the package docstring"
