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

KEY_DTYPE = np.dtype(
    [
        ("if_index", "<u4"),
        ("eth_protocol", "<u2"),
        ("direction", "u1"),
        ("proto", "u1"),
        ("src_mac", "u1", (6,)),
        ("dst_mac", "u1", (6,)),
        ("src_ip", "u1", (16,)),
        ("dst_ip", "u1", (16,)),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("pad", "u1", (2,)),
    ]
)
"""``struct fk_flow_key``: the identity of a flow (60 bytes)."""

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
    ]
)
"""``struct fk_flow_value``: per-CPU counters in the kernel map (monotonic times, 40 bytes)."""

RECORD_DTYPE = np.dtype([("key", KEY_DTYPE), ("pad", "<u4"), ("value", VALUE_DTYPE)])
"""``struct fk_flow_record``: a key with its value, the input of every accounter (104 bytes)."""

FLOW_DTYPE = np.dtype(
    [
        ("key", KEY_DTYPE),
        ("pad", "<u4"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("start_ns", "<u8"),
        ("end_ns", "<u8"),
        ("flags", "<u2"),
        ("dscp", "u1"),
        ("pad2", "u1"),
        ("sampling", "<u4"),
    ]
)
"""``struct fk_flow_out``: one exported flow, wall-clock times in unix ns (104 bytes)."""

assert KEY_DTYPE.itemsize == 60
assert VALUE_DTYPE.itemsize == 40
assert RECORD_DTYPE.itemsize == 104
assert FLOW_DTYPE.itemsize == 104

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


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow: who talked to whom on which interface, how much and when.

    Times are unix epoch nanoseconds. ``src_ip``/``dst_ip`` are ``ipaddress`` objects (IPv4 for
    IPv4 flows). ``interface`` is the interface name when the agent knows it, else ``""``.
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

    def to_dict(self) -> dict[str, Any]:
        """The NetObserv JSON object for this flow (see :func:`flow_to_json_dict`)."""
        return flow_to_json_dict(self)


def flow_to_json_dict(flow: Flow) -> dict[str, Any]:
    """Encode a flow with NetObserv's JSON keys.

    This is the one JSON encoding of flowkit: the stdout exporter, Kafka ``json`` encoding and the
    collector all use it.
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
    if flow.agent_ip is not None:
        out["AgentIP"] = str(flow.agent_ip)
    return out


class FlowBatch:
    """A batch of flows, stored as one numpy structured array of :data:`FLOW_DTYPE`.

    The array may be a view over memory owned by the C accounter: call :meth:`release` (or use
    the batch as a context manager) when done, and copy (:meth:`copy`) anything you keep longer.
    Exporters get batches that stay valid until every exporter has finished with them.

    Columns are cheap: ``batch.array["bytes"]``, ``batch.array["key"]["dst_port"]``.
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
            key["src_mac"] = np.frombuffer(f.src_mac, dtype="u1")
            key["dst_mac"] = np.frombuffer(f.dst_mac, dtype="u1")
            key["src_ip"] = np.frombuffer(ip_to_16(f.src_ip), dtype="u1")
            key["dst_ip"] = np.frombuffer(ip_to_16(f.dst_ip), dtype="u1")
            key["src_port"] = f.src_port
            key["dst_port"] = f.dst_port
            key["icmp_type"] = f.icmp_type
            key["icmp_code"] = f.icmp_code
            for name in ("packets", "bytes", "start_ns", "end_ns", "flags", "dscp", "sampling"):
                row[name] = getattr(f, name)
            if f.interface:
                names[f.if_index] = f.interface
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
        for (key, _pad, packets, nbytes, start, end, flags, dscp, _p2, sampling) in array.tolist():
            (if_index, etype, direction, proto, smac, dmac, sip, dip, sport, dport, itype, icode,
             _kp) = key
            yield Flow(
                if_index=if_index,
                interface=names.get(if_index, ""),
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
            )

    def to_dicts(self) -> list[dict[str, Any]]:
        """Every flow as a NetObserv JSON dict (the format of the stdout exporter)."""
        return [flow_to_json_dict(f) for f in self]

    # -- Arrow (pyarrow is the optional extra ``flowkit[arrow]``) ------------------------------
    def to_arrow(self) -> Any:
        """The flows as a ``pyarrow.RecordBatch`` (schema: :func:`flowkit.arrow.flow_schema`).

        The record batch owns its memory (it outlives :meth:`release`). Needs pyarrow
        (``pip install 'flowkit[arrow]'``).
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
    out["packets"] = value["packets"]
    out["bytes"] = value["bytes"]
    out["start_ns"] = value["first_ns"] + np.uint64(boot_offset_ns)
    out["end_ns"] = value["last_ns"] + np.uint64(boot_offset_ns)
    out["flags"] = value["flags"]
    out["dscp"] = value["dscp"]
    out["sampling"] = value["sampling"]
    return FlowBatch(out, interfaces)
