"""Typed, validated configuration read once from ``config.toml``.

Every section is a frozen pydantic model: an invalid value is rejected at load time with a
message that names the key (``listener.port: ...``), and nothing reads the file or the
environment at import.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from dicom_io.scope import DEFAULT_ASSESSED, DEFAULT_NOT_ASSESSED, ScopeTable
from models.serving.engine import Backend

# PS3.5 6.2: AE is up to 16 characters of the default repertoire, no backslash or control
# characters; leading/trailing spaces are not significant, so an all-space title is empty.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(ValueError):
    """The configuration file is missing, not TOML, or has an invalid value."""


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            "must be 1-16 printable ASCII characters without backslash (DICOM PS3.5 AE), "
            f"got {value!r}"
        )
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenerTlsConfig(_Section):
    """``[listener.tls]``: DICOM TLS on the listener (PS3.15 B.1, TLS 1.2 or later)."""

    cert: Path
    key: Path
    ca: Path | None = None  # CA certificates that sign client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ListenerTlsConfig:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA that signs client certificates)")
        return self


class DestinationTlsConfig(_Section):
    """``[destinations.tls]``: DICOM TLS to a C-STORE destination (TLS 1.2 or later)."""

    ca: Path | None = None  # CA certificates to verify the destination; None: the system's
    cert: Path | None = None  # our client certificate, when the destination asks for one
    key: Path | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key(self) -> DestinationTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class ListenerConfig(_Section):
    """``[listener]``: the C-STORE SCP that the PACS forwards radiographs to."""

    ae_title: str = "OSSA"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = Field(default=10, ge=1, le=1000)
    max_pdu_size: int = Field(default=0, ge=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    dimse_timeout_s: float = Field(default=30.0, gt=0)
    # A Deflated Explicit VR Little Endian data set that inflates past this is refused.
    max_inflated_mb: int = Field(default=256, ge=1, le=4096)
    # Calling AE title -> IP addresses or networks it may connect from; an AE not listed is
    # not bound to an address (allowed_calling_aets still applies).
    allowed_peers: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    tls: ListenerTlsConfig | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_allowed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae_title(v) for v in value)

    @field_validator("allowed_peers")
    @classmethod
    def _check_peers(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        checked = {}
        for aet, networks in value.items():
            for network in networks:
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{aet}: {network!r} is not an IP address or network") from exc
            checked[_check_ae_title(aet)] = tuple(networks)
        return checked


class StudyConfig(_Section):
    """``[study]``: when a study counts as complete."""

    completion_timeout_s: float = Field(default=10.0, gt=0, le=86400)


class StorageConfig(_Section):
    """``[storage]``: where received instances, produced objects and the state store live.

    ``database`` (a ``postgresql://user@host:port/database`` URL) puts the state store on
    PostgreSQL, shared by every node of a cluster, which then share ``root`` too (NFS);
    without it the store is SQLite under ``root``, for one node. The password is read when a
    connection opens, from ``database_password_file`` or ``database_password_env`` (or by
    libpq's own ``.pgpass`` / ``PGPASSWORD``), never from this file.
    """

    root: Path = Path("var")
    retention_days: float = Field(default=30.0, ge=0, le=36500)  # 0 keeps everything
    database: str | None = Field(default=None, pattern=r"^postgres(ql)?://[^\s]+$")
    database_password_file: Path | None = None
    database_password_env: str | None = Field(default=None,
                                              pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.password is not None:
            raise ValueError("must not hold a password: use database_password_file or "
                             "database_password_env")
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("needs a host and a database name, e.g. "
                             "postgresql://ossa@db.example:5432/ossa")
        try:
            parts.port  # noqa: B018 - raises for a port outside 0-65535
        except ValueError as exc:
            raise ValueError(f"invalid port in {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _password_source(self) -> StorageConfig:
        has_password = (self.database_password_file is not None
                        or self.database_password_env is not None)
        if self.database_password_file is not None and self.database_password_env is not None:
            raise ValueError("give database_password_file or database_password_env, not both")
        if has_password and self.database is None:
            raise ValueError("a database password needs database (a PostgreSQL URL)")
        return self


class NodeConfig(_Section):
    """``[node]``: this node of a cluster (several nodes on one PostgreSQL store).

    ``name`` (default: the host name) owns the jobs and deliveries the node claims; each
    node's must be unique. A claim lasts ``lease_s`` without a heartbeat (every third of
    it): a node that dies or stalls longer has its work taken over by another.
    """

    name: str | None = Field(default=None, min_length=1, max_length=64,
                             pattern=r"^[A-Za-z0-9_.-]+$")
    lease_s: float = Field(default=60.0, ge=3, le=3600)


class DeliveryConfig(_Section):
    """``[delivery]``: how the outbox retries a destination that did not take an object.

    The wait before retry *n* is ``retry_initial_interval_s * 2**(n-1)``, capped at
    ``retry_max_interval_s`` and jittered; after ``give_up_after_s`` without success the
    delivery is ``failed`` until ``ossa retry``.
    """

    retry_initial_interval_s: float = Field(default=10.0, gt=0, le=86400)
    retry_max_interval_s: float = Field(default=300.0, gt=0, le=86400)
    give_up_after_s: float = Field(default=86400.0, gt=0, le=90 * 86400)

    @model_validator(mode="after")
    def _initial_below_max(self) -> DeliveryConfig:
        if self.retry_initial_interval_s > self.retry_max_interval_s:
            raise ValueError(
                "delivery.retry_initial_interval_s must not exceed retry_max_interval_s, got "
                f"{self.retry_initial_interval_s} > {self.retry_max_interval_s}"
            )
        return self


class ModelConfig(_Section):
    """``[model]``: the model bundle to load and the backend that runs it."""

    bundle: Path = Path("var/models/demo")
    backend: Backend = "onnxruntime"
    threads: int = Field(default=0, ge=0, le=256)
    batch_size: int = Field(default=32, ge=1, le=1024)


class ScopeConfig(_Section):
    """``[scope]``: Body Part Examined terms and ``SCT:<code>`` anatomic regions that Ossa
    does not assess (:mod:`dicom_io.scope`); each list replaces the built-in one."""

    not_assessed: tuple[str, ...] = DEFAULT_NOT_ASSESSED
    assessed: tuple[str, ...] = DEFAULT_ASSESSED

    @model_validator(mode="after")
    def _disjoint(self) -> ScopeConfig:
        ScopeTable(self.not_assessed, self.assessed)  # raises, naming the values in both
        return self

    def table(self) -> ScopeTable:
        """The scope table of this section."""
        return ScopeTable(self.not_assessed, self.assessed)


class ResultsConfig(_Section):
    """``[results]``: the objects Ossa writes besides the SR."""

    secondary_capture: bool = True


class DimseDestination(_Section):
    """``[[destinations]]`` with ``type = "dimse"``: a C-STORE SCP that receives the SRs."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: Port
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    tls: DestinationTlsConfig | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)


