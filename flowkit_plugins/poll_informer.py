"""The ``poll`` informer: lists interfaces every LISTEN_POLL_PERIOD and reports the changes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import netifaces

from flowkit import hookimpl
from flowkit.components import ComponentContext, InformerSpec, Interface, InterfaceEvent


def list_interfaces() -> dict[int, Interface]:
    """Every interface of the current network namespace, by index, with its addresses."""
    out: dict[int, Interface] = {}
    for name in netifaces.interfaces():
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            continue  # went away while we were listing
        addresses: list[str] = []
        mac = ""
        try:
            families = netifaces.ifaddresses(name)
        except ValueError:
            families = {}
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            addresses.extend(a["addr"] for a in families.get(family, []) if "addr" in a)
        for link in families.get(netifaces.AF_LINK, []):
            mac = link.get("addr", "") or mac
        out[index] = Interface(name=name, index=index, addresses=tuple(addresses), mac=mac)
    return out


class PollInformer:
    """Diffs the interface list every ``period`` seconds."""

    def __init__(self, period: float) -> None:
        self.period = period

    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        known: dict[int, Interface] = {}
        while not stop.is_set():
            current = list_interfaces()
            for index, iface in known.items():
                now = current.get(index)
                if now is None or now.name != iface.name:
                    yield InterfaceEvent("deleted", iface)
            for index, iface in current.items():
                before = known.get(index)
                if before is None or before.name != iface.name:
                    yield InterfaceEvent("added", iface)
            known = current
            stop.wait(self.period)

    def close(self) -> None:
        """Nothing to release."""


def _make(context: ComponentContext) -> PollInformer:
    return PollInformer(context.config.listen_poll_period)


@hookimpl
def flowkit_informers() -> list[InformerSpec]:
    return [
        InformerSpec(
            name="poll",
            factory=_make,
            description="Lists interfaces every LISTEN_POLL_PERIOD (netifaces)",
        )
    ]
