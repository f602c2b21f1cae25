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
#: Bytes in a MiB: the sizes the configuration gives in MiB (``*_mb``) are multiples of it.
MIB = 1024 * 1024
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
    # Each field's docstring is its description, which the configuration reference
    # (worker.config_reference, docs/operating.md) is generated from.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ListenerTlsConfig(_Section):
    """``[listener.tls]``: DICOM TLS on the listener (PS3.15 B.1, TLS 1.2 or later)."""

    cert: Path
    """PEM certificate (chain) of the listener; with this table the listener speaks DICOM
    TLS only (TLS 1.2 or later)."""
    key: Path
    """Unencrypted PEM private key of ``cert``."""
    ca: Path | None = None
    """PEM CAs that sign client certificates; a certificate a client presents is then
    verified."""
    require_client_cert: bool = False
    """Refuse clients without a certificate signed by ``ca`` (needs ``ca``)."""

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ListenerTlsConfig:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA that signs client certificates)")
        return self


class DestinationTlsConfig(_Section):
    """``[destinations.tls]``: DICOM TLS to a C-STORE destination (TLS 1.2 or later); also
    ``[sources.tls]``, to a PACS Ossa retrieves from."""

    ca: Path | None = None
    """PEM CAs to verify the peer against; none: the system's CAs."""
    cert: Path | None = None
    """Ossa's client certificate (PEM), for a peer that asks for one (with ``key``)."""
    key: Path | None = None
    """The unencrypted PEM key of ``cert``."""
    verify_hostname: bool = True
    """The peer's certificate must name ``host`` (it is always verified against ``ca``)."""

    @model_validator(mode="after")
    def _cert_and_key(self) -> DestinationTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class ListenerConfig(_Section):
    """``[listener]``: the C-STORE SCP that the PACS forwards radiographs to."""

    ae_title: str = "OSSA"
    """Ossa's AE title (1-16 characters); an association calling another title is
    rejected."""
    host: str = "127.0.0.1"
    """Address to listen on (``"0.0.0.0"`` for every interface)."""
    port: Port = 11112
    """TCP port of the DICOM listener."""
    allowed_calling_aets: tuple[str, ...] = ()
    """Calling AE titles accepted; others are rejected at association. Empty accepts any
    (a warning is logged)."""
    max_associations: int = Field(default=10, ge=1, le=1000)
    """Concurrent associations; one more is rejected (transient, "local limit
    exceeded")."""
    max_pdu_size: int = Field(default=0, ge=0)
    """Maximum PDU size the listener announces; 0: no limit."""
    network_timeout_s: float = Field(default=60.0, gt=0)
    """ACSE and network (idle) timeout of the listener; also the TLS handshake's."""
    dimse_timeout_s: float = Field(default=30.0, gt=0)
    """DIMSE timeout of the listener."""
    max_inflated_mb: int = Field(default=256, ge=1, le=4096)
    """A Deflated Explicit VR Little Endian data set that inflates past this (MiB) is
    refused with ``0xA700``."""
    allowed_peers: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Calling AE title -> the IP addresses or networks it may connect from, e.g.
    ``{ PACS = ["10.0.0.5", "10.1.0.0/16"] }``; a title not listed is not bound to an
    address (``allowed_calling_aets`` still applies)."""
    tls: ListenerTlsConfig | None = None
    """DICOM TLS on the listener (``[listener.tls]``); none: plain TCP."""

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
    """A study is complete (and classified) after this long with no new instance."""


class StorageConfig(_Section):
    """``[storage]``: where received instances, produced objects and the state store live.

    ``database`` (a ``postgresql://user@host:port/database`` URL) puts the state store on
    PostgreSQL, shared by every node of a cluster, which then share ``root`` too (NFS);
    without it the store is SQLite under ``root``, for one node. The password is read when a
    connection opens, from ``database_password_file`` or ``database_password_env`` (or by
    libpq's own ``.pgpass`` / ``PGPASSWORD``), never from this file.
    """

    root: Path = Path("var")
    """Received instances, produced objects and (without ``database``) the SQLite state
    store, ``state.sqlite3``."""
    retention_days: float = Field(default=30.0, ge=0, le=36500)
    """Finished studies are pruned after this many days without change; 0 keeps
    everything."""
    database: str | None = Field(default=None, pattern=r"^postgres(ql)?://[^\s]+$")
    """``postgresql://user@host:port/database``: the state store on PostgreSQL, shared by
    the nodes of a cluster; no password in it. None: SQLite under ``root``."""
    database_password_file: Path | None = None
    """File holding the PostgreSQL password, read at each connection, never logged; without
    it or ``database_password_env``, libpq's ``~/.pgpass`` / ``PGPASSWORD``."""
    database_password_env: str | None = Field(default=None,
                                              pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Or: the environment variable holding the PostgreSQL password."""

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
    """This node's name in a cluster (unique): the owner of the jobs and deliveries it
    claims. None: the host name."""
    lease_s: float = Field(default=60.0, ge=3, le=3600)
    """A claimed job or delivery is taken over by another node after this long without the
    owner's heartbeat (sent every third of it)."""


class DeliveryConfig(_Section):
    """``[delivery]``: how the outbox retries a destination that did not take an object.

    The wait before retry *n* is ``retry_initial_interval_s * 2**(n-1)``, capped at
    ``retry_max_interval_s`` and jittered; after ``give_up_after_s`` without success the
    delivery is ``failed`` until ``ossa retry``.
    """

    retry_initial_interval_s: float = Field(default=10.0, gt=0, le=86400)
    """Wait before the first retry of a failed delivery (or retrieval)."""
    retry_max_interval_s: float = Field(default=300.0, gt=0, le=86400)
    """The wait doubles after each failure up to this."""
    give_up_after_s: float = Field(default=86400.0, gt=0, le=90 * 86400)
    """Then the delivery is ``failed`` until ``ossa retry``."""

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
    """Model bundle directory (the example ``config.toml`` names the shipped
    ``bundles/fracatlas``)."""
    backend: Backend = "onnxruntime"
    """``"onnxruntime"`` (base install, no PyTorch) or ``"torch"`` (needs the ``[train]``
    extra)."""
    threads: int = Field(default=0, ge=0, le=256)
    """Inference threads; 0: one per core."""
    batch_size: int = Field(default=32, ge=1, le=1024)
    """Images per network call; the studies that are ready together share batches."""


class ScopeConfig(_Section):
    """``[scope]``: Body Part Examined terms and ``SCT:<code>`` anatomic regions that Ossa
    does not assess (:mod:`dicom_io.scope`); each list replaces the built-in one."""

    not_assessed: tuple[str, ...] = DEFAULT_NOT_ASSESSED
    """Body Part Examined terms and ``SCT:<code>`` anatomic regions Ossa does not assess."""
    assessed: tuple[str, ...] = DEFAULT_ASSESSED
    """Values left to the model (listed so that a value cannot be in both lists)."""

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
    """Also write a secondary capture for each assessed image, its findings outlined."""


class DimseDestination(_Section):
    """``[[destinations]]`` with ``type = "dimse"``: a C-STORE SCP that receives the SRs."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """A unique name, used in logs, ``ossa status`` and ``results_to``."""
    type: Literal["dimse"] = "dimse"
    """``"dimse"``: C-STORE."""
    ae_title: str
    """The PACS's AE title."""
    host: str
    """The PACS's host name or address."""
    port: Port
    """The PACS's port."""
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Connection, ACSE and DIMSE timeout."""
    tls: DestinationTlsConfig | None = None
    """C-STORE over DICOM TLS (``[destinations.tls]``); none: plain TCP."""

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
    """The DICOMweb root, e.g. ``"https://pacs.example.org/dicom-web"`` (a STOW-RS
    destination POSTs to ``{url}/studies``)."""
    auth: Literal["none", "basic", "bearer"] = "none"
    """``"basic"``: HTTP Basic (``username`` and the password); ``"bearer"``: a token."""
    username: str | None = None
    """The HTTP Basic user name."""
    secret_file: Path | None = None
    """File holding the password or token (one line); read at each request, never
    logged."""
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Or: the environment variable holding it (give one of the two when ``auth`` is not
    ``"none"``)."""
    verify_tls: bool = True
    """Verify the server's certificate (``https://``)."""
    ca_bundle: Path | None = None
    """PEM file of the CAs to trust instead of the system's (``REQUESTS_CA_BUNDLE``, else
    certifi's)."""
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Connection and read timeout of each HTTP request."""

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
    """A unique name, used in logs, ``ossa status`` and ``results_to``."""
    type: Literal["stowrs"]
    """``"stowrs"``: DICOMweb STOW-RS (PS3.18 10.5)."""


#: A source's name is also the calling AE title its instances are recorded under (PS3.5 AE
#: characters, at most 16), so that its studies are assembled apart from those received.
_SOURCE_NAME = r"^[A-Za-z0-9_.-]{1,16}$"
#: Modalities a source asks for by default: the radiographs Ossa reads (DR is not a defined
#: term of PS3.3 C.7.3.1.1.1, but some archives write it).
DEFAULT_SOURCE_MODALITIES = ("CR", "DX", "DR")


class _SourceBase(_Section):
    """What every ``[[sources]]`` entry has: a name and where its results go."""

    name: str = Field(pattern=_SOURCE_NAME)
    """Unique, 1-16 of ``A-Z a-z 0-9 _ . -``: the sender (calling AE title) the retrieved
    studies are recorded under."""
    results_to: tuple[str, ...] | None = None
    """``[[destinations]]`` name(s) the results of this source's studies go to (one or a
    list); None: every destination."""

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
    """``"dicomweb"``: QIDO-RS polls and WADO-RS retrieval."""
    poll_interval_s: float = Field(default=30.0, ge=0, le=86400)
    """Seconds between polls; 0 polls never (on demand only)."""
    overlap_s: float = Field(default=3600.0, ge=0, le=30 * 86400)
    """Each poll asks for studies dated from the watermark less this."""
    lookback_days: float = Field(default=1.0, ge=0, le=3650)
    """How far back the first poll asks."""
    modalities: tuple[str, ...] = Field(default=DEFAULT_SOURCE_MODALITIES, min_length=1)
    """One QIDO-RS search (``ModalitiesInStudy``) each."""
    filters: dict[str, str] = Field(default_factory=dict)
    """Further QIDO-RS matching keys, e.g. ``{ InstitutionName = "General" }``."""

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
    """``"dimse"``: C-GET or C-MOVE, on demand."""
    ae_title: str
    """The PACS's Query/Retrieve SCP AE title."""
    host: str
    """The PACS's host name or address."""
    port: Port
    """The PACS's port."""
    retrieve: Literal["c-get", "c-move"] = "c-get"
    """``"c-get"``, or ``"c-move"`` to ``listener.ae_title`` (the PACS must know Ossa's host
    and port)."""
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Connection, ACSE and DIMSE timeout of the retrieval."""
    tls: DestinationTlsConfig | None = None
    """DICOM TLS to the PACS (``[sources.tls]``, as ``[destinations.tls]``); none: plain
    TCP."""

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
    """Log level of the service."""
    format: Literal["plain", "json"] = "plain"
    """``"plain"`` lines, or ``"json"``: one JSON object per line."""


class HttpConfig(_Section):
    """``[http]``: health, metrics, the status page, the JSON API and STOW-RS inbound.

    Write actions (retry) and STOW-RS need the bearer token held in ``token_file``; without
    one they are refused. Reads are open when ``host`` is a loopback address, and need the
    token otherwise.
    """

    enabled: bool = False
    """Run the HTTP server: health, metrics, status page, API, STOW-RS in (the example
    ``config.toml`` enables it)."""
    host: str = "127.0.0.1"
    """Its address; reads need the token when it is not a loopback address."""
    port: Port = 8080
    """Its TCP port."""
    token_file: Path | None = None
    """File holding the bearer token for retry and STOW-RS; without it they are refused."""
    max_upload_mb: int = Field(default=512, ge=1, le=16384)
    """Largest STOW-RS request (MiB); also bounds one WADO-RS answer of a source."""


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
    """Where the SRs and captures go; repeat the table for several."""
    sources: tuple[Source, ...] = ()
    """Archives and PACS that Ossa retrieves studies from; repeat the table for several."""
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
