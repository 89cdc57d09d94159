"""Typed calls attaching programs (csrc/cdef/15-tc.cdef, 16-trace.cdef): TCX links, clsact
qdiscs and direct-action filters, and tracing (``tp_btf``) links.

Every function raises :class:`~flowkit.native.NativeError` naming the libbpf call, with the
kernel's errno (callers tell "already there" and "interface gone" apart by ``exc.errno``).
"""

from __future__ import annotations

import errno

from flowkit.native._lib import NULL, check, lib

__all__ = [
    "TCX_EGRESS",
    "TCX_INGRESS",
    "TC_EGRESS",
    "TC_INGRESS",
    "raw_tracepoint_open",
    "tc_attach",
    "tc_detach",
    "tc_hook_create",
    "tc_hook_destroy",
    "tcx_link_create",
]

TC_INGRESS: int = lib.FKT_TC_INGRESS
"""Attach point of the clsact ingress hook (libbpf's ``BPF_TC_INGRESS``)."""
TC_EGRESS: int = lib.FKT_TC_EGRESS
"""Attach point of the clsact egress hook (libbpf's ``BPF_TC_EGRESS``)."""
TCX_INGRESS: int = lib.FKT_TCX_INGRESS
"""``BPF_TCX_INGRESS`` attach type."""
TCX_EGRESS: int = lib.FKT_TCX_EGRESS
"""``BPF_TCX_EGRESS`` attach type."""


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int, what: str) -> int:
    """A TCX link (its fd: closing it detaches the program)."""
    return check(lib.fkt_tcx_link_create(prog_fd, ifindex, attach_type),
                 "bpf_link_create(BPF_TCX)", what)


def tc_hook_create(ifindex: int, what: str) -> bool:
    """Give ``ifindex`` a clsact qdisc: True if created, False if it already had one."""
    rc = lib.fkt_tc_hook_create(ifindex)
    if rc == -errno.EEXIST:
        return False
    check(rc, "bpf_tc_hook_create", what)
    return True


def tc_hook_destroy(ifindex: int, what: str) -> None:
    """Remove the clsact qdisc of ``ifindex`` (with every filter on it)."""
    check(lib.fkt_tc_hook_destroy(ifindex), "bpf_tc_hook_destroy", what)


def tc_attach(
    ifindex: int, attach_point: int, handle: int, priority: int, prog_fd: int, what: str
) -> None:
    """A direct-action filter running ``prog_fd`` (``EEXIST``: handle/priority taken)."""
    check(lib.fkt_tc_attach(ifindex, attach_point, handle, priority, prog_fd, NULL),
          "bpf_tc_attach", what)


def tc_detach(ifindex: int, attach_point: int, handle: int, priority: int, what: str) -> None:
    """Remove the filter with ``handle`` and ``priority``."""
    check(lib.fkt_tc_detach(ifindex, attach_point, handle, priority), "bpf_tc_detach", what)


def raw_tracepoint_open(prog_fd: int, what: str) -> int:
    """Attach a ``tp_btf`` program at the tracepoint fixed at load; returns the link fd."""
    return check(lib.bpf_raw_tracepoint_open(NULL, prog_fd), "bpf_raw_tracepoint_open", what)
