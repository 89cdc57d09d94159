"""Kernel enums by name (program, attach and map types) and ELF section names -> program types.

Names are the kernel's enum names in lower case without their prefix: ``BPF_PROG_TYPE_SCHED_CLS``
is ``"sched_cls"``, ``BPF_TCX_INGRESS`` is ``"tcx_ingress"``, ``BPF_MAP_TYPE_PERCPU_HASH`` is
``"percpu_hash"``. The section table follows the conventions Go's cilium/ebpf understands, which
are a superset of what libbpf 1.x accepts: ``classifier/<anything>``, ``tc/<anything>``,
``xdp/<anything>``, ``socket/<anything>`` and ``tcx/ingress`` are all recognised here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATTACH_TYPES",
    "BPF_F_SLEEPABLE",
    "BPF_F_XDP_HAS_FRAGS",
    "MAP_TYPES",
    "PROG_TYPES",
    "SectionKind",
    "attach_type_name",
    "classify_section",
    "map_type_name",
    "prog_type_name",
]

_PROG_TYPE_ORDER = (
    "unspec socket_filter kprobe sched_cls sched_act tracepoint xdp perf_event cgroup_skb "
    "cgroup_sock lwt_in lwt_out lwt_xmit sock_ops sk_skb cgroup_device sk_msg raw_tracepoint "
    "cgroup_sock_addr lwt_seg6local lirc_mode2 sk_reuseport flow_dissector cgroup_sysctl "
    "raw_tracepoint_writable cgroup_sockopt tracing struct_ops ext lsm sk_lookup syscall netfilter"
).split()

_ATTACH_TYPE_ORDER = (
    "cgroup_inet_ingress cgroup_inet_egress cgroup_inet_sock_create cgroup_sock_ops "
    "sk_skb_stream_parser sk_skb_stream_verdict cgroup_device sk_msg_verdict cgroup_inet4_bind "
    "cgroup_inet6_bind cgroup_inet4_connect cgroup_inet6_connect cgroup_inet4_post_bind "
    "cgroup_inet6_post_bind cgroup_udp4_sendmsg cgroup_udp6_sendmsg lirc_mode2 flow_dissector "
    "cgroup_sysctl cgroup_udp4_recvmsg cgroup_udp6_recvmsg cgroup_getsockopt cgroup_setsockopt "
    "trace_raw_tp trace_fentry trace_fexit modify_return lsm_mac trace_iter "
    "cgroup_inet4_getpeername cgroup_inet6_getpeername cgroup_inet4_getsockname "
    "cgroup_inet6_getsockname xdp_devmap cgroup_inet_sock_release xdp_cpumap sk_lookup xdp "
    "sk_skb_verdict sk_reuseport_select sk_reuseport_select_or_migrate perf_event "
    "trace_kprobe_multi lsm_cgroup struct_ops netfilter tcx_ingress tcx_egress "
    "trace_uprobe_multi"
).split()

_MAP_TYPE_ORDER = (
    "unspec hash array prog_array perf_event_array percpu_hash percpu_array stack_trace "
    "cgroup_array lru_hash lru_percpu_hash lpm_trie array_of_maps hash_of_maps devmap sockmap "
    "cpumap xskmap sockhash cgroup_storage reuseport_sockarray percpu_cgroup_storage queue "
    "stack sk_storage devmap_hash struct_ops ringbuf inode_storage task_storage bloom_filter "
    "user_ringbuf cgrp_storage"
).split()

PROG_TYPES: dict[str, int] = {name: i for i, name in enumerate(_PROG_TYPE_ORDER)}
ATTACH_TYPES: dict[str, int] = {name: i for i, name in enumerate(_ATTACH_TYPE_ORDER)}
MAP_TYPES: dict[str, int] = {name: i for i, name in enumerate(_MAP_TYPE_ORDER)}

BPF_F_SLEEPABLE = 1 << 4
BPF_F_XDP_HAS_FRAGS = 1 << 5


def prog_type_name(value: int) -> str:
    """``3`` -> ``"sched_cls"``; unknown numbers render as ``"prog_type_<n>"``."""
    return _PROG_TYPE_ORDER[value] if 0 <= value < len(_PROG_TYPE_ORDER) else f"prog_type_{value}"


def attach_type_name(value: int) -> str:
    """``46`` -> ``"tcx_ingress"``; unknown numbers render as ``"attach_type_<n>"``."""
    if 0 <= value < len(_ATTACH_TYPE_ORDER):
        return _ATTACH_TYPE_ORDER[value]
    return f"attach_type_{value}"


def map_type_name(value: int) -> str:
    """``5`` -> ``"percpu_hash"``; unknown numbers render as ``"map_type_<n>"``."""
    return _MAP_TYPE_ORDER[value] if 0 <= value < len(_MAP_TYPE_ORDER) else f"map_type_{value}"


@dataclass(frozen=True)
class SectionKind:
    """What a program section name means: program type, expected attach type, load flags."""

    prog_type: str
    attach_type: str | None = None
    flags: int = 0


# Section prefix -> kind. A prefix matches the whole section name or the part before a '/';
# the longest matching prefix wins ("xdp/devmap" before "xdp").
_SECTIONS: dict[str, SectionKind] = {
    "socket": SectionKind("socket_filter"),
    "sk_reuseport/migrate": SectionKind("sk_reuseport", "sk_reuseport_select_or_migrate"),
    "sk_reuseport": SectionKind("sk_reuseport", "sk_reuseport_select"),
    "kprobe": SectionKind("kprobe"),
    "kretprobe": SectionKind("kprobe"),
    "uprobe": SectionKind("kprobe"),
    "uretprobe": SectionKind("kprobe"),
    "uprobe.s": SectionKind("kprobe", None, BPF_F_SLEEPABLE),
    "uretprobe.s": SectionKind("kprobe", None, BPF_F_SLEEPABLE),
    "kprobe.multi": SectionKind("kprobe", "trace_kprobe_multi"),
    "kretprobe.multi": SectionKind("kprobe", "trace_kprobe_multi"),
    "uprobe.multi": SectionKind("kprobe", "trace_uprobe_multi"),
    "uretprobe.multi": SectionKind("kprobe", "trace_uprobe_multi"),
    "ksyscall": SectionKind("kprobe"),
    "kretsyscall": SectionKind("kprobe"),
    "usdt": SectionKind("kprobe"),
    "tc": SectionKind("sched_cls"),
    "classifier": SectionKind("sched_cls"),
    "action": SectionKind("sched_act"),
    "tcx/ingress": SectionKind("sched_cls", "tcx_ingress"),
    "tcx/egress": SectionKind("sched_cls", "tcx_egress"),
    "tracepoint": SectionKind("tracepoint"),
    "tp": SectionKind("tracepoint"),
    "raw_tracepoint": SectionKind("raw_tracepoint"),
    "raw_tp": SectionKind("raw_tracepoint"),
    "raw_tracepoint.w": SectionKind("raw_tracepoint_writable"),
    "raw_tp.w": SectionKind("raw_tracepoint_writable"),
    "tp_btf": SectionKind("tracing", "trace_raw_tp"),
    "fentry": SectionKind("tracing", "trace_fentry"),
    "fentry.s": SectionKind("tracing", "trace_fentry", BPF_F_SLEEPABLE),
    "fmod_ret": SectionKind("tracing", "modify_return"),
    "fmod_ret.s": SectionKind("tracing", "modify_return", BPF_F_SLEEPABLE),
    "fexit": SectionKind("tracing", "trace_fexit"),
    "fexit.s": SectionKind("tracing", "trace_fexit", BPF_F_SLEEPABLE),
    "iter": SectionKind("tracing", "trace_iter"),
    "iter.s": SectionKind("tracing", "trace_iter", BPF_F_SLEEPABLE),
    "freplace": SectionKind("ext"),
    "lsm": SectionKind("lsm", "lsm_mac"),
    "lsm.s": SectionKind("lsm", "lsm_mac", BPF_F_SLEEPABLE),
    "lsm_cgroup": SectionKind("lsm", "lsm_cgroup"),
    "xdp": SectionKind("xdp", "xdp"),
    "xdp.frags": SectionKind("xdp", "xdp", BPF_F_XDP_HAS_FRAGS),
    "xdp/devmap": SectionKind("xdp", "xdp_devmap"),
    "xdp/cpumap": SectionKind("xdp", "xdp_cpumap"),
    "xdp.frags/devmap": SectionKind("xdp", "xdp_devmap", BPF_F_XDP_HAS_FRAGS),
    "xdp.frags/cpumap": SectionKind("xdp", "xdp_cpumap", BPF_F_XDP_HAS_FRAGS),
    "xdp_devmap": SectionKind("xdp", "xdp_devmap"),
    "xdp_cpumap": SectionKind("xdp", "xdp_cpumap"),
    "perf_event": SectionKind("perf_event"),
    "lwt_in": SectionKind("lwt_in"),
    "lwt_out": SectionKind("lwt_out"),
    "lwt_xmit": SectionKind("lwt_xmit"),
    "lwt_seg6local": SectionKind("lwt_seg6local"),
    "sockops": SectionKind("sock_ops", "cgroup_sock_ops"),
    "sk_skb/stream_parser": SectionKind("sk_skb", "sk_skb_stream_parser"),
    "sk_skb/stream_verdict": SectionKind("sk_skb", "sk_skb_stream_verdict"),
    "sk_skb": SectionKind("sk_skb"),
    "sk_msg": SectionKind("sk_msg", "sk_msg_verdict"),
    "lirc_mode2": SectionKind("lirc_mode2", "lirc_mode2"),
    "flow_dissector": SectionKind("flow_dissector", "flow_dissector"),
    "sk_lookup": SectionKind("sk_lookup", "sk_lookup"),
    "cgroup_skb/ingress": SectionKind("cgroup_skb", "cgroup_inet_ingress"),
    "cgroup_skb/egress": SectionKind("cgroup_skb", "cgroup_inet_egress"),
    "cgroup/skb": SectionKind("cgroup_skb"),
    "cgroup/sock": SectionKind("cgroup_sock", "cgroup_inet_sock_create"),
    "cgroup/sock_create": SectionKind("cgroup_sock", "cgroup_inet_sock_create"),
    "cgroup/sock_release": SectionKind("cgroup_sock", "cgroup_inet_sock_release"),
    "cgroup/post_bind4": SectionKind("cgroup_sock", "cgroup_inet4_post_bind"),
    "cgroup/post_bind6": SectionKind("cgroup_sock", "cgroup_inet6_post_bind"),
    "cgroup/bind4": SectionKind("cgroup_sock_addr", "cgroup_inet4_bind"),
    "cgroup/bind6": SectionKind("cgroup_sock_addr", "cgroup_inet6_bind"),
    "cgroup/connect4": SectionKind("cgroup_sock_addr", "cgroup_inet4_connect"),
    "cgroup/connect6": SectionKind("cgroup_sock_addr", "cgroup_inet6_connect"),
    "cgroup/sendmsg4": SectionKind("cgroup_sock_addr", "cgroup_udp4_sendmsg"),
    "cgroup/sendmsg6": SectionKind("cgroup_sock_addr", "cgroup_udp6_sendmsg"),
    "cgroup/recvmsg4": SectionKind("cgroup_sock_addr", "cgroup_udp4_recvmsg"),
    "cgroup/recvmsg6": SectionKind("cgroup_sock_addr", "cgroup_udp6_recvmsg"),
    "cgroup/getpeername4": SectionKind("cgroup_sock_addr", "cgroup_inet4_getpeername"),
    "cgroup/getpeername6": SectionKind("cgroup_sock_addr", "cgroup_inet6_getpeername"),
    "cgroup/getsockname4": SectionKind("cgroup_sock_addr", "cgroup_inet4_getsockname"),
    "cgroup/getsockname6": SectionKind("cgroup_sock_addr", "cgroup_inet6_getsockname"),
    "cgroup/sysctl": SectionKind("cgroup_sysctl", "cgroup_sysctl"),
    "cgroup/getsockopt": SectionKind("cgroup_sockopt", "cgroup_getsockopt"),
    "cgroup/setsockopt": SectionKind("cgroup_sockopt", "cgroup_setsockopt"),
    "cgroup/dev": SectionKind("cgroup_device", "cgroup_device"),
    "struct_ops": SectionKind("struct_ops"),
    "struct_ops.s": SectionKind("struct_ops", None, BPF_F_SLEEPABLE),
    "syscall": SectionKind("syscall"),
    "netfilter": SectionKind("netfilter", "netfilter"),
}

UNSPEC = SectionKind("unspec")


def classify_section(section: str) -> SectionKind:
    """The program type a section name implies; ``prog_type == "unspec"`` when unknown.

    >>> classify_section("classifier/ingress").prog_type
    'sched_cls'
    >>> classify_section("tcx/egress").attach_type
    'tcx_egress'
    """
    best: str | None = None
    for prefix in _SECTIONS:
        if (section == prefix or section.startswith(prefix + "/")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return _SECTIONS[best] if best is not None else UNSPEC
