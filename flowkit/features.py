"""Which optional features this kernel can run, and why not: ``flowkit-agent check``.

Each feature is checked twice:

1. **BTF**: the kernel types, fields, functions and tracepoints its eBPF code relies on must be
   in the kernel's BTF (``/sys/kernel/btf/vmlinux``, or another kernel's BTF file given with
   ``check --btf``). A missing one is named: that is the reason a user can act on (another
   kernel version, a kernel built with other options).
2. **Load**: with the running kernel's BTF, a probe program doing what the feature's datapath
   does (``csrc/bpf/probes.bpf.c``) is loaded — never attached. The kernel's verdict is the
   truth: a feature whose types exist can still be refused (a helper not allowed for the program
   type, a security policy forbidding a program type); the first line of libbpf's or the
   verifier's error is shown.

Features that run in user space only (DEDUPER) are always available.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flowkit.ebpf.btf import Btf, BtfKind

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

__all__ = ["FEATURES", "Feature", "FeatureReport", "KernelTypes", "check_features"]


@dataclass(frozen=True)
class Requirement:
    """One thing a feature needs in the kernel's BTF."""

    kind: str
    """``struct``, ``enum``, ``enum-value``, ``func``, ``tracepoint``, ``kfunc`` or ``member``."""
    name: str
    member: str = ""
    why: str = ""

    def describe(self) -> str:
        """How a user would search for it (``struct tcp_sock.srtt_us``)."""
        if self.kind == "member":
            return f"{self.name}.{self.member}"
        if self.kind == "enum-value":
            return f"{self.member} in enum {self.name}"
        if self.kind == "tracepoint":
            return f"BTF tracepoint {self.name} (btf_trace_{self.name})"
        if self.kind in ("func", "kfunc"):
            return f"function {self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Feature:
    """An optional feature: the setting that enables it and what it needs from the kernel."""

    name: str
    setting: str
    summary: str
    requires: tuple[Requirement, ...] = ()
    probe: str | None = None
    """Program of ``probes.bpf.o`` to load, ``None`` for user-space features."""
    extra: Callable[[], str | None] | None = None
    """Another check (returns why not, or ``None``)."""


@dataclass
class FeatureReport:
    """The verdict for one feature."""

    name: str
    setting: str
    supported: bool
    detail: str
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``check --json``)."""
        return asdict(self)


class KernelTypes:
    """Name lookups over a kernel's BTF (built once; vmlinux has ~100k types)."""

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self._by_kind: dict[int, dict[str, int]] = {}
        for type_id, t in enumerate(btf.types):
            if type_id and t.name_off:
                self._by_kind.setdefault(t.kind, {}).setdefault(btf.name(t.name_off), type_id)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] = VMLINUX_BTF) -> KernelTypes:
        """Read a raw BTF file (``/sys/kernel/btf/vmlinux`` by default)."""
        return cls(Btf.parse(Path(path).read_bytes()))

    def find(self, kind: int, name: str) -> int | None:
        """Type id of ``kind`` named ``name``."""
        return self._by_kind.get(kind, {}).get(name)

    def has(self, req: Requirement) -> bool:
        """Whether the requirement is met."""
        if req.kind == "struct":
            return self.find(BtfKind.STRUCT, req.name) is not None
        if req.kind == "enum":
            return self._enum(req.name) is not None
        if req.kind == "enum-value":
            type_id = self._enum(req.name)
            return type_id is not None and req.member in self.enum_values(type_id)
        if req.kind in ("func", "kfunc"):
            return self.find(BtfKind.FUNC, req.name) is not None
        if req.kind == "tracepoint":
            return self.find(BtfKind.TYPEDEF, f"btf_trace_{req.name}") is not None
        if req.kind == "member":
            kind_name, _, struct_name = req.name.partition(" ")
            kind = BtfKind.UNION if kind_name == "union" else BtfKind.STRUCT
            type_id = self.find(kind, struct_name)
            return type_id is not None and self._has_member(type_id, req.member.split("."))
        raise ValueError(f"unknown requirement kind {req.kind!r}")

    def _enum(self, name: str) -> int | None:
        found = self.find(BtfKind.ENUM, name)
        return found if found is not None else self.find(BtfKind.ENUM64, name)

    def enum_values(self, type_id: int) -> list[str]:
        """Names of an enum's values."""
        return [self.btf.name(m.name_off) for m in self.btf.types[type_id].members]

    def _has_member(self, type_id: int, path: list[str]) -> bool:
        t = self.btf.types[self.btf.skip_modifiers(type_id)]
        if t.kind not in (BtfKind.STRUCT, BtfKind.UNION):
            return False
        head, rest = path[0], path[1:]
        for m in t.members:
            name = self.btf.name(m.name_off)
            if name == head:
                return not rest or self._has_member(m.type, rest)
            if not name and self._has_member(m.type, path):  # anonymous struct/union
                return True
        return False


def _netns_dir() -> str | None:
    from flowkit.privileges import missing_capabilities

    if missing_capabilities(["CAP_SYS_ADMIN"]):
        return "entering a network namespace needs CAP_SYS_ADMIN, which this process lacks"
    return None


def _tcx_kernel() -> str | None:
    try:
        release = platform.release().split("-")[0].split(".")
        version = (int(release[0]), int(release[1]))
    except (ValueError, IndexError):
        return None
    if version < (6, 6):
        return f"TCX links need Linux >= 6.6 (this is {platform.release()}); flowkit uses a " \
               "clsact qdisc instead (TC_ATTACH_MODE=any)"
    return None


