"""Which interfaces the agent traces: INTERFACES, EXCLUDE_INTERFACES and INTERFACE_IPS."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from flowkit.components import Interface


def _compile(entries: Sequence[str]) -> tuple[set[str], list[re.Pattern[str]]]:
    names: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for entry in entries:
        if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
            patterns.append(re.compile(entry[1:-1]))
        else:
            names.add(entry)
    return names, patterns


class InterfaceFilter:
    """Decides whether an interface is traced.

    Entries are exact names or ``/regex/`` (searched anywhere in the name, not anchored). An
    empty include list means every interface. Exclusion wins. With ``ips`` set, an interface is
    traced only if one of its addresses is inside one of the networks.
    """

    def __init__(
        self, include: Sequence[str] = (), exclude: Sequence[str] = (), ips: Sequence[str] = ()
    ) -> None:
        self._include = _compile(include)
        self._exclude = _compile(exclude)
        self._include_all = not include
        self._networks = [ipaddress.ip_network(net, strict=False) for net in ips]

    @staticmethod
    def _matches(name: str, rules: tuple[set[str], list[re.Pattern[str]]]) -> bool:
        names, patterns = rules
        return name in names or any(p.search(name) for p in patterns)

    def allows(self, interface: Interface) -> bool:
        """True when ``interface`` should be traced.

        An interface of another network namespace is matched by its name and by its
        ``<namespace>/<name>``: ``lo`` excludes every namespace's loopback, ``ns1/eth0`` or
        ``/^ns1\\//`` select within one namespace.
        """
        names = (interface.name, interface.qualified_name) if interface.netns else (
            interface.name,)
        if any(self._matches(name, self._exclude) for name in names):
            return False
        if not self._include_all and not any(self._matches(n, self._include) for n in names):
            return False
        if self._networks:
            addresses = interface.ip_addresses()
            return any(
                addr in net
                for addr in addresses
                for net in self._networks
                if addr.version == net.version
            )
        return True
