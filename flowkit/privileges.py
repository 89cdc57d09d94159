"""Capability checks, so that a missing privilege is reported by name instead of as EPERM."""

from __future__ import annotations

import resource
from collections.abc import Iterable

CAPABILITY_BITS = {
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


class PrivilegeError(PermissionError):
    """The process lacks capabilities a component needs."""


def effective_capabilities(status_path: str = "/proc/self/status") -> set[str]:
    """Names of the effective capabilities of this process (only those flowkit knows)."""
    with open(status_path) as status:
        for line in status:
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
                return {name for name, bit in CAPABILITY_BITS.items() if mask >> bit & 1}
    return set()


def missing_capabilities(required: Iterable[str], have: set[str] | None = None) -> list[str]:
    """The required capabilities the process does not have.

    CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as it does in the kernel.
    """
    have = effective_capabilities() if have is None else have
    missing = []
    for cap in required:
        if cap in have:
            continue
        if cap in {"CAP_BPF", "CAP_PERFMON"} and "CAP_SYS_ADMIN" in have:
            continue
        missing.append(cap)
    return missing


def require(component: str, required: Iterable[str]) -> None:
    """Raise :class:`PrivilegeError` naming what ``component`` misses."""
    required = list(required)
    missing = missing_capabilities(required)
    if missing:
        caps = ",".join(c.lower() for c in required)
        raise PrivilegeError(
            f"{component} needs {', '.join(required)}; missing: {', '.join(missing)}. Run as root "
            f"or grant them (e.g. setcap {caps}+ep on the Python interpreter, or add them to the "
            "container's securityContext)"
        )


def raise_memlock_limit() -> None:
    """Lift RLIMIT_MEMLOCK where allowed (kernels before 5.11 charge BPF maps to it)."""
    try:
        resource.setrlimit(
            resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    except (ValueError, OSError):
        pass
