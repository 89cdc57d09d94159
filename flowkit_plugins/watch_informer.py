"""The ``watch`` informer (the default LISTEN_INTERFACES): netlink link notifications.

It first reports every existing interface of the network namespace as ``added``, then follows
rtnetlink notifications: a new interface is ``added``, a removed one ``deleted``. When the
addresses of an interface change it is reported as ``added`` again with its new addresses (the
agent ignores repeats for interfaces it already traces; INTERFACE_IPS selection needs them).

The notifications are read from a plain netlink socket with a short timeout, so that a stop
request is honoured within about half a second. If the kernel drops notifications (the socket
buffer overflowed during heavy churn), the informer re-reads the interface list and reports the
difference: no interface is missed.

With NETWORK_NAMESPACES set, the informer also follows the named network namespaces it selects
(``ip netns add``: bind mounts under ``/var/run/netns``). It looks at that directory every half
second; for each selected namespace it opens the namespace, enters it just long enough to open a
netlink socket and list its interfaces there, and from then on reports that namespace's
interfaces like its own, with ``netns`` (the name) and ``netns_id`` (the inode) set. When the
namespace's file disappears (``ip netns delete``) or is replaced, every interface of it is
reported ``deleted`` and the socket and namespace fd are closed: flowkit holds nothing that keeps
a deleted namespace alive.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from flowkit import hookimpl
from flowkit.components import (
    ComponentContext,
    InformerSpec,
    Interface,
    InterfaceEvent,
)
from flowkit.netns import NamespaceGone, NamespaceSelector, NetnsHandle, list_named, own_inode

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
_STOP_CHECK = 10.0  # longest wait for notifications when nothing calls wake() at the stop
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


class _Namespace:
    """One watched network namespace: its netlink socket and the interfaces it reported."""

    def __init__(self, handle: NetnsHandle | None) -> None:
        self.handle = handle
        self.name = handle.name if handle is not None else None
        self.inode = handle.inode if handle is not None else 0
        self.id = (handle.id or 0) if handle is not None else 0
        self.sock: socket.socket | None = None
        self.known: dict[int, Interface] = {}

    def inside(self) -> AbstractContextManager[None]:
        """Context in which sockets and pyroute2 calls reach this namespace."""
        return self.handle.entered() if self.handle is not None else nullcontext()

    def interface(self, name: str, index: int, addresses: tuple[str, ...], mac: str) -> Interface:
        return Interface(name, index, addresses, mac, self.name, self.id)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        if self.handle is not None:
            self.handle.close()


class WatchInformer:
    """Reports interfaces from rtnetlink notifications (implements ``Informer``).

    ``namespaces`` (NETWORK_NAMESPACES): names or ``/regex/`` of named network namespaces whose
    interfaces are reported too.
    """

    def __init__(self, namespaces: tuple[str, ...] | list[str] = (),
                 rescan_period: float = _RECV_TIMEOUT) -> None:
        self._selector = NamespaceSelector(namespaces)
        self._rescan_period = rescan_period
        self._home = _Namespace(None)
        self._others: dict[str, _Namespace] = {}
        self._unusable: dict[str, int] = {}  # namespaces that cannot be traced, by inode
        self._own_inode = 0
        self._lock = threading.Lock()
        self._closed = False
        # Part of every wait for notifications: wake() and close() end the wait at once, so
        # that it needs no timeout unless namespaces are rescanned.
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    # -- netlink ------------------------------------------------------------------------------
    @staticmethod
    def _open() -> socket.socket:
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
    def _snapshot(ns: _Namespace) -> dict[int, Interface]:
        """Every interface with its addresses, read with one link and one address dump."""
        from pyroute2 import IPRoute

        with ns.inside(), IPRoute() as ipr:
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
            out[index] = ns.interface(
                str(link.get_attr("IFLA_IFNAME")),
                index,
                tuple(sorted(by_index.get(index, ()))),
                str(link.get_attr("IFLA_ADDRESS") or ""),
            )
        return out

    @staticmethod
    def _addresses(ns: _Namespace, index: int) -> tuple[str, ...]:
        from pyroute2 import IPRoute

        try:
            with ns.inside(), IPRoute() as ipr:
                msgs = list(ipr.get_addr(index=index))
        except OSError:
            return ()
        found = (m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL") for m in msgs)
        return tuple(sorted(str(a) for a in found if a))

    # -- events -------------------------------------------------------------------------------
    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        """Existing interfaces first (``added``), then changes, until ``stop`` is set."""
        # Subscribe before the snapshot so that nothing happening in between is missed; the
        # bookkeeping in `known` makes duplicate notifications harmless.
        self._own_inode = own_inode()
        self._home.sock = self._open()
        yield from self._resync(self._home)
        next_scan = 0.0
        while not stop.is_set() and not self._closed:
            if self._selector and time.monotonic() >= next_scan:
                yield from self._rescan_namespaces()
                next_scan = time.monotonic() + self._rescan_period
            with self._lock:
                spaces = [ns for ns in (self._home, *self._others.values()) if ns.sock]
            if not spaces:
                return
            timeout = (max(0.0, next_scan - time.monotonic()) if self._selector
                       else _STOP_CHECK)
            try:
                fds = [ns.sock.fileno() for ns in spaces if ns.sock is not None]
                ready, _, _ = select.select([*fds, self._wake_fd], [], [], timeout)
            except (OSError, ValueError):  # a socket was closed by close()
                if stop.is_set() or self._closed:
                    return
                raise
            if self._wake_fd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake_fd)
            for ns in spaces:
                if ns.sock is not None and ns.sock.fileno() in ready:
                    yield from self._receive(ns, stop)

    def _receive(self, ns: _Namespace, stop: threading.Event) -> Iterator[InterfaceEvent]:
        sock = ns.sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                log.info("netlink notifications were dropped; re-reading interfaces")
                yield from self._resync(ns)
                return
            if stop.is_set() or self._closed or ns.sock is None:
                return
            raise
        yield from self._handle(ns, data)

    def _rescan_namespaces(self) -> Iterator[InterfaceEvent]:
        """Follow selected namespaces appearing in and disappearing from /var/run/netns."""
        present = {
            name: inode
            for name, inode in list_named().items()
            if inode != self._own_inode and self._selector.selects(name)
        }
        for name, ns in list(self._others.items()):
            if present.get(name) != ns.inode:
                yield from self._forget_namespace(ns)
        self._unusable = {n: i for n, i in self._unusable.items() if present.get(n) == i}
        for name, inode in sorted(present.items()):
            if name in self._others or self._unusable.get(name) == inode:
                continue
            try:
                handle = NetnsHandle.open(name, inode)
            except NamespaceGone:
                continue
            if handle.id is None:
                handle.close()
                self._unusable[name] = inode
                log.warning("cannot trace network namespace %s: its inode %#x is not of the form "
                            "0xf000xxxx that flows can carry", name, inode)
                continue
            ns = _Namespace(handle)
            try:
                with ns.inside():
                    ns.sock = self._open()
            except OSError as exc:
                ns.close()
                self._unusable[name] = inode  # not retried (nor logged again) while it exists
                log.warning("cannot watch network namespace %s: %s", name, exc)
                continue
            with self._lock:
                self._others[name] = ns
            log.info("watching network namespace %s", name)
            try:
                yield from self._resync(ns)
            except OSError as exc:  # deleted while being listed: the next scan forgets it
                log.info("listing interfaces of network namespace %s failed: %s", name, exc)

    def _forget_namespace(self, ns: _Namespace) -> Iterator[InterfaceEvent]:
        with self._lock:
            if ns.name is not None:
                self._others.pop(ns.name, None)
            gone = list(ns.known.values())
            ns.known.clear()
        # Close first: our socket and fd are what could keep a deleted namespace alive.
        ns.close()
        log.info("network namespace %s is gone", ns.name)
        for iface in gone:
            yield InterfaceEvent("deleted", iface)

    def _resync(self, ns: _Namespace) -> Iterator[InterfaceEvent]:
        current = self._snapshot(ns)
        with self._lock:
            known = dict(ns.known)
        for index, old in known.items():
            new = current.get(index)
            if new is None or new.name != old.name:
                with self._lock:
                    ns.known.pop(index, None)
                yield InterfaceEvent("deleted", old)
        for index in sorted(current):
            new = current[index]
            with self._lock:
                old_iface = ns.known.get(index)
                ns.known[index] = new
            if old_iface != new:
                yield InterfaceEvent("added", new)

    def _handle(self, ns: _Namespace, data: bytes) -> Iterator[InterfaceEvent]:
        for kind, index, attrs in parse_messages(data):
            with self._lock:
                known = ns.known.get(index)
            if kind == RTM_DELLINK:
                if known is not None:
                    with self._lock:
                        ns.known.pop(index, None)
                    yield InterfaceEvent("deleted", known)
                continue
            if kind == RTM_NEWLINK:
                name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
                if known is not None and known.name == name:
                    continue  # state change (up/down, MTU...): nothing for the agent
                if known is not None:  # renamed: report as gone and new
                    yield InterfaceEvent("deleted", known)
                iface = ns.interface(
                    name, index, self._addresses(ns, index), _mac(attrs.get(IFLA_ADDRESS))
                )
                with self._lock:
                    ns.known[index] = iface
                yield InterfaceEvent("added", iface)
                continue
            # An address changed: report the interface again with its current addresses.
            if known is None:
                continue
            addresses = self._addresses(ns, index)
            if addresses != known.addresses:
                iface = ns.interface(known.name, index, addresses, known.mac)
                with self._lock:
                    ns.known[index] = iface
                yield InterfaceEvent("added", iface)

    def watched_namespaces(self) -> dict[str, int]:
        """Named namespaces followed now, with their inodes."""
        with self._lock:
            return {name: ns.inode for name, ns in self._others.items()}

    def wake(self) -> None:
        """End the current wait for notifications at once (the agent calls this once it has
        set the ``stop`` event given to :meth:`events`; without it, :meth:`events` sees the stop
        within 10 s)."""
        with contextlib.suppress(OSError):  # closed already: nothing waits
            os.eventfd_write(self._wake_fd, 1)

    def close(self) -> None:
        """Close every netlink socket and namespace fd (an ``events`` loop in progress ends)."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        with self._lock:
            spaces = [self._home, *self._others.values()]
            self._others.clear()
        for ns in spaces:
            ns.close()
        os.close(self._wake_fd)


def _make(context: ComponentContext) -> Any:
    return WatchInformer(getattr(context.config, "network_namespaces", ()))


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