class DicomwebAccess(_Section):
    """URL, authentication and TLS of a DICOMweb service (a STOW-RS destination, a source).

    The secret (password or bearer token) is read when a request is made, from the file
    ``secret_file`` or the environment variable ``secret_env``; it is never in the
    configuration file and never logged.
    """

    url: str = Field(pattern=r"^https?://[^\s]+$")
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    verify_tls: bool = True
    ca_bundle: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: use auth, username and secret_file")
        if not parts.hostname:
            raise ValueError(f"needs a host, got {value!r}")
        try:
            parts.port  # noqa: B018 - raises for a port outside 0-65535
        except ValueError as exc:
            raise ValueError(f"invalid port in {value!r}") from exc
        return value.rstrip("/")

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or not value.strip()):
            raise ValueError("must be non-empty and without ':' (HTTP basic authentication)")
        return value

    @model_validator(mode="after")
    def _auth_complete(self) -> DicomwebAccess:
        has_secret = self.secret_file is not None or self.secret_env is not None
        if self.secret_file is not None and self.secret_env is not None:
            raise ValueError("give secret_file or secret_env, not both")
        if self.auth == "none" and (has_secret or self.username):
            raise ValueError('username/secret_file/secret_env need auth = "basic" or "bearer"')
        if self.auth != "none" and not has_secret:
            raise ValueError(f'auth = "{self.auth}" needs secret_file or secret_env')
        if self.auth == "basic" and not self.username:
            raise ValueError('auth = "basic" needs username')
        return self