FEATURES: tuple[Feature, ...] = (
    Feature(
        "drops", "ENABLE_PKT_DROPS",
        "packet drops with the kernel's drop reason (tp_btf/kfree_skb)",
        (
            Requirement("tracepoint", "kfree_skb"),
            Requirement("struct", "trace_event_raw_kfree_skb"),
            Requirement("member", "struct trace_event_raw_kfree_skb", "reason",
                        "drop reasons (Linux >= 5.17)"),
            Requirement("enum", "skb_drop_reason", why="names of the drop causes"),
            Requirement("enum-value", "skb_drop_reason", "SKB_DROP_REASON_NOT_SPECIFIED"),
            Requirement("member", "struct sk_buff", "head"),
            Requirement("member", "struct sk_buff", "network_header"),
        ),
        probe="probe_drops",
    ),
    Feature(
        "rtt", "ENABLE_RTT",
        "TCP smoothed RTT per flow (tp_btf/tcp_probe, fired in tcp_rcv_established)",
        (
            Requirement("tracepoint", "tcp_probe", why="attach point of the RTT program"),
            Requirement("member", "struct tcp_sock", "srtt_us"),
        ),
        probe="probe_rtt",
    ),
    Feature(
        "dns", "ENABLE_DNS_TRACKING",
        "DNS id, response code, latency and name on the TC programs",
        probe="probe_dns",
    ),
    Feature(
        "filters", "FLOW_FILTER_RULES",
        "in-kernel flow filters (LPM trie of CIDRs)",
        probe="probe_filters",
    ),
    Feature(
        "dedup", "DEDUPER",
        "one record per flow seen on several interfaces (user space; any kernel)",
    ),
    Feature(
        "netns", "NETWORK_NAMESPACES",
        "interfaces of other network namespaces, told apart in flows",
        (
            Requirement("kfunc", "bpf_cast_to_kern_ctx",
                        why="reads the packet's device from the kernel's sk_buff (Linux >= 6.3)"),
            Requirement("member", "struct sk_buff", "dev"),
            Requirement("member", "struct net_device", "nd_net"),
            Requirement("member", "struct net", "ns.inum"),
        ),
        probe="probe_netns",
        extra=_netns_dir,
    ),
    Feature(
        "tcx", "TC_ATTACH_MODE=tcx",
        "TCX links (BPF links on the TC hooks; else clsact qdisc + filters)",
        (
            Requirement("enum-value", "bpf_attach_type", "BPF_TCX_INGRESS"),
            Requirement("struct", "tcx_link"),
        ),
        extra=_tcx_kernel,
    ),
)


def probes_path() -> Path:
    """The shipped probe object."""
    return Path(str(resources.files("flowkit") / "bpf" / "probes.bpf.o"))


def _load_error(exc: BaseException, section: str) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0].split(": ", 1)[-1] if lines else type(exc).__name__
    if "Operation not permitted" in first and os.geteuid() == 0:
        return (f"the kernel refuses to load a {section} program (EPERM) although flowkit runs "
                "as root: a security policy (lockdown, a BPF LSM) forbids it, or the kernel "
                "lacks support for this program type")
    verifier = [line for line in lines[1:] if not line.startswith("libbpf:")]
    details = verifier or [line.removeprefix("libbpf: ") for line in lines[1:]]
    return f"the kernel rejects the probe program: {details[-1] if details else first}"


def check_features(
    types: KernelTypes | None,
    *,
    load: bool = True,
    features: Iterable[Feature] = FEATURES,
    probes: Path | None = None,
) -> list[FeatureReport]:
    """A report per feature; ``types`` ``None`` means the kernel has no BTF at all."""
    spec: Any = None
    if load:
        from flowkit.ebpf import CollectionSpec

        spec = CollectionSpec.from_file(probes or probes_path())
    reports = []
    for feature in features:
        if types is None and feature.requires:
            reports.append(FeatureReport(feature.name, feature.setting, False,
                                         f"the kernel has no BTF ({VMLINUX_BTF})"))
            continue
        missing = [r for r in feature.requires if types is not None and not types.has(r)]
        if missing:
            why = "; ".join(r.describe() + (f" ({r.why})" if r.why else "") for r in missing)
            reports.append(FeatureReport(feature.name, feature.setting, False,
                                         f"not in the kernel's BTF: {why}",
                                         [r.describe() for r in missing]))
            continue
        problem = feature.extra() if feature.extra is not None else None
        if problem is None and spec is not None and feature.probe is not None:
            try:
                with spec.load([feature.probe]):
                    pass
            except Exception as exc:
                problem = _load_error(exc, spec.programs[feature.probe].section)
        if problem is not None:
            reports.append(FeatureReport(feature.name, feature.setting, False, problem))
            continue
        how = "probe program loads" if (spec is not None and feature.probe) else (
            "kernel BTF has what it needs" if feature.requires else "no kernel support needed")
        if not load and feature.probe:
            how = "kernel BTF has what it needs (probe not loaded)"
        reports.append(FeatureReport(feature.name, feature.setting, True,
                                     f"{feature.summary}: {how}"))
    return reports


def load_kernel_types(path: str | None = None) -> tuple[KernelTypes | None, str | None]:
    """The BTF to check against and, when there is none, why."""
    target = path or VMLINUX_BTF
    try:
        return KernelTypes.from_file(target), None
    except FileNotFoundError:
        return None, f"{target} does not exist"
    except OSError as exc:
        return None, f"cannot read {target}: {os.strerror(exc.errno or errno.EIO)}"
    except Exception as exc:
        return None, f"{target} is not BTF: {exc}"
