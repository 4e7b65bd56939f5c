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


#: Unsigned AI drafts: ``send`` them (marked as unverified drafts) or ``hold`` until sign-off.
ReleasePolicy = Literal["send", "hold"]

#: The default critical findings, after the ACR Actionable Reporting Work Group (Larson PA et
#: al., "Actionable findings and the role of IT support: report of the ACR Actionable Reporting
#: Work Group", J Am Coll Radiol 2014;11:552-558). The work group sorts actionable findings by
#: how soon the referrer must hear: Category 1, within minutes (immediately life-threatening),
#: Category 2, within hours (could become so), Category 3, within days. The defaults are the
#: Category 1 and 2 findings a chest radiograph shows: pneumothorax (tension or not),
#: pneumoperitoneum / free air, pneumomediastinum, a malpositioned or misplaced tube or line
#: (an endotracheal tube in a bronchus or the oesophagus, a misplaced nasogastric tube), and a
#: widened mediastinum or aortic dissection. Left out on purpose: pleural effusion, pulmonary
#: oedema and consolidation, which are common, usually expected by the referrer and at most
#: Category 2-3 by context; a nodule or mass, Category 3. A site adds them with
#: ``RADDRAFT_CRITICAL_FINDINGS``. Each term matches a finding label containing it and an
#: affirmative mention in the findings text or impression.
DEFAULT_CRITICAL_FINDINGS = (
    "pneumothorax",
    "tension pneumothorax",
    "pneumoperitoneum",
    "free air",
    "pneumomediastinum",
    "malpositioned",
    "misplaced",
    "endobronchial intubation",
    "oesophageal intubation",
    "esophageal intubation",
    "widened mediastinum",
    "aortic dissection",
)


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
    data_dir: Path = Field(
        default=Path("data"),
        description="archive, quarantine, embedded database and broker, demo model",
    )
    database_url: str = Field(
        default="",
        description="empty: SQLite in the data dir; e.g. postgresql+psycopg://user:pw@host/raddraft",
    )
    broker_url: str = Field(
        default="", description="empty: filesystem broker in the data dir; e.g. redis://host:6379/0"
    )

    # DICOM listener (PS3.7 association, PS3.4 Annex B storage)
    ae_title: str = Field(default="RADDRAFT", max_length=16, description="the listener's AE title")
    dicom_host: str = Field(default="0.0.0.0", description="the address the listener binds")
    dicom_port: int = Field(default=11112, description="the listener's port")
    allowed_callers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated calling AE titles allowed to associate; * allows any; "
        "empty: nobody",
    )
    called_ae_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="other called AE titles the listener answers to (comma-separated, exact "
        "case); any other called AE title is rejected (PS3.8 7.1.1.9 reason 7)",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="optional comma-separated peer addresses; empty: any"
    )
    max_associations: int = Field(default=16, description="concurrent associations")
    max_connections_per_peer: int = Field(
        default=8, ge=1, description="connections one address may hold; more are closed at accept"
    )
    association_setup_seconds: float = Field(
        default=5.0,
        gt=0,
        description="a connection that has not completed association negotiation this long "
        "after accept is closed",
    )
    max_pdu_size: int = Field(default=131072, description="maximum PDU size the listener offers")
    tls_cert: Path | None = Field(default=None, description="DICOM TLS: the listener's certificate")
    tls_key: Path | None = Field(default=None, description="DICOM TLS: its private key")
    tls_ca: Path | None = Field(
        default=None, description="DICOM TLS: with a CA, client certificates are required"
    )
    disk_watermark_percent: float = Field(
        default=90.0, description="C-STORE answers 0xA700 above this disk use"
    )
    disk_min_free_mb: int = Field(
        default=1024, description="... or below this much free space (MB)"
    )

    # Bounded resources (PS3.4 B.2.3 statuses; see dicom_listener/limits.py)
    max_dataset_mb: int = Field(
        default=1024, ge=1, description="a larger data set (or one inflating beyond) gets 0xA700"
    )
    max_pixel_data_mb: int = Field(
        default=1024,
        ge=1,
        description="Rows x Columns x Samples x BitsAllocated x Frames beyond this: 0xA700",
    )
    max_sequence_depth: int = Field(
        default=32, ge=1, le=200, description="sequences nested deeper: 0xC000"
    )
    max_received_pdu_bytes: int = Field(
        default=1048576,
        ge=65536,
        description="a PDU declaring more (the larger of this and max_pdu_size) is aborted",
    )
    acse_timeout_seconds: float = Field(
        default=30.0, gt=0, description="association negotiation (A-ASSOCIATE) time limit"
    )
    dimse_timeout_seconds: float = Field(
        default=60.0, gt=0, description="time limit for a DIMSE message's next fragment"
    )
    network_timeout_seconds: float = Field(
        default=60.0, gt=0, description="a silent peer (also mid-PDU) is aborted after this"
    )

    # Retention: images leave the archive this long after their report is final (0: never)
    retention_days: float = Field(
        default=0.0, description="Keep a study's images this many days after its report closed."
    )
    retention_interval_seconds: float = Field(
        default=3600.0, description="How often the router runs the retention purge."
    )

    # Which images are drafted (PS3.3: original, for presentation, frontal or lateral)
    eligible_derived_images: bool = Field(
        default=False,
        description="draft from DERIVED images too (Image Type value 1 other than ORIGINAL)",
    )
    eligible_for_processing_images: bool = Field(
        default=False,
        description="draft from FOR PROCESSING images too (Presentation Intent Type, DX For "
        "Processing)",
    )
    eligible_other_views: bool = Field(
        default=False,
        description="draft from images whose view is neither frontal (PA/AP) nor lateral",
    )

    # Study completion
    completion_quiet_seconds: float = Field(
        default=300.0, description="a study is complete after this long with no new instance"
    )
    completion_cxr_rule_seconds: float = Field(
        default=30.0,
        description="sooner once a frontal view is present (at once with a lateral too)",
    )
    completion_poll_seconds: float = Field(
        default=1.0, description="how often the listener looks for studies that are complete"
    )

    # Queue
    job_lease_seconds: float = Field(
        default=120.0, description="a worker silent this long is taken for dead; its job runs again"
    )
    job_max_attempts: int = Field(
        default=5, description="attempts of a job before a transient failure dead-letters it"
    )
    job_backoff_seconds: float = Field(
        default=10.0, description="first retry delay; doubles with each attempt"
    )
    router_poll_seconds: float = Field(
        default=0.1, description="how often the router looks for due jobs"
    )
    router_stale_seconds: float = Field(
        default=60.0, description="a job sent to the broker but not started this long is sent again"
    )

    # Model
    model: str = Field(
        default="auto",
        description="auto (CheXOne if it loads, else the demo model), tiny, a hub id or a local "
        "folder",
    )
    model_device: str = Field(default="auto", description="auto: GPU if there is one, else CPU")
    model_dtype: str = Field(default="auto", description="auto: fp32 on CPU, bf16 on GPU")
    model_backend: Literal["transformers", "openai"] = Field(
        default="transformers",
        description="transformers (in the worker) or openai (an OpenAI-compatible server, vLLM)",
    )
    model_server_url: str = Field(
        default="", description="the OpenAI-compatible server for the openai backend"
    )
    reasoning_stages: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="stage numbers (1-8) read in reasoning mode"
    )
    max_new_tokens: int = Field(
        default=512, gt=0, description="answer limit per model turn, instruction mode"
    )
    max_new_tokens_reasoning: int = Field(
        default=2048, gt=0, description="answer limit per model turn, reasoning mode (the paper's)"
    )
    report_source: Literal["single_turn", "staged"] = Field(
        default="single_turn",
        description="single_turn: report texts asked as CheXOne was trained; staged: stage 8's",
    )
    consistency_samples: int = Field(
        default=0, ge=0, description="sampled answers per presence question for confidence; 0 off"
    )
    consistency_temperature: float = Field(
        default=0.7, gt=0.0, description="sampling temperature of those answers"
    )
    consistency_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="vocabulary labels sampled; empty: all"
    )
    max_free_text_chars: int = Field(
        default=4000,
        ge=100,
        description="each outside text given to the model (indication, prior report) is cut to "
        "this many characters, flagged in the draft's extra.input_truncated",
    )
    model_kv_cache_gib: float = Field(
        default=0.0,
        ge=0.0,
        description="the transformers engine's key/value store in GiB; 0: 80% of the GPU memory "
        "free after loading the model (4 GiB on a CPU)",
    )
    studies_in_flight: int = Field(
        default=1,
        ge=1,
        description="studies a gpu worker reads at once (batched by the engine or the server)",
    )
    demo_max_new_tokens: int = Field(
        default=32,
        description="per model turn of the demo model (random weights write noise until the limit)",
    )
    allow_demo_export: bool = Field(
        default=False, description="let a demo (random-weight) model's drafts go to PACS and RIS"
    )

    # Results
    destinations: Annotated[list[DicomNode], NoDecode] = Field(
        default_factory=list,
        description="where SR and GSPS go: comma-separated AET@host:port",
    )
    query_pacs: DicomNode | None = Field(
        default=None, description="the PACS to query for priors, AET@host:port"
    )
    prior_timeout_seconds: float = Field(
        default=60.0, description="how long a draft waits for a prior from the PACS"
    )
    ris_mllp: str = Field(default="", description="host:port of the RIS HL7 v2 MLLP listener")
    ris_mllp_tls: bool = Field(
        default=False, description="MLLP over TLS (RADDRAFT_TLS_CA checks the RIS's certificate)"
    )
    fhir_server_url: str = Field(
        default="", description="a FHIR server to PUT DiagnosticReports to"
    )
    institution_name: str = Field(
        default="RadDraft Hospital",
        description="your institution: Institution Name of every SR and GSPS, the signer's "
        "organisation in a signed SR, the HL7 sending facility; set it",
    )
    stow_destinations: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="DICOMweb base URLs that get SR and GSPS by STOW-RS"
    )
    stow_token: str = Field(default="", description="bearer token for the STOW-RS destinations")
    # What leaves before a radiologist signs, per destination kind (README: "Release policy").
    release_unsigned_pacs: ReleasePolicy = Field(
        default="send",
        description="unsigned SR/GSPS to PACS: send or hold (they say UNVERIFIED AI DRAFT)",
    )
    release_unsigned_hl7: ReleasePolicy = Field(
        default="hold", description="HL7 ORU with OBR-25 P to the RIS before sign-off: send or hold"
    )
    release_unsigned_fhir: ReleasePolicy = Field(
        default="hold",
        description="FHIR DiagnosticReport status preliminary before sign-off: send or hold",
    )

    # Critical findings: a draft naming one goes STAT and notifies (DEFAULT_CRITICAL_FINDINGS)
    critical_findings: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CRITICAL_FINDINGS),
        description="findings that raise a draft to STAT and notify (ACR categories 1-2)",
    )
    critical_mllp: str = Field(
        default="", description="host:port of the critical-results HL7 v2 MLLP receiver"
    )
    critical_smtp: str = Field(default="", description="host:port of the SMTP relay for notices")
    critical_smtp_starttls: bool = Field(
        default=False, description="upgrade the SMTP session with STARTTLS"
    )
    critical_smtp_user: str = Field(default="", description="SMTP AUTH user, when asked")
    critical_smtp_password: str = Field(default="", description="SMTP AUTH password")
    critical_email_from: str = Field(
        default="raddraft@localhost", description="the notices' sender"
    )
    critical_email_to: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated recipients of critical notices"
    )
    critical_ack_timeout_minutes: float = Field(
        default=30.0,
        description="a critical notice no person acknowledged this long escalates to the next "
        "escalation contact",
    )
    critical_escalation_contacts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated e-mail addresses, in escalation order (by "
        "RADDRAFT_CRITICAL_SMTP)",
    )

    # Orders in: the HL7 v2 MLLP order listener (orders/)
    orders_host: str = Field(default="0.0.0.0", description="the order listener's address")
    orders_port: int = Field(default=2575, description="the order listener's port")
    orders_allowed_facilities: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="MSH-4 sending facilities whose orders are taken; * takes any; empty none",
    )
    # Their own TLS files, not RADDRAFT_TLS_*: the RIS is often signed by another CA than the
    # modalities, and turning DICOM TLS on must not cut off a RIS that still sends in clear.
    orders_tls_cert: Path | None = Field(
        default=None, description="MLLP over TLS (PS3.15 B.9): the order listener's certificate"
    )
    orders_tls_key: Path | None = Field(default=None, description="its private key")
    orders_tls_ca: Path | None = Field(
        default=None, description="with a CA, the RIS must present a certificate it signed"
    )
    orders_max_message_kb: int = Field(
        default=2048, ge=1, description="a larger MLLP frame is answered AR and closed"
    )
    orders_max_connections: int = Field(
        default=32, ge=1, description="order connections served at once; more are closed at accept"
    )
    orders_max_connections_per_peer: int = Field(
        default=4, ge=1, description="... and from one address"
    )

    # Where images are when this process has no archive of its own (a GPU worker elsewhere)
    archive_url: str = Field(
        default="", description="RadDraft's DICOMweb base URL (…/dicomweb) to read images from"
    )
    archive_token: str = Field(default="", description="a reader's API token for archive_url")
    image_cache_mb: int = Field(
        default=2048, description="bound of the local cache of images read over WADO-RS"
    )

    # Web
    web_host: str = Field(default="127.0.0.1", description="the web app's address")
    web_port: int = Field(default=8080, description="the web app's port")
    web_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For names the client (sign-in "
        "limits, audit); empty: none, the peer is the client",
    )
    web_tls_cert: Path | None = Field(default=None, description="serve HTTPS with this certificate")
    web_tls_key: Path | None = Field(default=None, description="the HTTPS certificate's key")
    web_tls_ca: Path | None = Field(
        default=None, description="require browser client certificates signed by this CA"
    )
    dicomweb_max_request_mb: int = Field(
        default=512,
        ge=1,
        description="a STOW-RS request body larger than this is refused with 413 (it is held "
        "in memory while its parts are filed)",
    )
    qido_default_limit: int = Field(
        default=100,
        ge=1,
        description="QIDO-RS results per page when the client gives no limit (PS3.18 8.3.4.4)",
    )
    qido_max_limit: int = Field(
        default=1000,
        ge=1,
        description="the most QIDO-RS results one page holds, whatever limit the client asks",
    )
    fhir_default_count: int = Field(
        default=50, ge=1, description="FHIR search results per page without _count"
    )
    fhir_max_count: int = Field(
        default=500, ge=1, description="the most FHIR search results one page holds"
    )
    query_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a QIDO-RS or FHIR search whose database work runs longer is stopped and "
        "answered 503",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="failed sign-ins before 429: per user name and address for a password, "
        "per address for a token (a valid token always signs in)",
    )
    login_failure_window_seconds: float = Field(
        default=900.0, gt=0, description="the window those failed sign-ins count in"
    )
    web_secret: str = Field(
        default="",
        description="signs page sessions; set it, the same, on every web process; empty: a "
        "random key kept in the data dir (one host only)",
    )

    # Audit (IHE ATNA: PS3.15 A.5 messages over syslog, RFC 5424/5425/5426)
    atna_collector: str = Field(default="", description="host:port of the audit repository")
    atna_transport: Literal["tls", "udp", "tcp"] = Field(
        default="tls", description="tls (RFC 5425), udp (RFC 5426, labs) or tcp"
    )
    atna_tls_ca: Path | None = Field(default=None, description="CA of the collector's certificate")
    atna_tls_cert: Path | None = Field(default=None, description="empty: RADDRAFT_TLS_CERT")
    atna_tls_key: Path | None = Field(default=None, description="empty: RADDRAFT_TLS_KEY")
    atna_source_id: str = Field(default="", description="AuditSourceID; empty: the AE title")

    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator(
        "allowed_callers",
        "called_ae_aliases",
        "allowed_hosts",
        "stow_destinations",
        "critical_findings",
        "critical_email_to",
        "critical_escalation_contacts",
        "orders_allowed_facilities",
        "consistency_labels",
        "web_trusted_proxies",
        mode="before",
    )
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

    @field_validator("stow_destinations", mode="after")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) DICOMweb base URL")
            if "@" in url.split("/")[2]:
                raise ValueError(f"{url!r}: put credentials in RADDRAFT_STOW_TOKEN, not the URL")
        return value

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        given = set(self.model_fields_set)
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'raddraft.db'}"
        if not self.broker_url:
            self.broker_url = f"filesystem://{self.data_dir / 'broker'}"
        # Assigning marks a field as set; these are derived, so model_fields_set keeps meaning
        # "set by the user" (environment, .env or arguments) for ``raddraft settings --changed``.
        self.model_fields_set.intersection_update(given)
        return self

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def image_cache_dir(self) -> Path:
        """Images a worker read over WADO-RS (``archive_url``), bounded by ``image_cache_mb``."""
        return self.data_dir / "cache" / "images"

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


