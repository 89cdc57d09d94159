"""The ``watch`` informer (the default LISTEN_INTERFACES): netlink link notifications.

It first reports every existing interface of the network namespace as ``added``, then follows
rtnetlink notifications: a new interface is ``added``, a removed one ``deleted``. When the
addresses of an interface change it is reported as ``added`` again with its new addresses (the
agent ignores repeats for interfaces it already traces; INTERFACE_IPS selection needs them).

The notifications are read from a plain netlink socket with a short timeout, so that a stop
request is honoured within about half a second. If the kernel drops notifications (the socket
buffer overflowed during heavy churn), the informer re-reads the interface list and reports the
difference: no interface is missed.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

from flowkit import hookimpl
from flowkit.components import (
    ComponentContext,
    InformerSpec,
    Interface,
    InterfaceEvent,
)

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
NLMSG_ERROR = 2
NLMSG_OVERRUN = 4
IFLA_ADDRESS = 1
IFLA_IFNAME = 3

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_RECV_TIMEOUT = 0.5
_RCVBUF = 8 << 20


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def parse_messages(data: bytes) -> Iterator[tuple[int, int, dict[int, bytes]]]:
    """Split a netlink datagram into ``(message type, interface index, attributes)``.

    Only link and address messages are returned; others are skipped.
    """
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = offset + _NLMSGHDR.size
        end = offset + length
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFOMSG.size <= end:
            _family, _type, index, _flags2, _change = _IFINFOMSG.unpack_from(data, body)
            yield kind, index, _attributes(data, body + _IFINFOMSG.size, end)
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and body + _IFADDRMSG.size <= end:
            index = _IFADDRMSG.unpack_from(data, body)[4]
            yield kind, index, {}
        offset += (length + 3) & ~3


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw and len(raw) == 6 else ""


class WatchInformer:
    """Reports interfaces from rtnetlink notifications (implements ``Informer``)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._known: dict[int, Interface] = {}
        self._lock = threading.Lock()

    # -- netlink ------------------------------------------------------------------------------
    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            sock.settimeout(_RECV_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _snapshot() -> dict[int, Interface]:
        """Every interface with its addresses, read with one link and one address dump."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            links = list(ipr.get_links())
            addrs = list(ipr.get_addr())
        by_index: dict[int, list[str]] = {}
        for msg in addrs:
            address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if address:
                by_index.setdefault(int(msg["index"]), []).append(str(address))
        out = {}
        for link in links:
            index = int(link["index"])
            out[index] = Interface(
                name=str(link.get_attr("IFLA_IFNAME")),
                index=index,
                addresses=tuple(sorted(by_index.get(index, ()))),
                mac=str(link.get_attr("IFLA_ADDRESS") or ""),
            )
        return out

    @staticmethod
    def _addresses(index: int) -> tuple[str, ...]:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                msgs = list(ipr.get_addr(index=index))
        except OSError:
            return ()
        found = (m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL") for m in msgs)
        return tuple(sorted(str(a) for a in found if a))

    # -- events -------------------------------------------------------------------------------
    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        """Existing interfaces first (``added``), then changes, until ``stop`` is set."""
        # Subscribe before the snapshot so that nothing happening in between is missed; the
        # bookkeeping in _known makes duplicate notifications harmless.
        self._sock = self._open()
        yield from self._resync()
        while not stop.is_set():
            sock = self._sock
            if sock is None:
                return
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.info("netlink notifications were dropped; re-reading interfaces")
                    yield from self._resync()
                    continue
                if stop.is_set() or self._sock is None:
                    return
                raise
            yield from self._handle(data)

    def _resync(self) -> Iterator[InterfaceEvent]:
        current = self._snapshot()
        with self._lock:
            known = dict(self._known)
        for index, old in known.items():
            new = current.get(index)
            if new is None or new.name != old.name:
                with self._lock:
                    self._known.pop(index, None)
                yield InterfaceEvent("deleted", old)
        for index in sorted(current):
            new = current[index]
            with self._lock:
                old_iface = self._known.get(index)
                self._known[index] = new
            if old_iface != new:
                yield InterfaceEvent("added", new)

    def _handle(self, data: bytes) -> Iterator[InterfaceEvent]:
        for kind, index, attrs in parse_messages(data):
            with self._lock:
                known = self._known.get(index)
            if kind == RTM_DELLINK:
                if known is not None:
                    with self._lock:
                        self._known.pop(index, None)
                    yield InterfaceEvent("deleted", known)
                continue
            if kind == RTM_NEWLINK:
                name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                if known is not None and known.name == name:
                    continue  # state change (up/down, MTU...): nothing for the agent
                if known is not None:  # renamed: report as gone and new
                    yield InterfaceEvent("deleted", known)
                iface = Interface(
                    name=name,
                    index=index,
                    addresses=self._addresses(index),
                    mac=_mac(attrs.get(IFLA_ADDRESS)),
                )
                with self._lock:
                    self._known[index] = iface
                yield InterfaceEvent("added", iface)
                continue
            # An address changed: report the interface again with its current addresses.
            if known is None:
                continue
            addresses = self._addresses(index)
            if addresses != known.addresses:
                iface = Interface(known.name, index, addresses, known.mac, known.netns)
                with self._lock:
                    self._known[index] = iface
                yield InterfaceEvent("added", iface)

    def close(self) -> None:
        """Close the netlink socket (an ``events`` loop in progress ends)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _make(context: ComponentContext) -> Any:
    return WatchInformer()


@hookimpl
def flowkit_informers() -> list[InformerSpec]:
    """The ``watch`` informer."""
    return [
        InformerSpec(
            name="watch",
            factory=_make,
            description="Netlink link notifications: existing interfaces, then added/deleted "
            "ones (default)",
        )
    ]
