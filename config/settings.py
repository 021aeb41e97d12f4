"""The one typed settings object, nested by concern, loaded from TOML and the environment.

Precedence, highest first: keyword arguments, environment variables
(``FRACTURE_GATEWAY_`` prefix, ``__`` between nested names, e.g. ``FRACTURE_GATEWAY_NODE__PORT``),
the TOML file (``FRACTURE_GATEWAY_CONFIG`` or ``<home>/config.toml``), then the defaults here.
Nothing is read at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "FRACTURE_GATEWAY_"
HOME_ENV = "FRACTURE_GATEWAY_HOME"
CONFIG_ENV = "FRACTURE_GATEWAY_CONFIG"
DEFAULT_HOME = Path("fracture-gateway-data")

#: PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

#: The default largest P-DATA-TF PDU the node receives (1 MiB).
MAXIMUM_PDU_SIZE_DEFAULT = 1024 * 1024

#: Where the bundled model package lives, relative to the installed source tree.
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "fracture-lite0"


def _validate_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable ASCII characters, no '\\'")
    return stripped


def default_home() -> Path:
    """The state folder: ``$FRACTURE_GATEWAY_HOME`` or ``./fracture-gateway-data``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().absolute()


class KnownSource(BaseModel):
    """A calling AE that may send to us, optionally pinned to a host address."""

    ae_title: str
    host: str | None = None

    _check_ae = field_validator("ae_title")(_validate_ae_title)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes."""

    #: Keep the first copy for analysis; keep the new bytes beside it under ``conflicts/``,
    #: log both digests, answer Success (nothing accepted is ever lost).
    KEEP_FIRST = "keep_first"
    #: Replace the stored copy with the new one and re-analyse the study.
    REPLACE = "replace"
    #: Refuse the new copy with a failure status.
    REJECT = "reject"


class TlsVersion(StrEnum):
    """The oldest TLS version accepted (PS3.15 Annex B's BCP 195 profiles forbid older)."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"


class TlsSettings(BaseModel):
    """DICOM TLS (PS3.15 Annex B, BCP 195): the SCP's listener and our side of result delivery.

    The certificate and key identify the node both as a server (to senders) and as a client (to
    destinations with ``tls = true``); ``ca_certificates`` are the authorities whose
    certificates we trust for senders and destinations (for destinations, the system's when
    unset).
    """

    #: The SCP speaks TLS only: plain TCP connections to its port fail the handshake.
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    minimum_version: TlsVersion = TlsVersion.TLS_1_2

    @model_validator(mode="after")
    def _check_complete(self) -> Self:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("node.tls.certificate and node.tls.private_key go together")
        if self.enabled and self.certificate is None:
            raise ValueError("node.tls.enabled needs node.tls.certificate and private_key")
        if self.enabled and self.require_client_certificate and self.ca_certificates is None:
            raise ValueError(
                "node.tls.require_client_certificate needs node.tls.ca_certificates, the "
                "authorities that sign the senders' certificates"
            )
        return self


class NodeSettings(BaseModel):
    """The DICOM node: our AE, where it listens, and who may call it."""

    ae_title: str = "FRACTUREGW"
    bind_address: str = "0.0.0.0"  # noqa: S104 - a DICOM node listens for the PACS; see known_sources
    port: int = Field(11112, ge=0, le=65535)
    max_associations: int = Field(16, ge=1, le=256)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    #: The longest P-DATA-TF we accept (the "maximum length received" we announce, PS3.8 D.1);
    #: a longer declared PDU is refused before its body is read. 4096 is dcmtk's minimum.
    maximum_pdu_size: int = Field(MAXIMUM_PDU_SIZE_DEFAULT, ge=4096, le=64 * 1024 * 1024)
    #: Seconds a new connection has to finish TLS and deliver its A-ASSOCIATE-RQ (PS3.8 9.1.5).
    artim_timeout: float = Field(5.0, gt=0, le=120)
    #: Connections accepted but not yet through the AE checks, in all and from one address.
    max_pending: int = Field(128, ge=1, le=4096)
    max_pending_per_peer: int = Field(16, ge=1, le=4096)
    known_sources: list[KnownSource] = Field(default_factory=list)
    accept_any_calling_ae: bool = False
    reject_out_of_scope: bool = False
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    tls: TlsSettings = Field(default_factory=TlsSettings)

    _check_ae = field_validator("ae_title")(_validate_ae_title)

    @field_validator("maximum_pdu_size", mode="before")
    @classmethod
    def _refuse_unlimited_pdu(cls, value: Any) -> Any:
        if value == 0:
            raise ValueError(
                "0 (unlimited) is not allowed: a peer could make the node read gigabytes into "
                "memory; give a size in bytes (default 1048576)"
            )
        return value

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.bind_address).is_loopback
        except ValueError:
            return self.bind_address == "localhost"


