"""Configuration files for the tests and the benchmarks, written from the example
``config.toml`` an admin starts from.

:func:`write_config` reads the example, applies the overrides section by section and writes
the result: a test states only what it changes, and a key renamed or removed in the example
breaks the tests that use it instead of leaving a hand-written copy behind.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

#: The example configuration at the root of the repository.
EXAMPLE = Path(__file__).resolve().parents[1] / "config.toml"

#: What every test or benchmark service changes in the example: no HTTP server on the
#: example's fixed port 8080, no delivery to the example's PACS, a calling AE title for
#: DCMTK's tools, nothing pruned while it runs.
LOOPBACK: dict[str, Any] = {
    "listener": {"allowed_calling_aets": ["STORESCU", "ECHOSCU", "ORTHANC"]},
    "storage": {"retention_days": 0},
    "http": {"enabled": False},
    "destinations": [],
}


def _plain(value: Any) -> Any:
    """``value`` as TOML can hold it: paths as strings, tuples as lists (recursively)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: a table (mapping) is merged key by key, and a key
    set to ``None`` is removed; any other value (a list of ``[[destinations]]`` included)
    replaces the base's."""
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = _plain(value)
    return result


def config_dict(**overrides: Any) -> dict[str, Any]:
    """The example configuration with :data:`LOOPBACK`, then ``overrides``, applied (each
    keyword a section: ``listener={"port": 11113}``, ``destinations=[{...}]``)."""
    with EXAMPLE.open("rb") as handle:
        example = tomllib.load(handle)
    return merged(merged(example, LOOPBACK), overrides)


def write_config(path: Path, **overrides: Any) -> Path:
    """Write ``path`` (a ``config.toml``) from the example with ``overrides``
    (:func:`config_dict`); return it. Relative paths in it are relative to its folder, as
    in any ``config.toml``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(config_dict(**overrides)).encode("utf-8"))
    return path
