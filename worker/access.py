"""``listener.allowed_peers``: calling AE titles bound to the addresses they may connect from.

A calling AE title listed there may only associate from one of its addresses or networks; a
title not listed is not bound to an address (``allowed_calling_aets`` still decides whether
it may associate at all). :class:`worker.audit.AssociationAudit` applies the check when an
association is requested and rejects the others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerBindings:
    """Which addresses each bound calling AE title may connect from.

    Parameters
    ----------
    allowed_peers : mapping of str to sequence of str
        Calling AE title to IP addresses or networks (``"10.0.0.7"``, ``"10.1.0.0/16"``,
        ``"fd00::/8"``); a host address is a one-address network.

    Raises
    ------
    ValueError
        If a value is not an IP address or network (naming the AE title and the value).
    """

    def __init__(self, allowed_peers: Mapping[str, Sequence[str]] | None = None) -> None:
        self._networks: dict[str, tuple[IPNetwork, ...]] = {}
        for aet, values in (allowed_peers or {}).items():
            networks = []
            for value in values:
                try:
                    networks.append(ipaddress.ip_network(value, strict=False))
                except ValueError:
                    raise ValueError(
                        f"allowed_peers.{aet}: {value!r} is not an IP address or network"
                    ) from None
            self._networks[aet.strip()] = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def networks(self, calling_aet: str) -> tuple[IPNetwork, ...] | None:
        """The networks ``calling_aet`` is bound to; ``None`` if it is not bound."""
        return self._networks.get(calling_aet.strip())

    def allows(self, calling_aet: str, address: str) -> bool:
        """Whether ``calling_aet`` may associate from the IP address ``address``.

        An IPv4 peer seen by a dual-stack listener as ``::ffff:a.b.c.d`` is matched as
        ``a.b.c.d``. An address that cannot be parsed never matches a bound title.
        """
        networks = self.networks(calling_aet)
        if networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in networks)