class StorageSettings(BaseModel):
    """Where received instances and created result objects are kept."""

    folder: Path | None = None


class DatabaseSettings(BaseModel):
    """The database; SQLite under the home folder unless a URL is given."""

    url: SecretStr | None = None
    echo: bool = False
    sqlite_busy_timeout_s: float = Field(
        30.0, gt=0.0, description="how long a SQLite writer waits for another writer's lock"
    )


class GroupingSettings(BaseModel):
    """Study completion (docs/ARCHITECTURE.md, "Study completion").

    A study is complete when as many instances are stored as the sender announced in Number of
    Study Related Instances (0020,1208), or when nothing arrived for ``quiet_period_s``. A later
    instance reopens it; the next completion makes a new result that replaces the earlier one.
    """

    quiet_period_s: float = Field(
        1.5,
        ge=0.0,
        description=(
            "a study without Number of Study Related Instances is complete when nothing arrived "
            "for this long; a later image reopens it and its new result replaces the first"
        ),
    )
    #: How often completion is checked: the most it adds to a result's latency (an indexed query).
    poll_interval_s: float = Field(0.25, gt=0.0)
    analyse_on_arrival: bool = Field(
        True,
        description=(
            "queue an image job for each arrived instance, so its prediction is ready before "
            "its study completes; off: the study's job analyses every image"
        ),
    )


class JobExecutor(StrEnum):
    """Where queued jobs and deliveries run."""

    #: Threads of the ``serve`` process poll the database (one machine, nothing else to run).
    INPROCESS = "inprocess"
    #: ``serve`` publishes due row ids to RabbitMQ; ``fracture-gateway worker`` processes run them.
    CELERY = "celery"


class JobSettings(BaseModel):
    """The job queue and its workers."""

    executor: JobExecutor = JobExecutor.INPROCESS
    #: The Celery broker (``executor = "celery"``); a vhost of its own keeps deployments apart.
    broker_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672//")
    republish_after_s: float = Field(
        60.0,
        gt=0.0,
        description=(
            "with the Celery executor: a row still due this long after its id was published "
            "(a lost message, a broker restart) is published again; a row claimed since then "
            "(a lapsed lease, a retry after backoff) is published at once"
        ),
    )
    workers: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(5, ge=1)
    backoff_base_s: float = Field(5.0, ge=0.0)
    backoff_max_s: float = Field(600.0, ge=0.0)
    lease_s: float = Field(
        60.0,
        gt=0.0,
        description=(
            "a running job's lease; its worker renews it every lease_s / 3 while it works, so "
            "a job whose worker died is retaken at most this long after the last renewal"
        ),
    )
    poll_interval_s: float = Field(0.5, gt=0.0)
    yield_to_ingest_s: float = Field(
        0.25,
        ge=0.0,
        description=(
            "the in-process workers start no new job while the DICOM node receives data and "
            "for this long after the last of it, so that a burst of C-STOREs is stored at the "
            "disk's pace (0: never hold back)"
        ),
    )
    yield_max_s: float = Field(
        10.0,
        ge=0.0,
        description=(
            "the longest the in-process workers hold back in one uninterrupted burst of "
            "C-STOREs; after that they share the CPUs with ingest again, so results never starve"
        ),
    )


#: The result objects a destination can receive: the study's TID 1500 SR, each image's heat-map
#: Secondary Capture, each image's Grayscale Softcopy Presentation State with the boxes.
ResultObjectName = Literal["sr", "sc", "gsps"]
#: What a destination receives unless it says otherwise (the objects sent before GSPS existed).
DEFAULT_RESULT_OBJECTS: Final[tuple[ResultObjectName, ...]] = ("sr", "sc")


