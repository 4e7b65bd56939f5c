"""RadDraft's one settings object.

Every knob is an environment variable prefixed ``RADDRAFT_`` (an optional ``.env`` file in the
working directory is read too). The defaults give the embedded mode: SQLite and a filesystem
broker under the data directory, so one command runs RadDraft on a laptop with no server to
install. Production sets ``RADDRAFT_DATABASE_URL`` (PostgreSQL) and ``RADDRAFT_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_AE_NODE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class DicomNode:
    """A remote application entity, written ``AET@host:port`` in settings."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomNode:
        match = _AE_NODE.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not of the form AET@host:port")
        return cls(match["aet"], match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All of RadDraft's configuration; see the README for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="RADDRAFT_", env_file=".env", extra="ignore", validate_default=True
    )

    # Storage
    data_dir: Path = Field(default=Path("data"), description="Archive, quarantine, broker, model.")
    database_url: str = Field(default="", description="Empty: SQLite in the data directory.")
    broker_url: str = Field(default="", description="Empty: filesystem broker in the data dir.")

    # DICOM listener (PS3.7 association, PS3.4 Annex B storage)
    ae_title: str = Field(default="RADDRAFT", max_length=16)
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    allowed_callers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_associations: int = 16
    max_pdu_size: int = 131072
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = Field(default=None, description="CA that signs client certificates.")
    disk_watermark_percent: float = Field(default=90.0, description="Refuse C-STORE above this.")
    disk_min_free_mb: int = Field(default=1024, description="Refuse C-STORE below this free space.")

    # Study completion
    completion_quiet_seconds: float = 300.0
    completion_cxr_rule_seconds: float = Field(
        default=30.0, description="Shorter wait once a frontal view is present without a lateral."
    )
    completion_poll_seconds: float = 1.0

    # Queue
    job_lease_seconds: float = Field(default=120.0, description="A worker silent this long died.")
    job_max_attempts: int = 5
    job_backoff_seconds: float = 10.0
    dispatch_poll_seconds: float = 0.1
    dispatch_stale_seconds: float = Field(
        default=60.0, description="A dispatched job not started this long is sent again."
    )

    # Model
    model: str = Field(default="auto", description="auto | tiny | a hub id | a local folder")
    model_device: str = "auto"
    model_dtype: str = "auto"
    model_backend: Literal["transformers", "openai"] = "transformers"
    model_server_url: str = ""
    reasoning_stages: Annotated[list[int], NoDecode] = Field(default_factory=list)
    max_new_tokens: int = Field(default=512, gt=0, description="Answer limit, instruction mode.")
    max_new_tokens_reasoning: int = Field(
        default=2048, gt=0, description="Answer limit, reasoning mode (the paper's 2048)."
    )
    report_source: Literal["single_turn", "staged"] = Field(
        default="single_turn",
        description="single_turn: report texts asked as CheXOne was trained; staged: stage 8's.",
    )
    consistency_samples: int = Field(
        default=0, ge=0, description="Sampled answers per presence question for confidence."
    )
    consistency_temperature: float = Field(default=0.7, gt=0.0)
    consistency_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Vocabulary labels sampled; empty: all."
    )
    studies_in_flight: int = Field(
        default=1, ge=1, description="Studies a gpu worker drafts at once (openai backend)."
    )
    allow_demo_export: bool = Field(
        default=False, description="Let a demo (random-weight) model's drafts go to PACS and RIS."
    )

    # Results
    destinations: Annotated[list[DicomNode], NoDecode] = Field(default_factory=list)
    query_pacs: DicomNode | None = None
    prior_timeout_seconds: float = 60.0
    ris_mllp: str = Field(default="", description="host:port of the RIS HL7 v2 MLLP listener.")
    fhir_server_url: str = ""
    institution_name: str = "RadDraft Hospital"

    # Web
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    web_secret: str = Field(
        default="",
        description="Signs page sessions; the same on every web process. Empty: a random key "
        "kept in the data directory (one host only).",
    )

    log_level: str = "INFO"

    @field_validator("allowed_callers", "allowed_hosts", "consistency_labels", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("reasoning_stages", mode="before")
    @classmethod
    def _stages(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return [int(p) for p in parts]
        return parts

    @field_validator("destinations", mode="before")
    @classmethod
    def _nodes(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return [p if isinstance(p, DicomNode) else DicomNode.parse(p) for p in parts]
        return parts

    @field_validator("query_pacs", mode="before")
    @classmethod
    def _node(cls, value: object) -> object:
        if value in ("", None):
            return None
        return value if isinstance(value, DicomNode) else DicomNode.parse(str(value))

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'raddraft.db'}"
        if not self.broker_url:
            self.broker_url = f"filesystem://{self.data_dir / 'broker'}"
        return self

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def any_caller(self) -> bool:
        """``*`` in the allow-list accepts every calling AE title."""
        return "*" in self.allowed_callers


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
    return get_settings()
