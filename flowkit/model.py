"""The flow data model: record layouts, :class:`Flow` and the columnar :class:`FlowBatch`.

The numpy dtypes below mirror ``csrc/flow.h`` byte for byte; the eBPF program, the C accounter
and the Python code all read and write the same memory layout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

INGRESS = 0
EGRESS = 1

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

FEATURE_DROPS = 0x01
"""``Flow.features`` bit: the flow carries packet-drop data (ENABLE_PKT_DROPS)."""
FEATURE_RTT = 0x02
"""``Flow.features`` bit: the flow carries a TCP round-trip time (ENABLE_RTT)."""
FEATURE_DNS = 0x04
"""``Flow.features`` bit: the flow carries a DNS record (ENABLE_DNS_TRACKING)."""

DNS_NAME_LEN = 32
"""Bytes of the queried DNS name kept per flow."""
MAX_DUPS = 6
"""Interfaces a flow can list (DEDUPER)."""
_FROM_FLOWS_INDEX = 0xFFFF_0000  # keys FlowBatch.from_flows makes up for interfaces named only

KEY_DTYPE = np.dtype(
    [
        ("src_ip", "u1", (16,)),
        ("dst_ip", "u1", (16,)),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("if_index", "<u4"),
        ("eth_protocol", "<u2"),
        ("direction", "u1"),
        ("proto", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("netns", "<u2"),
    ]
)
"""``struct fk_flow_key``: the identity of a flow (48 bytes)."""

VALUE_DTYPE = np.dtype(
    [
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("flags", "<u2"),
        ("dscp", "u1"),
        ("pad", "u1"),
        ("sampling", "<u4"),
        ("src_mac", "u1", (6,)),
        ("dst_mac", "u1", (6,)),
        ("pad2", "<u4"),
    ]
)
"""``struct fk_flow_value``: per-CPU counters in the kernel map (monotonic times, 56 bytes)."""

EXTRA_DTYPE = np.dtype(
    [
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("drop_bytes", "<u8"),
        ("drop_packets", "<u8"),
        ("drop_ns", "<u8"),
        ("drop_cause", "<u4"),
        ("drop_flags", "<u2"),
        ("drop_state", "u1"),
        ("features", "u1"),
        ("rtt_ns", "<u8"),
        ("dns_ns", "<u8"),
        ("dns_latency_ns", "<u8"),
        ("dns_id", "<u2"),
        ("dns_flags", "<u2"),
        ("dns_errno", "u1"),
        ("pad", "u1", (3,)),
        ("dns_name", "u1", (DNS_NAME_LEN,)),
    ]
)
"""``struct fk_flow_extra``: optional feature data of a flow (drops, RTT, DNS; 112 bytes)."""

EVENT_DTYPE = np.dtype([("key", KEY_DTYPE), ("value", VALUE_DTYPE)])
"""``struct fk_flow_event``: one packet in the kernel ring buffer (104 bytes)."""

RECORD_DTYPE = np.dtype([("key", KEY_DTYPE), ("value", VALUE_DTYPE), ("extra", EXTRA_DTYPE)])
"""``struct fk_flow_record``: a key with its value and feature data, the input of every
accounter (216 bytes)."""

FLOW_DTYPE = np.dtype(
    [
        ("key", KEY_DTYPE),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("start_ns", "<u8"),
        ("end_ns", "<u8"),
        ("flags", "<u2"),
        ("dscp", "u1"),
        ("features", "u1"),
        ("sampling", "<u4"),
        ("src_mac", "u1", (6,)),
        ("dst_mac", "u1", (6,)),
        ("drop_flags", "<u2"),
        ("drop_state", "u1"),
        ("dns_errno", "u1"),
        ("drop_bytes", "<u8"),
        ("drop_packets", "<u8"),
        ("drop_cause", "<u4"),
        ("dns_id", "<u2"),
        ("dns_flags", "<u2"),
        ("rtt_ns", "<u8"),
        ("dns_latency_ns", "<u8"),
        ("dns_name", "S32"),
        ("dup_if_index", "<u4", (MAX_DUPS,)),
        ("dup_netns", "<u2", (MAX_DUPS,)),
        ("dup_direction", "u1", (MAX_DUPS,)),
        ("dup_count", "u1"),
        ("pad", "u1", (5,)),
    ]
)
"""``struct fk_flow_out``: one exported flow, wall-clock times in unix ns (224 bytes).

