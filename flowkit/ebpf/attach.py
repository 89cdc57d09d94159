"""Attach the flowkit programs to interfaces: TCX links, or clsact qdisc + direct-action filters.

One loaded object serves every interface: :class:`Attacher` takes the file descriptors of the
ingress and egress programs and attaches them per interface index.

- ``tcx`` (kernel >= 6.6): one BPF link per direction. Closing the link fd detaches it, so a
  killed agent leaves nothing behind.
- ``tc``: a clsact qdisc (created only if the interface has none; flowkit then remembers that it
  owns it) and one direct-action filter per direction at a fixed handle and priority. A killed
  agent leaves these filters behind: :meth:`Attacher.remove_stale_filters` deletes flowkit
  filters whose program no running process holds any more.
- ``any``: ``tcx`` when the kernel supports it, else ``tc``.

flowkit never deletes a qdisc or filter it did not create: a qdisc it created is deleted on
detach only when no other filter was added to it meanwhile.

Interfaces of other network namespaces (see :mod:`flowkit.netns`) are attached from inside
their namespace: the calling thread enters it for the attach (and for a tc detach) and comes
back. Attachments are keyed by ``netns_id << 32 | ifindex``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowkit.native import NativeError
from flowkit.native import tc as native_tc
from flowkit.netns import NamespaceGone, NetnsHandle, interface_key

log = logging.getLogger(__name__)

AttachMode = Literal["tcx", "tc", "any"]

TC_INGRESS = native_tc.TC_INGRESS
"""Attach point of the clsact ingress hook (libbpf's ``BPF_TC_INGRESS``)."""
TC_EGRESS = native_tc.TC_EGRESS
"""Attach point of the clsact egress hook (libbpf's ``BPF_TC_EGRESS``)."""
TCX_INGRESS = native_tc.TCX_INGRESS
"""``BPF_TCX_INGRESS`` attach type."""
TCX_EGRESS = native_tc.TCX_EGRESS
"""``BPF_TCX_EGRESS`` attach type."""

CLSACT_INGRESS_PARENT = 0xFFFFFFF2
"""The tc parent of the clsact ingress hook (``TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)``)."""
CLSACT_EGRESS_PARENT = 0xFFFFFFF3
"""The tc parent handle of the clsact egress hook."""

DEFAULT_TC_HANDLE = 0xF10C
"""Handle of flowkit's tc filters."""
DEFAULT_TC_PRIORITY = 1
"""Priority of flowkit's tc filters: 1 runs before filters added with tc's default priorities,
so that flowkit sees packets that a later filter drops."""

PROGRAM_NAME_PREFIX = "flowkit_"
"""Program names of flowkit (``flowkit_ingress``, ``flowkit_egress``): tc filters are named
``<program name>:[<program id>]`` by libbpf, which is how stale filters are recognised."""

_FILTER_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.]+):\[(?P<id>\d+)\]$")
_GONE = (errno.ENODEV, errno.ENOENT, errno.ENXIO)


class AttachError(RuntimeError):
    """An interface could not be traced; the message says why and what to try."""


@dataclass
class Attachment:
    """What flowkit holds for one interface."""

    ifindex: int
    name: str
    mode: Literal["tcx", "tc"]
    link_fds: list[int] = field(default_factory=list)
    """TCX link fds (``tcx`` mode)."""
    filters: list[int] = field(default_factory=list)
    """clsact attach points (TC_INGRESS / TC_EGRESS) with a flowkit filter (``tc`` mode)."""
    created_qdisc: bool = False
    """flowkit created the clsact qdisc and may delete it when it is left empty."""
    netns: str | None = None
    """Named network namespace of the interface (``None``: the agent's own)."""
    netns_id: int = 0
    """Inode of that namespace (0: the agent's own)."""

    @property
    def key(self) -> int:
        """``netns_id << 32 | ifindex``: unique across namespaces."""
        return interface_key(self.ifindex, self.netns_id)