class Destination(BaseModel):
    """A DICOM node results are sent to, and which result objects it receives."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None
    #: Send over TLS (``node.tls``: our certificate, the authorities we trust, minimum version).
    tls: bool = False
    #: The name the destination's certificate must carry; its ``host`` when unset.
    tls_server_name: str | None = None
    objects: list[ResultObjectName] = Field(
        default_factory=lambda: list(DEFAULT_RESULT_OBJECTS), min_length=1
    )

    _check_ae = field_validator("ae_title")(_validate_ae_title)

    @field_validator("objects")
    @classmethod
    def _unique_objects(cls, value: list[ResultObjectName]) -> list[ResultObjectName]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"result objects named more than once: {repeated}")
        return value


class RoutingRule(BaseModel):
    """Send results of matching studies to the named destinations.

    ``when`` is ``always``, ``positive`` (study positive at the high-sensitivity point) or
    ``high_specificity_positive`` (study probability above the high-specificity threshold).
    """

    when: str = Field("always", pattern="^(always|positive|high_specificity_positive)$")
    destinations: list[str] = Field(min_length=1)


class OutboxSettings(BaseModel):
    """Delivery of result objects."""

    max_attempts: int = Field(20, ge=1)
    max_age_s: float = Field(86_400.0, gt=0)
    backoff_base_s: float = Field(5.0, ge=0.0)
    backoff_max_s: float = Field(900.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    poll_interval_s: float = Field(1.0, gt=0.0)
    association_timeout_s: float = Field(30.0, gt=0)
    lease_s: float = Field(
        60.0,
        gt=0,
        description=(
            "a 'sending' row's lease, renewed every lease_s / 3 while it is sent; a row whose "
            "sender died is retaken once it lapses"
        ),
    )


class DecodeIsolationSettings(BaseModel):
    """Compressed Pixel Data decoded in child processes (:mod:`inference.isolation`).

    The native codecs see bytes from the network: in a child, memory one of them leaks goes back
    to the system when the child is replaced, a crash ends the child only (the image is
    refused as ``undecodable``), and a decode still running after ``decode_timeout_s`` has its
    child killed (the image is refused as ``decode_timeout``). Native (uncompressed) Pixel Data
    is always read in-process. Children are replaced after ``decodes_per_child`` decodes, or
    once one's resident size exceeds ``max_child_rss_mib`` after a decode. ``enabled = false``
    decodes in-process, without any of these limits.
    """

    enabled: bool = True
    processes: int = Field(2, ge=1, le=64)
    decodes_per_child: int = Field(200, ge=1)
    max_child_rss_mib: int = Field(1024, ge=64)
    decode_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "a decode still running after this long is stopped and its image refused as "
            "decode_timeout; the slowest real decode measured took 1.3 s (docs/SECURITY.md)"
        ),
    )


class InferenceSettings(BaseModel):
    """The model the service runs."""

    model_path: Path = BUNDLED_MODEL_DIR
    batch_size: int = Field(8, ge=1, le=256)
    operating_point: str = Field(
        "high_sensitivity", pattern="^(high_sensitivity|high_specificity)$"
    )
    enabled: bool = True
    decode_isolation: DecodeIsolationSettings = Field(default_factory=DecodeIsolationSettings)


class LoginThrottleSettings(BaseModel):
    """Failed logins, counted per submitted user name and per client address.

    After ``free_failures`` failures, each further failure opens a delay window of
    ``base_delay_s`` doubling per failure, at most ``max_delay_s``, in which logins are answered
    429 with Retry-After. At ``user_lockout_after`` (``address_lockout_after``) failures the user
    name (address) is locked until an admin lifts the lock; 0 never locks. Failures older than
    ``forget_after_s`` are forgotten, unless locked. Behind a reverse proxy every caller has the
    proxy's address: raise ``address_lockout_after`` or set it to 0 there.
    """

    free_failures: int = Field(3, ge=0)
    base_delay_s: float = Field(1.0, gt=0.0)
    max_delay_s: float = Field(900.0, gt=0.0)
    user_lockout_after: int = Field(10, ge=0)
    address_lockout_after: int = Field(100, ge=0)
    forget_after_s: float = Field(86_400.0, gt=0.0)


class ApiSettings(BaseModel):
    """The review API and web page."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    secret_key: SecretStr | None = None
    token_expiry_minutes: int = Field(60, ge=1)
    environment: str = Field("development", pattern="^(development|production)$")
    login_throttle: LoginThrottleSettings = Field(default_factory=LoginThrottleSettings)


class SyslogTransport(StrEnum):
    """How audit messages reach the collector (PS3.15 A.6 and A.7)."""

    #: RFC 5426: one message per datagram; a collector may truncate long ones.
    UDP = "udp"
    #: RFC 6587 octet counting over plain TCP.
    TCP = "tcp"
    #: RFC 5425: octet counting over TLS (the ATNA Secure Node's transport).
    TLS = "tls"


#: PRINTUSASCII, 1-48 characters: the APP-NAME of RFC 5424 6.2.5.
_APP_NAME = re.compile(r"^[\x21-\x7e]{1,48}$")