Feature columns (``drop_*``, ``rtt_ns``, ``dns_*``) are zero unless ``features`` has the
feature's bit; ``dns_name`` is the queried name as dotted ASCII text."""

assert KEY_DTYPE.itemsize == 48
assert VALUE_DTYPE.itemsize == 56
assert EXTRA_DTYPE.itemsize == 112
assert EVENT_DTYPE.itemsize == 104
assert RECORD_DTYPE.itemsize == 216
assert FLOW_DTYPE.itemsize == 224

FlowArray = npt.NDArray[np.void]


def mac_to_str(mac: bytes) -> str:
    """Format 6 bytes as ``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in mac)


def mac_to_int(mac: bytes) -> int:
    """A MAC address as the 48-bit integer NetObserv's protobuf uses."""
    return int.from_bytes(mac, "big")


def ip_from_16(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode a 16-byte address; IPv4-mapped addresses come back as IPv4."""
    if raw[:12] == _V4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(raw[12:])
    return ipaddress.IPv6Address(raw)


def ip_to_16(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """Encode an address as 16 bytes, IPv4 as IPv4-mapped IPv6."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + ip.packed
    return ip.packed


TCP_STATE_NAMES: Mapping[int, str] = {
    1: "TCP_ESTABLISHED",
    2: "TCP_SYN_SENT",
    3: "TCP_SYN_RECV",
    4: "TCP_FIN_WAIT1",
    5: "TCP_FIN_WAIT2",
    6: "TCP_TIME_WAIT",
    7: "TCP_CLOSE",
    8: "TCP_CLOSE_WAIT",
    9: "TCP_LAST_ACK",
    10: "TCP_LISTEN",
    11: "TCP_CLOSING",
    12: "TCP_NEW_SYN_RECV",
    13: "TCP_BOUND_INACTIVE",
}
"""Names of the kernel's TCP states (``include/net/tcp_states.h``, a stable numbering)."""

DNS_RCODE_NAMES: tuple[str, ...] = (
    "NoError", "FormErr", "ServFail", "NXDomain", "NotImp", "Refused", "YXDomain", "YXRRSet",
    "NXRRSet", "NotAuth", "NotZone", "DSOTYPENI", "Unassigned", "Unassigned", "Unassigned",
    "Unassigned",
)  # fmt: skip
"""Names of the 4-bit DNS response codes (IANA "DNS RCODEs"), indexed by code."""


def tcp_state_name(state: int) -> str:
    """``TCP_ESTABLISHED`` for 1 and so on; ``TCP_INVALID_STATE`` for 0 (no socket) or unknown."""
    return TCP_STATE_NAMES.get(state, "TCP_INVALID_STATE")


def dns_rcode_name(dns_flags: int) -> str:
    """The response code name of a DNS header's flags word (its low 4 bits)."""
    return DNS_RCODE_NAMES[dns_flags & 0xF]


def drop_reason_name(reason: int) -> str:
    """The kernel's name of an ``enum skb_drop_reason`` value, read from this kernel's BTF.

    ``SKB_DROP_REASON_NETFILTER_DROP`` for instance; the decimal value when the kernel has no
    such name (or no BTF).
    """
    from flowkit.kernel_names import drop_reason_names

    return drop_reason_names().get(reason, str(reason))


def dns_name_from_wire(wire: bytes) -> bytes:
    """The dotted text of a DNS name in wire format (length-prefixed labels), as ASCII bytes.

    Stops at the root label, a compression pointer or the end of ``wire`` (a truncated name
    keeps its partial last label). Bytes outside printable ASCII become ``?``.
    """
    out = bytearray()
    i = 0
    while i < len(wire):
        length = wire[i]
        if length == 0 or length & 0xC0:
            break
        if out:
            out.append(0x2E)
        label = wire[i + 1 : i + 1 + length]
        out += bytes(b if 0x20 <= b < 0x7F else 0x3F for b in label)
        i += 1 + length
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: who talked to whom on which interface, how much and when.

    Times are unix epoch nanoseconds. ``src_ip``/``dst_ip`` are ``ipaddress`` objects (IPv4 for
    IPv4 flows). ``interface`` is the interface name when the agent knows it, else ``""``.

    Optional feature data: ``features`` has :data:`FEATURE_DROPS`, :data:`FEATURE_RTT` and
    :data:`FEATURE_DNS` bits for the data the flow carries; the other fields of a feature are 0
    (or ``""``) without its bit. ``drop_*``: bytes and packets of the flow dropped by the kernel,
    and the TCP flags, TCP state (``enum`` value of ``include/net/tcp_states.h``) and
    ``skb_drop_reason`` value of the latest drop. ``rtt_ns``: the largest smoothed TCP RTT seen.
    ``dns_*``: id, flags, response latency, tracking errno and queried name of the latest DNS
    message of the flow.

    ``netns``: the network namespace of the interface (0: the agent's own; see
    NETWORK_NAMESPACES). ``interfaces`` / ``if_directions`` (DEDUPER=firstCome): every interface
    the flow was seen on and its direction there, this flow's own first; empty otherwise.
    """

    if_index: int
    interface: str
    direction: int
    eth_protocol: int
    src_mac: bytes
    dst_mac: bytes
    src_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    src_port: int
    dst_port: int
    proto: int
    icmp_type: int
    icmp_code: int
    packets: int
    bytes: int
    start_ns: int
    end_ns: int
    flags: int
    dscp: int
    sampling: int
    agent_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    features: int = 0
    drop_bytes: int = 0
    drop_packets: int = 0
    drop_flags: int = 0
    drop_state: int = 0
    drop_cause: int = 0
    rtt_ns: int = 0
    dns_id: int = 0
    dns_flags: int = 0
    dns_latency_ns: int = 0
    dns_errno: int = 0
    dns_name: str = ""
    netns: int = 0
    interfaces: tuple[str, ...] = ()
    if_directions: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The NetObserv JSON object for this flow (see :func:`flow_to_json_dict`)."""
        return flow_to_json_dict(self)


def flow_to_json_dict(flow: Flow) -> dict[str, Any]:
    """Encode a flow with NetObserv's JSON keys.

    This is the one JSON encoding of flowkit: the stdout exporter, Kafka ``json`` encoding and the
    collector all use it. The keys of an optional feature appear only on flows that carry its
    data (``flow.features``), after ``Sampling`` and before ``AgentIP``.
    """
    out: dict[str, Any] = {
        "Etype": flow.eth_protocol,
        "FlowDirection": flow.direction,
        "SrcMac": mac_to_str(flow.src_mac),
        "DstMac": mac_to_str(flow.dst_mac),
        "SrcAddr": str(flow.src_ip),
        "DstAddr": str(flow.dst_ip),
        "SrcPort": flow.src_port,
        "DstPort": flow.dst_port,
        "Proto": flow.proto,
        "Bytes": flow.bytes,
        "Packets": flow.packets,
        "Interface": flow.interface,
        "TimeFlowStart": flow.start_ns // 1_000_000_000,
        "TimeFlowEnd": flow.end_ns // 1_000_000_000,
        "TimeFlowStartMs": flow.start_ns // 1_000_000,
        "TimeFlowEndMs": flow.end_ns // 1_000_000,
        "Flags": flow.flags,
        "IcmpType": flow.icmp_type,
        "IcmpCode": flow.icmp_code,
        "Dscp": flow.dscp,
        "Sampling": flow.sampling,
    }
    features = flow.features
    if features & FEATURE_DROPS:
        out["PktDropBytes"] = flow.drop_bytes
        out["PktDropPackets"] = flow.drop_packets
        out["PktDropLatestFlags"] = flow.drop_flags
        out["PktDropLatestState"] = tcp_state_name(flow.drop_state)
        out["PktDropLatestDropCause"] = drop_reason_name(flow.drop_cause)
    if features & FEATURE_RTT:
        out["TimeFlowRttNs"] = flow.rtt_ns
    if features & FEATURE_DNS:
        out["DnsId"] = flow.dns_id
        out["DnsFlags"] = flow.dns_flags
        out["DnsFlagsResponseCode"] = dns_rcode_name(flow.dns_flags)
        out["DnsLatencyMs"] = flow.dns_latency_ns // 1_000_000
        out["DnsErrno"] = flow.dns_errno
        out["DnsName"] = flow.dns_name
    if flow.interfaces:
        out["Interfaces"] = list(flow.interfaces)
        out["IfDirections"] = list(flow.if_directions)
    if flow.agent_ip is not None:
        out["AgentIP"] = str(flow.agent_ip)
    return out


def interface_key(if_index: int, netns: int = 0) -> int:
    """The key of :attr:`FlowBatch.interfaces` for an interface: ``netns << 32 | if_index``."""
    return (netns << 32) | if_index


def dup_entries(
    dup_if_index: Any, dup_netns: Any, dup_direction: Any, dup_count: int
) -> list[tuple[int, int]]:
    """(interface key, direction) of each interface listed in a flow record (at most 6).

    The arguments are a record's ``dup_*`` fields (sequences of 6, e.g. from ``tolist()``).
    """
    return [
        ((int(dup_netns[j]) << 32) | int(dup_if_index[j]), int(dup_direction[j]))
        for j in range(min(dup_count, MAX_DUPS))
    ]


_FLOW_COLUMNS = (
    "packets", "bytes", "start_ns", "end_ns", "flags", "dscp", "sampling", "features",
    "drop_bytes", "drop_packets", "drop_flags", "drop_state", "drop_cause", "rtt_ns", "dns_id",
    "dns_flags", "dns_latency_ns", "dns_errno",
)  # fmt: skip


class FlowBatch:
    """A batch of flows, stored as one numpy structured array of :data:`FLOW_DTYPE`.

    The array may be a view over memory owned by the C accounter: call :meth:`release` (or use
    the batch as a context manager) when done, and copy (:meth:`copy`) anything you keep longer.
    Exporters get batches that stay valid until every exporter has finished with them.

    Columns are cheap: ``batch.array["bytes"]``, ``batch.array["key"]["dst_port"]``.

    ``interfaces`` names interfaces by :func:`interface_key` (``netns << 32 | if_index``: the
    plain index for the agent's own namespace).
    """

    __slots__ = ("_array", "_release", "agent_ip", "interfaces")

    def __init__(
        self,
        array: FlowArray,
        interfaces: Mapping[int, str] | None = None,
        agent_ip: str | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        if array.dtype != FLOW_DTYPE:
            raise TypeError(f"FlowBatch needs an array of FLOW_DTYPE, got {array.dtype}")
        self._array: FlowArray | None = array
        self.interfaces: Mapping[int, str] = interfaces or {}
        self.agent_ip = agent_ip
        self._release = release

    @classmethod
    def empty(cls) -> FlowBatch:
        """A batch with no flows."""
        return cls(np.zeros(0, dtype=FLOW_DTYPE))

    @classmethod
    def from_flows(cls, flows: list[Flow], agent_ip: str | None = None) -> FlowBatch:
        """Build a batch from :class:`Flow` objects (handy in tests and custom tracers)."""
        array = np.zeros(len(flows), dtype=FLOW_DTYPE)
        names: dict[int, str] = {}
        for i, f in enumerate(flows):
            row = array[i]
            key = row["key"]
            key["if_index"] = f.if_index
            key["eth_protocol"] = f.eth_protocol
            key["direction"] = f.direction
            key["proto"] = f.proto
            key["src_ip"] = np.frombuffer(ip_to_16(f.src_ip), dtype="u1")
            key["dst_ip"] = np.frombuffer(ip_to_16(f.dst_ip), dtype="u1")
            key["src_port"] = f.src_port
            key["dst_port"] = f.dst_port
            key["icmp_type"] = f.icmp_type
            key["icmp_code"] = f.icmp_code
            key["netns"] = f.netns
            row["src_mac"] = np.frombuffer(f.src_mac, dtype="u1")
            row["dst_mac"] = np.frombuffer(f.dst_mac, dtype="u1")
            for name in _FLOW_COLUMNS:
                row[name] = getattr(f, name)
            row["dns_name"] = f.dns_name.encode("ascii", "replace")[:DNS_NAME_LEN]
            if f.interface:
                names[interface_key(f.if_index, f.netns)] = f.interface
            for j, (name, direction) in enumerate(
                list(zip(f.interfaces, f.if_directions, strict=True))[:MAX_DUPS]
            ):
                if name == f.interface:
                    index, netns = f.if_index, f.netns
                else:  # an interface known by name only: give it a key of its own
                    index, netns = _FROM_FLOWS_INDEX + len(names), 0
                    names[interface_key(index, netns)] = name
                row["dup_if_index"][j] = index
                row["dup_netns"][j] = netns
                row["dup_direction"][j] = direction
                row["dup_count"] = j + 1
        return cls(array, names, agent_ip)

    @property
    def array(self) -> FlowArray:
        """The structured array (raises after :meth:`release`)."""
        if self._array is None:
            raise ValueError("this FlowBatch was released")
        return self._array

    def __len__(self) -> int:
        return 0 if self._array is None else len(self._array)

    def __iter__(self) -> Iterator[Flow]:
        array = self.array
        names = self.interfaces
        agent = ipaddress.ip_address(self.agent_ip) if self.agent_ip else None
        # tolist() converts the whole batch in C; far cheaper than indexing row by row.
        for row in array.tolist():
            (key, packets, nbytes, start, end, flags, dscp, features, sampling, smac, dmac,
             drop_flags, drop_state, dns_errno, drop_bytes, drop_packets, drop_cause, dns_id,
             dns_flags, rtt_ns, dns_latency_ns, dns_name, dup_index, dup_netns, dup_dir,
             dup_count, _pad) = row
            (sip, dip, sport, dport, if_index, etype, direction, proto, itype, icode, ns) = key
            dups = dup_entries(dup_index, dup_netns, dup_dir, dup_count) if dup_count else ()
            yield Flow(
                if_index=if_index,
                interface=names.get((ns << 32) | if_index, ""),
                direction=direction,
                eth_protocol=etype,
                src_mac=bytes(smac),
                dst_mac=bytes(dmac),
                src_ip=ip_from_16(bytes(sip)),
                dst_ip=ip_from_16(bytes(dip)),
                src_port=sport,
                dst_port=dport,
                proto=proto,
                icmp_type=itype,
                icmp_code=icode,
                packets=packets,
                bytes=nbytes,
                start_ns=start,
                end_ns=end,
                flags=flags,
                dscp=dscp,
                sampling=sampling,
                agent_ip=agent,
                features=features,
                drop_bytes=drop_bytes,
                drop_packets=drop_packets,
                drop_flags=drop_flags,
                drop_state=drop_state,
                drop_cause=drop_cause,
                rtt_ns=rtt_ns,
                dns_id=dns_id,
                dns_flags=dns_flags,
                dns_latency_ns=dns_latency_ns,
                dns_errno=dns_errno,
                dns_name=dns_name.decode("ascii", "replace"),
                netns=ns,
                interfaces=tuple(names.get(k, "") for k, _d in dups),
                if_directions=tuple(d for _k, d in dups),
            )

    def to_dicts(self) -> list[dict[str, Any]]:
        """Every flow as a NetObserv JSON dict (the format of the stdout exporter)."""
        return [flow_to_json_dict(f) for f in self]

    # -- Arrow (pyarrow is the optional extra ``flowkit-ebpf[arrow]``) -------------------------
    def to_arrow(self) -> Any:
        """The flows as a ``pyarrow.RecordBatch`` (schema: :func:`flowkit.arrow.flow_schema`).

        The record batch owns its memory (it outlives :meth:`release`). Needs pyarrow
        (``pip install 'flowkit-ebpf[arrow]'``).
        """
        from flowkit.arrow import to_arrow

        return to_arrow(self)

    def to_pandas(self) -> Any:
        """The flows as a ``pandas.DataFrame`` (through :meth:`to_arrow`): timestamps are
        timezone-aware UTC, names are categoricals, addresses are 16-byte ``bytes``."""
        return self.to_arrow().to_pandas()

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]:
        """Arrow PyCapsule interface: the batch as an Arrow C struct array and its schema."""
        return self.to_arrow().__arrow_c_array__(requested_schema)  # type: ignore[no-any-return]

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """Arrow PyCapsule interface: the batch as an Arrow C stream of one record batch."""
        from flowkit.arrow import require_pyarrow

        pa = require_pyarrow("FlowBatch.__arrow_c_stream__")
        table = pa.Table.from_batches([self.to_arrow()])
        return table.__arrow_c_stream__(requested_schema)

    def copy(self) -> FlowBatch:
        """A batch that owns its memory (safe to keep after the original is released)."""
        return FlowBatch(self.array.copy(), dict(self.interfaces), self.agent_ip)

    def release(self) -> None:
        """Give the memory back to its owner. Idempotent."""
        self._array = None
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> FlowBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FlowBatch({len(self)} flows)"


def records_to_flows(
    records: FlowArray, boot_offset_ns: int, interfaces: Mapping[int, str] | None = None
) -> FlowBatch:
    """Convert accounter records (:data:`RECORD_DTYPE`, monotonic times) to a FlowBatch.

    ``boot_offset_ns`` is ``time.time_ns() - time.monotonic_ns()`` (CLOCK_MONOTONIC is what
    ``bpf_ktime_get_ns`` returns).
    """
    out = np.zeros(len(records), dtype=FLOW_DTYPE)
    out["key"] = records["key"]
    value = records["value"]
    extra = records["extra"]
    offset = np.uint64(boot_offset_ns)
    # The flow's times span its packets and its feature events (a flow known only from a drop
    # has no packets); 0 means "none" on both sides.
    first = value["first_ns"]
    extra_first = extra["first_ns"]
    use_extra = (extra_first != 0) & ((first == 0) | (extra_first < first))
    out["start_ns"] = np.where(use_extra, extra_first, first) + offset
    out["end_ns"] = np.maximum(value["last_ns"], extra["last_ns"]) + offset
    out["packets"] = value["packets"]
    out["bytes"] = value["bytes"]
    out["flags"] = value["flags"]
    out["dscp"] = value["dscp"]
    out["sampling"] = value["sampling"]
    out["src_mac"] = value["src_mac"]
    out["dst_mac"] = value["dst_mac"]
    for name in ("features", "drop_bytes", "drop_packets", "drop_flags", "drop_state",
                 "drop_cause", "rtt_ns", "dns_id", "dns_flags", "dns_latency_ns", "dns_errno"):
        out[name] = extra[name]
    for i in np.flatnonzero(extra["features"] & FEATURE_DNS):
        out["dns_name"][i] = dns_name_from_wire(bytes(extra["dns_name"][i]))
    return FlowBatch(out, interfaces)