@dataclass(frozen=True)
class TcFilter:
    """A BPF filter found on a clsact hook."""

    ifindex: int
    attach_point: int
    handle: int
    priority: int
    name: str
    prog_id: int | None


class Attacher:
    """Attaches the ingress/egress programs of one loaded object to interfaces.

    ``ingress_fd`` / ``egress_fd`` may be ``None`` to leave a direction untraced (DIRECTION).
    Thread-safe; :meth:`close` detaches from every interface.
    """

    def __init__(
        self,
        ingress_fd: int | None,
        egress_fd: int | None,
        mode: AttachMode = "any",
        *,
        tc_handle: int = DEFAULT_TC_HANDLE,
        tc_priority: int = DEFAULT_TC_PRIORITY,
    ) -> None:
        if mode not in ("tcx", "tc", "any"):
            raise ValueError(f"TC_ATTACH_MODE must be tcx, tc or any, not {mode!r}")
        if ingress_fd is None and egress_fd is None:
            raise ValueError("nothing to attach: neither an ingress nor an egress program")
        self._programs = [
            (point, fd)
            for point, fd in ((TC_INGRESS, ingress_fd), (TC_EGRESS, egress_fd))
            if fd is not None
        ]
        self.mode: AttachMode = mode
        self.tc_handle = tc_handle
        self.tc_priority = tc_priority
        self._tcx_supported: bool | None = None if mode != "tc" else False
        self._attached: dict[int, Attachment] = {}
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------
    def attach(
        self, ifindex: int, name: str = "", *, netns: str | None = None, netns_id: int = 0
    ) -> Attachment:
        """Attach both programs to interface ``ifindex``; return what is now held for it.

        ``netns``/``netns_id``: the interface is in that named namespace, which is entered for
        the attach (:class:`AttachError` if it is gone or was replaced). Attaching twice to the
        same interface returns the existing attachment.
        """
        key = interface_key(ifindex, netns_id)
        with self._lock:
            existing = self._attached.get(key)
            if existing is not None:
                return existing
            label = f"{netns}/{name or ifindex}" if netns else name or f"index {ifindex}"
            try:
                with _inside(netns, netns_id):
                    attachment = self._attach_here(ifindex, name, label)
            except NamespaceGone as exc:
                raise AttachError(f"interface {label} is gone: {exc}") from exc
            attachment.netns, attachment.netns_id = netns, netns_id
            self._attached[key] = attachment
            return attachment

    def _attach_here(self, ifindex: int, name: str, label: str) -> Attachment:
        attachment: Attachment | None = None
        if self.mode in ("tcx", "any") and self._tcx_supported is not False:
            try:
                attachment = self._attach_tcx(ifindex, name)
                self._tcx_supported = True
            except NativeError as exc:
                if exc.errno in _GONE:
                    raise AttachError(f"interface {label} is gone") from exc
                if self.mode == "tcx":
                    raise AttachError(
                        f"cannot attach a TCX link to {label}: {exc}; TCX needs Linux >= "
                        "6.6, set TC_ATTACH_MODE=tc or any to use a clsact qdisc instead"
                    ) from exc
                if self._tcx_supported is None and exc.errno in (
                    errno.EINVAL, errno.EOPNOTSUPP, 524  # ENOTSUPP (kernel-internal)
                ):
                    self._tcx_supported = False
                log.info("TCX attach to %s failed (%s); using a clsact qdisc", label, exc)
        if attachment is None:
            attachment = self._attach_tc(ifindex, name)
        return attachment

    def detach(self, ifindex: int, netns_id: int = 0) -> bool:
        """Release everything held for ``ifindex`` (also fine when the interface is gone).

        ``netns_id``: the namespace the interface is in (0: the agent's own). Returns False
        when flowkit was not attached to it.
        """
        with self._lock:
            attachment = self._attached.pop(interface_key(ifindex, netns_id), None)
        if attachment is None:
            return False
        self._release(attachment)
        return True

    def attached(self) -> list[Attachment]:
        """The current attachments."""
        with self._lock:
            return list(self._attached.values())

    def close(self) -> None:
        """Detach from every interface. Idempotent."""
        with self._lock:
            attachments = list(self._attached.values())
            self._attached.clear()
        for attachment in attachments:
            try:
                self._release(attachment)
            except Exception:
                log.exception("detaching from %s failed", attachment.name or attachment.ifindex)

    # -- TCX ----------------------------------------------------------------------------------
    def _attach_tcx(self, ifindex: int, name: str) -> Attachment:
        attachment = Attachment(ifindex, name, "tcx")
        try:
            for point, prog_fd in self._programs:
                attach_type = TCX_INGRESS if point == TC_INGRESS else TCX_EGRESS
                fd = native_tc.tcx_link_create(prog_fd, ifindex, attach_type,
                                               name or str(ifindex))
                attachment.link_fds.append(fd)
        except BaseException:
            self._close_links(attachment)
            raise
        return attachment

    @staticmethod
    def _close_links(attachment: Attachment) -> None:
        fds, attachment.link_fds = attachment.link_fds, []
        for fd in fds:
            os.close(fd)

    # -- tc (clsact + direct-action filters) --------------------------------------------------
    def _attach_tc(self, ifindex: int, name: str) -> Attachment:
        label = name or f"index {ifindex}"
        self.remove_stale_filters([ifindex])
        try:
            created = native_tc.tc_hook_create(ifindex, label)
        except NativeError as err:
            if err.errno in _GONE:
                raise AttachError(f"interface {label} is gone") from err
            raise AttachError(f"cannot create a clsact qdisc on {label}: {err}") from err
        attachment = Attachment(ifindex, name, "tc", created_qdisc=created)
        try:
            for point, prog_fd in self._programs:
                try:
                    native_tc.tc_attach(
                        ifindex, point, self.tc_handle, self.tc_priority, prog_fd, label
                    )
                except NativeError as err:
                    if err.errno != errno.EEXIST:
                        raise
                    raise AttachError(
                        f"{label} already has a tc filter with handle {self.tc_handle:#x} and "
                        f"priority {self.tc_priority} that belongs to a running program; "
                        "is another flowkit agent tracing it? Otherwise choose another "
                        "TC_FILTER_PRIORITY"
                    ) from None
                attachment.filters.append(point)
        except BaseException:
            self._release_tc(attachment)
            raise
        return attachment

    def _release(self, attachment: Attachment) -> None:
        if attachment.mode == "tcx":
            self._close_links(attachment)
            return
        try:
            with _inside(attachment.netns, attachment.netns_id):
                self._release_tc(attachment)
        except NamespaceGone:
            # The namespace is being destroyed: its devices, qdiscs and filters go with it.
            attachment.filters = []
            attachment.created_qdisc = False

    def _release_tc(self, attachment: Attachment) -> None:
        label = attachment.name or f"index {attachment.ifindex}"
        for point in attachment.filters:
            try:
                native_tc.tc_detach(attachment.ifindex, point, self.tc_handle, self.tc_priority,
                                    label)
            except NativeError as err:
                if err.errno not in _GONE:
                    log.warning("removing flowkit's tc filter from %s failed: %s", label,
                                os.strerror(err.errno))
        attachment.filters = []
        if attachment.created_qdisc:
            attachment.created_qdisc = False
            try:
                remaining = list_bpf_filters(attachment.ifindex)
            except OSError as exc:
                if exc.errno in _GONE:
                    return
                raise
            if remaining or _has_other_filters(attachment.ifindex):
                log.info("leaving the clsact qdisc of %s: it holds filters of others", label)
                return
            try:
                native_tc.tc_hook_destroy(attachment.ifindex, label)
            except NativeError as err:
                if err.errno not in _GONE:
                    log.warning("removing the clsact qdisc of %s failed: %s", label,
                                os.strerror(err.errno))

    def remove_stale_filters(self, ifindexes: Iterable[int] | None = None) -> list[TcFilter]:
        """Delete flowkit tc filters that no running process owns (left by a killed agent).

        Looks at ``ifindexes`` (default: every interface of the network namespace) and returns
        the filters it removed. Filters of a live flowkit agent are left alone.
        """
        indexes = list(ifindexes) if ifindexes is not None else _all_ifindexes()
        found = [
            f
            for index in indexes
            for f in _safe_list(index)
            if f.name.startswith(PROGRAM_NAME_PREFIX)
        ]
        if not found:
            return []
        live = live_program_ids()
        removed = []
        for f in found:
            if f.prog_id is not None and f.prog_id in live:
                continue
            try:
                native_tc.tc_detach(f.ifindex, f.attach_point, f.handle, f.priority, f.name)
            except NativeError as err:
                if err.errno not in _GONE:
                    log.warning("cannot remove stale tc filter %s: %s", f.name,
                                os.strerror(err.errno))
                continue
            log.info("removed stale flowkit tc filter %s (interface index %d)", f.name,
                     f.ifindex)
            removed.append(f)
        return removed