class SyslogSettings(BaseModel):
    """An audit record repository that receives the DICOM audit messages as syslog (RFC 5424).

    Sending never blocks the node: messages wait in a queue of ``queue_size`` for a background
    sender; when it is full, new messages are dropped and counted in ``/metrics``.
    """

    enabled: bool = False
    host: str | None = None
    #: Default: 6514 for TLS (RFC 5425), 514 for UDP and TCP.
    port: int | None = Field(None, ge=1, le=65535)
    transport: SyslogTransport = SyslogTransport.TLS
    app_name: str = "fracture-gateway"
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    #: Seconds for a TCP or TLS connection and for one send; then the sender retries later.
    timeout_s: float = Field(5.0, gt=0, le=120)
    #: Authorities trusted for the collector's certificate (TLS); the system's when unset. The
    #: node's certificate (``node.tls.certificate``), if any, is presented to the collector.
    ca_certificates: Path | None = None
    #: The name the collector's certificate must carry; ``host`` when unset.
    tls_server_name: str | None = None

    @field_validator("app_name")
    @classmethod
    def _check_app_name(cls, value: str) -> str:
        if not _APP_NAME.match(value):
            raise ValueError(f"invalid syslog app_name {value!r}: 1-48 printable ASCII, no spaces")
        return value

    @model_validator(mode="after")
    def _check_collector(self) -> Self:
        if self.enabled and not self.host:
            raise ValueError("audit.syslog.enabled needs audit.syslog.host")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 6514 if self.transport is SyslogTransport.TLS else 514


class AuditSettings(BaseModel):
    """The audit trail of DICOM network events (PS3.15 A.5) and its copy to a syslog collector."""

    #: AuditSourceID of the messages; the node's AE title when unset.
    source_id: str | None = Field(None, min_length=1, max_length=64)
    #: AuditEnterpriseSiteID of the messages (e.g. the hospital); omitted when unset.
    enterprise_site_id: str | None = Field(None, min_length=1, max_length=64)
    #: Events waiting to be written to the audit table; beyond this they are dropped, counted.
    queue_size: int = Field(10_000, ge=1, le=1_000_000)
    syslog: SyslogSettings = Field(default_factory=SyslogSettings)


class Settings(BaseSettings):
    """Everything fracture-gateway can be told."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home)
    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    grouping: GroupingSettings = Field(default_factory=GroupingSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    destinations: list[Destination] = Field(default_factory=list)
    routing: list[RoutingRule] = Field(default_factory=list)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = config_file_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique, repeated: {duplicates}")
        for rule in self.routing:
            unknown = sorted(set(rule.destinations) - set(names))
            if unknown:
                raise ValueError(f"routing rule names unknown destinations: {unknown}")
        if self.api.environment == "production" and self.api.secret_key is None:
            raise ValueError("api.secret_key must be set when api.environment is 'production'")
        return self

    # Derived locations -------------------------------------------------------------------------
    @property
    def storage_folder(self) -> Path:
        return (self.storage.folder or self.home / "storage").absolute()

    @property
    def database_url(self) -> str:
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite:///{(self.home / 'fracture-gateway.sqlite3').absolute()}"

    def calling_ae_allowed(self, ae_title: str, host: str) -> bool:
        """Whether an association from ``ae_title`` at ``host`` may be accepted.

        With known sources configured, only they are accepted. Without, the node is safe by
        default: it accepts callers on this machine (a loopback peer address, or any caller
        while it listens on loopback only), and callers from elsewhere only when
        ``accept_any_calling_ae`` says so explicitly.
        """
        ae_title = ae_title.strip()
        if self.node.known_sources:
            return any(
                src.ae_title == ae_title and (src.host is None or src.host == host)
                for src in self.node.known_sources
            )
        return self.node.accept_any_calling_ae or self.node.is_loopback or _is_loopback(host)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_file_path() -> Path | None:
    """The TOML file: ``$FRACTURE_GATEWAY_CONFIG``, else ``<home>/config.toml`` if present."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"configuration file {path} (from {CONFIG_ENV}) does not exist")
        return path
    candidate = default_home() / "config.toml"
    return candidate if candidate.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from defaults, the TOML file, the environment and ``overrides``."""
    return Settings(**overrides)


MASK = "********"


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with secrets and credentials in URLs masked."""
    data = settings.model_dump(mode="json")
    data["database"]["url"] = _mask_url(settings.database_url)
    data["jobs"]["broker_url"] = _mask_url(settings.jobs.broker_url.get_secret_value())
    if settings.api.secret_key is not None:
        data["api"]["secret_key"] = MASK
    return data


def _mask_url(url: str) -> str:
    """Replace the password in ``scheme://user:password@host`` with asterisks."""
    return re.sub(r"(?<=://)([^:/@]+):([^@]+)@", rf"\1:{MASK}@", url)