class StowRsDestination(DicomwebAccess):
    """``[[destinations]]`` with ``type = "stowrs"``: a DICOMweb STOW-RS service (PS3.18 10.5).

    The secret (password or bearer token) is read when a request is made, from the file
    ``secret_file`` or the environment variable ``secret_env``; it is never in the
    configuration file and never logged.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["stowrs"]


#: A source's name is also the calling AE title its instances are recorded under (PS3.5 AE
#: characters, at most 16), so that its studies are assembled apart from those received.
_SOURCE_NAME = r"^[A-Za-z0-9_.-]{1,16}$"
#: Modalities a source asks for by default: the radiographs Ossa reads (DR is not a defined
#: term of PS3.3 C.7.3.1.1.1, but some archives write it).
DEFAULT_SOURCE_MODALITIES = ("CR", "DX", "DR")


class _SourceBase(_Section):
    """What every ``[[sources]]`` entry has: a name and where its results go."""

    name: str = Field(pattern=_SOURCE_NAME)
    # [[destinations]] names that a study retrieved from this source is reported to; by
    # default, every destination.
    results_to: tuple[str, ...] | None = None

    @field_validator("results_to", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


class DicomwebSource(_SourceBase, DicomwebAccess):
    """``[[sources]]`` with ``type = "dicomweb"``: an archive Ossa polls with QIDO-RS and
    retrieves from with WADO-RS (PS3.18 10.6 and 10.4).

    Each poll asks for the studies of ``modalities`` (and ``filters``, further QIDO-RS
    matching keys such as ``InstitutionName``) whose Study Date is on or after the
    watermark's, less ``overlap_s``; ``poll_interval_s = 0`` polls never (on-demand
    retrieval only). The first poll looks back ``lookback_days``.
    """

    type: Literal["dicomweb"]
    poll_interval_s: float = Field(default=30.0, ge=0, le=86400)
    overlap_s: float = Field(default=3600.0, ge=0, le=30 * 86400)
    lookback_days: float = Field(default=1.0, ge=0, le=3650)
    modalities: tuple[str, ...] = Field(default=DEFAULT_SOURCE_MODALITIES, min_length=1)
    filters: dict[str, str] = Field(default_factory=dict)

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for modality in value:
            if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality):
                raise ValueError(f"{modality!r} is not a modality (CS: upper case, at most 16)")
        return value

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key in ("StudyDate", "ModalitiesInStudy", "limit", "offset", "includefield"):
                raise ValueError(f"{key} is set by Ossa (watermark, modalities, paging)")
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*|[0-9A-Fa-f]{8}", key):
                raise ValueError(f"{key!r} is not an attribute keyword or tag")
        return value


class DimseSource(_SourceBase):
    """``[[sources]]`` with ``type = "dimse"``: a PACS Ossa retrieves studies from on demand
    (``ossa analyze``), by C-GET (PS3.4 C.4.3) or by C-MOVE to Ossa's own listener (C.4.2:
    the PACS must know Ossa's AE title, host and port)."""

    type: Literal["dimse"]
    ae_title: str
    host: str
    port: Port
    retrieve: Literal["c-get", "c-move"] = "c-get"
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    tls: DestinationTlsConfig | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)


def _source_type(value: object) -> str:
    """The ``type`` of a source table (required: no default)."""
    if isinstance(value, dict):
        return str(value.get("type", ""))
    return str(getattr(value, "type", ""))


Source = Annotated[
    Annotated[DicomwebSource, Tag("dicomweb")] | Annotated[DimseSource, Tag("dimse")],
    Discriminator(
        _source_type,
        custom_error_type="source_type",
        custom_error_message='type must be "dicomweb" or "dimse"',
    ),
]


