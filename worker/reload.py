"""What a configuration reload changes: the keys applied live and those that need a restart.

``ossa serve`` re-reads ``config.toml`` on SIGHUP (``ossa reload`` sends it). The new file is
validated first: an invalid one is refused with the reason and the running configuration is
kept. Of a valid one, :func:`compare` sorts every changed key into two lists:

- applied live, without a restart or a dropped association: ``listener.ae_title``,
  ``listener.allowed_calling_aets``, ``listener.allowed_peers``, ``[scope]``,
  ``[delivery]`` (the retry policy), ``[[destinations]]`` and ``[[sources]]``;
- needing a restart, named as such and otherwise ignored until then: every other key (the
  listener's address, TLS and limits, ``[storage]``, ``[node]``, ``[model]``, ``[http]``,
  ``[study]``, ``[results]``, ``[logging]``).

:meth:`worker.service.Service.reload` applies the first list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from worker.config import Config

#: ``[listener]`` keys a reload applies to the running listener.
LIVE_LISTENER_KEYS = frozenset({"ae_title", "allowed_calling_aets", "allowed_peers"})
#: Whole sections a reload applies live.
LIVE_SECTIONS = frozenset({"scope", "delivery"})


@dataclass(frozen=True)
class ConfigChange:
    """The difference between the running configuration and a newly read one.

    Attributes
    ----------
    live : tuple of str
        Changed keys applied without a restart (``listener.ae_title``,
        ``destinations.pacs (changed)``, ``sources.archive (added)``, ...).
    restart : tuple of str
        Changed keys that take effect at the next start only (``listener.port``, ...).
    """

    live: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.live or self.restart)


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys under ``prefix`` whose values differ (a section's own keys, one level)."""
    if isinstance(old, BaseModel) and isinstance(new, BaseModel) and type(old) is type(new):
        keys = []
        for name in type(old).model_fields:
            if getattr(old, name) != getattr(new, name):
                keys.append(f"{prefix}.{name}")
        return keys
    return [] if old == new else [prefix]


def _named(kind: str, old: Iterable[Any], new: Iterable[Any]) -> list[str]:
    """``kind.NAME (added|removed|changed)`` for destinations or sources, by name."""
    before = {entry.name: entry for entry in old}
    after = {entry.name: entry for entry in new}
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            changes.append(f"{kind}.{name} (removed)")
        elif name not in before:
            changes.append(f"{kind}.{name} (added)")
        elif before[name] != after[name]:
            changes.append(f"{kind}.{name} (changed)")
    return changes


def compare(old: Config, new: Config) -> ConfigChange:
    """Sort what differs between ``old`` (running) and ``new`` (just read) into the keys a
    reload applies and those that need a restart."""
    live: list[str] = []
    restart: list[str] = []
    for section in type(old).model_fields:
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        if section in ("destinations", "sources"):
            live += _named(section, before, after)
        elif section in LIVE_SECTIONS:
            live += _changed_keys(before, after, section)
        elif section == "listener":
            for key in _changed_keys(before, after, section):
                (live if key.split(".", 1)[1] in LIVE_LISTENER_KEYS else restart).append(key)
        else:
            restart += _changed_keys(before, after, section)
    return ConfigChange(tuple(live), tuple(restart))


def running(old: Config, new: Config) -> Config:
    """The configuration the service runs with after a reload: ``new``'s live keys over
    ``old``'s, so that a key that needs a restart keeps its running value (and is reported
    again by the next reload until the service restarts)."""
    listener = old.listener.model_copy(
        update={key: getattr(new.listener, key) for key in LIVE_LISTENER_KEYS})
    return old.model_copy(update={
        "listener": listener,
        "scope": new.scope,
        "delivery": new.delivery,
        "destinations": new.destinations,
        "sources": new.sources,
    })