@dataclass(frozen=True)
class SettingInfo:
    """One setting as ``raddraft settings`` and the README show it."""

    variable: str  # the environment variable, e.g. RADDRAFT_AE_TITLE
    value: str
    default: str  # empty when the default is empty (or computed from the data dir)
    meaning: str


#: Settings whose value is never printed.
_SECRET = frozenset({"web_secret"})
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def show_value(value: object) -> str:
    """A setting's value as written in the environment (lists comma-separated, bools lower case,
    whole-number floats without ``.0``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return ",".join(show_value(v) for v in value)
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    return str(value)


def describe(settings: Settings) -> list[SettingInfo]:
    """Every setting, in declaration order, with its value, default and meaning."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        value = getattr(settings, name)
        shown = show_value(value)
        if name in _SECRET and shown:
            shown = "(set, not shown)"
        rows.append(
            SettingInfo(
                variable=f"RADDRAFT_{name.upper()}",
                value=_URL_PASSWORD.sub(r"\1***@", shown),
                default=show_value(default),
                meaning=field.description or "",
            )
        )
    return rows


def set_by_user(settings: Settings) -> frozenset[str]:
    """The variables the user set (environment, ``.env`` or arguments), not derived defaults."""
    return frozenset(f"RADDRAFT_{name.upper()}" for name in settings.model_fields_set)