def _destination_type(value: object) -> str:
    """The ``type`` of a destination table; ``dimse`` when absent."""
    if isinstance(value, dict):
        return str(value.get("type", "dimse"))
    return str(getattr(value, "type", "dimse"))


Destination = Annotated[
    Annotated[DimseDestination, Tag("dimse")] | Annotated[StowRsDestination, Tag("stowrs")],
    Discriminator(
        _destination_type,
        custom_error_type="destination_type",
        custom_error_message='type must be "dimse" or "stowrs"',
    ),
]


class LoggingConfig(_Section):
    """``[logging]``: log level and format of the service."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["plain", "json"] = "plain"  # json: one JSON object per line


class HttpConfig(_Section):
    """``[http]``: health, metrics, the status page, the JSON API and STOW-RS inbound.

    Write actions (retry) and STOW-RS need the bearer token held in ``token_file``; without
    one they are refused. Reads are open when ``host`` is a loopback address, and need the
    token otherwise.
    """

    enabled: bool = False  # the example config.toml enables it
    host: str = "127.0.0.1"
    port: Port = 8080
    token_file: Path | None = None
    max_upload_mb: int = Field(default=512, ge=1, le=16384)  # one STOW-RS request


class Config(_Section):
    """The whole ``config.toml``."""

    listener: ListenerConfig = ListenerConfig()
    study: StudyConfig = StudyConfig()
    storage: StorageConfig = StorageConfig()
    node: NodeConfig = NodeConfig()
    model: ModelConfig = ModelConfig()
    scope: ScopeConfig = ScopeConfig()
    results: ResultsConfig = ResultsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Source, ...] = ()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig = HttpConfig()

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Config:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destinations: names must be unique, repeated: {duplicates}")
        sources = [s.name for s in self.sources]
        duplicates = sorted({n for n in sources if sources.count(n) > 1})
        if duplicates:
            raise ValueError(f"sources: names must be unique, repeated: {duplicates}")
        for source in self.sources:
            unknown = sorted(set(source.results_to or ()) - set(names))
            if unknown:
                raise ValueError(f"sources: {source.name}.results_to names no destination: "
                                 f"{unknown}")
        return self

    def results_to(self, source: str | None) -> tuple[str, ...]:
        """The destinations a study is reported to: those of the source it was retrieved
        from (its ``results_to``, by default every destination), else every destination."""
        every = tuple(d.name for d in self.destinations)
        for entry in self.sources:
            if entry.name == source:
                return every if entry.results_to is None else entry.results_to
        return every

    def resolve_paths(self, base: Path) -> Config:
        """Return a copy whose relative paths (every ``Path`` value, in every section and
        destination) are taken relative to ``base``."""
        resolved = _resolve_paths(self, base)
        assert isinstance(resolved, Config)
        return resolved


def _resolve_paths(value: object, base: Path) -> object:
    """``value`` with each relative Path in it made relative to ``base`` (recursively)."""
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, tuple):
        return tuple(_resolve_paths(v, base) for v in value)
    if isinstance(value, BaseModel):
        return value.model_copy(update={
            name: _resolve_paths(getattr(value, name), base) for name in type(value).model_fields
        })
    return value


def _format_error(error: ValidationError) -> str:
    """``key.path: message; ...``, keys as written in the file (a destination's type tag,
    which pydantic adds to the location, is left out)."""
    lines = []
    for item in error.errors():
        loc = list(item["loc"])
        if len(loc) > 2 and loc[0] in ("destinations", "sources") and loc[2] in (
                "dimse", "stowrs", "dicomweb"):
            del loc[2]
        if item["type"] in ("destination_type", "source_type"):
            loc.append("type")
        key = ".".join(str(part) for part in loc) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def load_config(path: Path) -> Config:
    """Read and validate a configuration file.

    Relative paths in ``[storage]`` and ``[model]`` are resolved against the directory of
    the configuration file, so the service behaves the same whatever its working directory.

    Parameters
    ----------
    path : pathlib.Path
        The TOML file.

    Returns
    -------
    Config
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        With a message naming the file and the offending key.
    """
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_error(exc)}") from None
    return config.resolve_paths(path.resolve().parent)