def _inside(netns: str | None, netns_id: int) -> AbstractContextManager[None]:
    """The calling thread inside named namespace ``netns`` (nothing to do for the own one)."""
    return _entered_by_name(netns, netns_id) if netns else nullcontext()


@contextmanager
def _entered_by_name(netns: str, netns_id: int) -> Iterator[None]:
    with NetnsHandle.open(netns, expected_id=netns_id or None) as handle, handle.entered():
        yield


# -- inspection helpers (also used by tests) ---------------------------------------------------
def _ipr() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _all_ifindexes() -> list[int]:
    with _ipr() as ipr:
        return [int(link["index"]) for link in ipr.get_links()]


def _safe_list(ifindex: int) -> list[TcFilter]:
    try:
        return list_bpf_filters(ifindex)
    except OSError as exc:
        if exc.errno in (*_GONE, errno.EINVAL):
            return []
        raise


def _filter_messages(ipr: Any, ifindex: int, parent: int) -> Iterator[Any]:
    try:
        yield from ipr.get_filters(index=ifindex, parent=parent)
    except Exception as exc:  # pyroute2 raises NetlinkError (an OSError subclass)
        code = getattr(exc, "code", None)
        if code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc there
            return
        raise


def list_bpf_filters(ifindex: int) -> list[TcFilter]:
    """Every BPF filter on the clsact hooks of ``ifindex`` (empty without a clsact qdisc)."""
    out = []
    with _ipr() as ipr:
        for point, parent in ((TC_INGRESS, CLSACT_INGRESS_PARENT),
                              (TC_EGRESS, CLSACT_EGRESS_PARENT)):
            for msg in _filter_messages(ipr, ifindex, parent):
                if msg.get_attr("TCA_KIND") != "bpf" or not msg["handle"]:
                    continue
                options = msg.get_attr("TCA_OPTIONS")
                name = options.get_attr("TCA_BPF_NAME") if options is not None else None
                name = name or ""
                match = _FILTER_NAME.match(name)
                out.append(
                    TcFilter(
                        ifindex=ifindex,
                        attach_point=point,
                        handle=int(msg["handle"]),
                        priority=int(msg["info"]) >> 16,
                        name=match.group("name") if match else name,
                        prog_id=int(match.group("id")) if match else None,
                    )
                )
    return out


def _has_other_filters(ifindex: int) -> bool:
    """Any non-BPF filter on the clsact hooks (flowkit only ever adds BPF ones)."""
    with _ipr() as ipr:
        for parent in (CLSACT_INGRESS_PARENT, CLSACT_EGRESS_PARENT):
            for msg in _filter_messages(ipr, ifindex, parent):
                if msg["handle"] and msg.get_attr("TCA_KIND") != "bpf":
                    return True
    return False


def live_program_ids(proc: str = "/proc") -> set[int]:
    """Ids of the BPF programs some running process holds an fd to (from fdinfo)."""
    ids: set[int] = set()
    for pid_dir in Path(proc).iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) != "anon_inode:bpf-prog":
                    continue
                text = (pid_dir / "fdinfo" / fd.name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split(":", 1)[1]))
    return ids
