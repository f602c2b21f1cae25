"""Typed, validated configuration read once from ``config.toml``.

Every section is a frozen pydantic model: an invalid value is rejected at load time with a
message that names the key (``listener.port: ...``), and nothing reads the file or the
environment at import.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.engine import Backend

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

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_allowed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae_title(v) for v in value)


class StudyConfig(_Section):
    """``[study]``: when a study counts as complete."""

    completion_timeout_s: float = Field(default=10.0, gt=0, le=86400)


class StorageConfig(_Section):
    """``[storage]``: where received instances, produced objects and the state store live."""

    root: Path = Path("var")
    retention_days: float = Field(default=30.0, ge=0, le=36500)  # 0 keeps everything


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


class DimseDestination(_Section):
    """``[[destinations]]`` with ``type = "dimse"``: a C-STORE SCP that receives the SRs."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: Port
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return _check_ae_title(value)


class LoggingConfig(_Section):
    """``[logging]``: log level of the service."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Section):
    """The whole ``config.toml``."""

    listener: ListenerConfig = ListenerConfig()
    study: StudyConfig = StudyConfig()
    storage: StorageConfig = StorageConfig()
    model: ModelConfig = ModelConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    destinations: tuple[DimseDestination, ...] = ()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Config:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destinations: names must be unique, repeated: {duplicates}")
        return self

    def resolve_paths(self, base: Path) -> Config:
        """Return a copy whose relative paths are taken relative to ``base``."""

        def _resolve(path: Path) -> Path:
            return path if path.is_absolute() else (base / path)

        return self.model_copy(
            update={
                "storage": self.storage.model_copy(update={"root": _resolve(self.storage.root)}),
                "model": self.model.model_copy(update={"bundle": _resolve(self.model.bundle)}),
            }
        )


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
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
