"""Named network namespaces (``ip netns``): listing them and running code inside one.

A named namespace is a bind mount under ``/var/run/netns``; its identity is the inode number of
that file, which is also what the kernel calls the namespace's ``inum``. With NETWORK_NAMESPACES
set, flowkit's eBPF program writes the low 16 bits of it into a flow's key (``netns``, see
:func:`netns_id`); the agent's own namespace is number 0 in flows and interface keys.

:func:`entered` switches the *calling thread* into a namespace and back: sockets opened and
interface indexes resolved meanwhile (netlink, ``bpf_link_create``, tc) belong to that
namespace, and sockets keep it after the switch back. Entering a namespace needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from flowkit.model import interface_key  # re-exported here: namespaces are where keys matter

NETNS_DIR = "/var/run/netns"
"""Where ``ip netns add`` creates named network namespaces."""

CLONE_NEWNET = 0x40000000

__all__ = [
    "NETNS_DIR",
    "NamespaceGone",
    "NamespaceSelector",
    "NetnsHandle",
    "entered",
    "interface_key",
    "list_named",
    "netns_id",
    "own_inode",
    "qualified_name",
]


class NamespaceGone(OSError):
    """A named namespace was deleted (or replaced by another of the same name)."""


PROC_DYNAMIC_FIRST = 0xF0000000
"""Namespace inode numbers other than the initial namespaces' are this plus a small number."""


def netns_id(inode: int) -> int | None:
    """The 16-bit id flows carry for the namespace with this inode (``None``: not traceable).

    The kernel numbers namespaces ``0xF0000000 + n`` with ``n`` the smallest free number, so the
    low 16 bits tell live namespaces apart; 0 is reserved for the agent's own namespace.
    """
    low = inode & 0xFFFF
    if inode >> 16 != PROC_DYNAMIC_FIRST >> 16 or low == 0:
        return None
    return low


def own_inode() -> int:
    """Inode number of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def qualified_name(name: str, netns: str | None) -> str:
    """``<namespace>/<interface>`` for interfaces of other namespaces, else the name.

    Interface names cannot contain ``/``, so the result is unambiguous.
    """
    return f"{netns}/{name}" if netns else name


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)
    if setns is not None:  # Python >= 3.12
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = " (entering a network namespace needs CAP_SYS_ADMIN)" if err == errno.EPERM else ""
        raise OSError(err, f"setns: {os.strerror(err)}{hint}")


@contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the body with the calling thread inside the namespace of ``fd``, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


@dataclass
class NetnsHandle:
    """An open named namespace: its name, inode and an fd that keeps it reachable.

    While the fd is open the namespace cannot be freed, so close it as soon as the namespace's
    file is deleted.
    """

    name: str
    inode: int
    fd: int

    @property
    def id(self) -> int | None:
        """The namespace's id in flows (:func:`netns_id`)."""
        return netns_id(self.inode)

    @classmethod
    def open(cls, name: str, expected_inode: int | None = None, *,
             expected_id: int | None = None) -> NetnsHandle:
        """Open ``/var/run/netns/<name>``; :class:`NamespaceGone` if missing or replaced.

        ``expected_inode`` / ``expected_id``: the namespace must still be that one.
        """
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NamespaceGone(errno.ENOENT, f"network namespace {name!r} is gone") from exc
        inode = os.fstat(fd).st_ino
        if (expected_inode is not None and inode != expected_inode) or (
            expected_id is not None and netns_id(inode) != expected_id
        ):
            os.close(fd)
            raise NamespaceGone(errno.ENOENT, f"network namespace {name!r} was replaced")
        return cls(name, inode, fd)

    def entered(self) -> AbstractContextManager[None]:
        """Context manager: the calling thread inside this namespace (see :func:`entered`)."""
        return entered(self.fd)

    def close(self) -> None:
        """Close the fd. Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> NetnsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_named(directory: str = NETNS_DIR) -> dict[str, int]:
    """Every named namespace with its inode (empty when the directory does not exist).

    Entries that are not namespaces (a plain file left there, a mount that failed) have the
    inode of the file itself, which no namespace has; :meth:`NetnsHandle.open` then fails when
    entering. Only ``nsfs`` mounts are kept (their device is the nsfs device, shared by all).
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    nsfs_dev = os.stat("/proc/self/ns/net").st_dev
    for name in names:
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        if st.st_dev == nsfs_dev:
            out[name] = st.st_ino
    return out


class NamespaceSelector:
    """NETWORK_NAMESPACES: which named namespaces are traced (names or ``/regex/``)."""

    def __init__(self, entries: Sequence[str]) -> None:
        self._names: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        for entry in entries:
            if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
                self._patterns.append(re.compile(entry[1:-1]))
            else:
                self._names.add(entry)

    def __bool__(self) -> bool:
        return bool(self._names or self._patterns)

    def selects(self, name: str) -> bool:
        """True when namespace ``name`` is traced."""
        return name in self._names or any(p.search(name) for p in self._patterns)
