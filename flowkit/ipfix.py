"""IPFIX (RFC 7011) encoding of flow batches: templates, data records and messages.

flowkit describes its flows with two templates, one per address family, made of IANA
information elements (RFC 7012 and the IANA registry):

* :data:`TEMPLATE_V4` (template id ``base``) for flows whose addresses are both IPv4;
* :data:`TEMPLATE_V6` (template id ``base + 1``) for every other flow.

Both end with ``exporterIPv4Address`` (130) or ``exporterIPv6Address`` (131) when the agent's
address is known, and with ``interfaceName`` (82, variable length). :func:`encode_messages`
writes whole messages in C (``csrc/native/ipfix.c``), filling each up to ``max_message`` bytes;
:func:`reference_messages` is the same encoding in Python, the specification the C code is
tested against byte for byte (``tests/unit/test_ipfix.py``).

Sequence numbers follow RFC 7011 section 3.1: the sequence number of a message is the number of
data records sent in the session before it (modulo 2**32); a template-only message carries the
current value and does not advance it.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from flowkit.model import DNS_NAME_LEN, FlowBatch, ip_to_16
from flowkit.native import NativeError
from flowkit.native import encode as native_encode

__all__ = [
    "ENTERPRISE_ELEMENTS",
    "HEADER_LENGTH",
    "SET_HEADER_LENGTH",
    "TEMPLATE_V4",
    "TEMPLATE_V6",
    "Element",
    "IpfixMessage",
    "IpfixParams",
    "encode_messages",
    "max_record_length",
    "reference_messages",
    "reference_template_message",
    "template_message",
]

VERSION = 10
HEADER_LENGTH = 16
SET_HEADER_LENGTH = 4
TEMPLATE_SET_ID = 2
VARIABLE_LENGTH = 0xFFFF
MAX_MESSAGE = 0xFFFF
MAX_INTERFACE_NAME = 15
"""Longest Linux interface name (IFNAMSIZ - 1); the MTU check assumes it."""

_MAPPED = bytes(10) + b"\xff\xff"
# Interface names are keyed by netns << 32 | if_index (netns is 16 bits, 0 = the agent's own).
_MAX_NAME_KEY = 0xFFFF << 32 | 0xFFFF_FFFF


class Element(NamedTuple):
    """One information element of a template: id, name, encoded length in bytes, and whether it
    is one of flowkit's enterprise-specific elements (sent with the configured PEN)."""

    id: int
    name: str
    length: int
    enterprise: bool = False


_HEAD = (
    Element(152, "flowStartMilliseconds", 8),
    Element(153, "flowEndMilliseconds", 8),
    Element(1, "octetDeltaCount", 8),
    Element(2, "packetDeltaCount", 8),
)
_MID = (
    Element(7, "sourceTransportPort", 2),
    Element(11, "destinationTransportPort", 2),
    Element(4, "protocolIdentifier", 1),
    Element(6, "tcpControlBits", 2),
)
_TAIL = (
    Element(61, "flowDirection", 1),
    Element(195, "ipDiffServCodePoint", 1),
    Element(5, "ipClassOfService", 1),
    Element(56, "sourceMacAddress", 6),
    Element(80, "destinationMacAddress", 6),
    Element(256, "ethernetType", 2),
    Element(10, "ingressInterface", 4),
    Element(14, "egressInterface", 4),
    Element(34, "samplingInterval", 4),
    Element(305, "samplingPacketInterval", 4),
)

TEMPLATE_V4: tuple[Element, ...] = (
    *_HEAD,
    Element(8, "sourceIPv4Address", 4),
    Element(12, "destinationIPv4Address", 4),
    *_MID,
    Element(32, "icmpTypeCodeIPv4", 2),
    Element(176, "icmpTypeIPv4", 1),
    Element(177, "icmpCodeIPv4", 1),
    *_TAIL,
)
"""The fixed elements of the IPv4 template, in order (the exporter address and
``interfaceName`` follow)."""

TEMPLATE_V6: tuple[Element, ...] = (
    *_HEAD,
    Element(27, "sourceIPv6Address", 16),
    Element(28, "destinationIPv6Address", 16),
    *_MID,
    Element(139, "icmpTypeCodeIPv6", 2),
    Element(178, "icmpTypeIPv6", 1),
    Element(179, "icmpCodeIPv6", 1),
    *_TAIL,
)
"""The fixed elements of the IPv6 template, in order."""

ENTERPRISE_ELEMENTS: tuple[Element, ...] = (
    Element(1, "flowkitFeatures", 1, True),
    Element(2, "flowkitTcpFlags", 2, True),
    Element(10, "pktDropBytes", 8, True),
    Element(11, "pktDropPackets", 8, True),
    Element(12, "pktDropLatestFlags", 2, True),
    Element(13, "pktDropLatestState", 1, True),
    Element(14, "pktDropLatestDropCause", 4, True),
    Element(20, "flowRttNanoseconds", 8, True),
    Element(30, "dnsId", 2, True),
    Element(31, "dnsFlags", 2, True),
    Element(32, "dnsLatencyNanoseconds", 8, True),
    Element(33, "dnsErrno", 1, True),
    Element(34, "dnsName", VARIABLE_LENGTH, True),
)
"""flowkit's enterprise-specific elements (sent when ``IpfixParams.enterprise`` is a PEN), after
the exporter address and before ``interfaceName``. Values are 0 (dnsName empty) unless
``flowkitFeatures`` has the feature's bit (1 drops, 2 RTT, 4 DNS)."""
_ENTERPRISE_TYPES = {
    "flowkitFeatures": "unsigned8",
    "flowkitTcpFlags": "unsigned16",
    "pktDropBytes": "unsigned64",
    "pktDropPackets": "unsigned64",
    "pktDropLatestFlags": "unsigned16",
    "pktDropLatestState": "unsigned8",
    "pktDropLatestDropCause": "unsigned32",
    "flowRttNanoseconds": "unsigned64",
    "dnsId": "unsigned16",
    "dnsFlags": "unsigned16",
    "dnsLatencyNanoseconds": "unsigned64",
    "dnsErrno": "unsigned8",
    "dnsName": "string",
}


def enterprise_iespecs(pen: int) -> list[str]:
    """flowkit's enterprise elements as IESpecs, ``name(pen/id)<type>[length]`` (the notation
    of RFC 7013 and of collectors' information-element files), for a collector to load."""
    return [f"{e.name}({pen}/{e.id})<{_ENTERPRISE_TYPES[e.name]}>[{e.length}]"
            for e in ENTERPRISE_ELEMENTS]


_ENTERPRISE_FIXED = sum(e.length for e in ENTERPRISE_ELEMENTS if e.length != VARIABLE_LENGTH)

EXPORTER_V4 = Element(130, "exporterIPv4Address", 4)
EXPORTER_V6 = Element(131, "exporterIPv6Address", 16)
INTERFACE_NAME = Element(82, "interfaceName", VARIABLE_LENGTH)

_FIXED_V4 = sum(e.length for e in TEMPLATE_V4)
_FIXED_V6 = sum(e.length for e in TEMPLATE_V6)


@dataclass(frozen=True)
class IpfixParams:
    """What the messages of one exporter carry besides flows.

    ``exporter_ip`` is the agent's address (``exporterIPv4Address``/``exporterIPv6Address`` in
    every record) or ``None``; ``template_base`` is the IPv4 template id (IPv6 is the next).
    """

    domain_id: int = 0
    max_message: int = 1472
    template_base: int = 256
    exporter_ip: str | None = None
    enterprise: int = 0
    """Private Enterprise Number of flowkit's enterprise elements; 0: they are not sent."""

    def __post_init__(self) -> None:
        if not 0 <= self.domain_id <= 0xFFFF_FFFF:
            raise ValueError("observation domain id must be within 0..4294967295")
        if not HEADER_LENGTH + SET_HEADER_LENGTH < self.max_message <= MAX_MESSAGE:
            raise ValueError(f"IPFIX message size must be within 21..{MAX_MESSAGE} bytes")
        if not 256 <= self.template_base <= 0xFFFE:
            raise ValueError("template ids must be within 256..65535")
        if not 0 <= self.enterprise <= 0xFFFF_FFFF:
            raise ValueError("a Private Enterprise Number is within 0..4294967295")

    @property
    def exporter_kind(self) -> int:
        """0 without an exporter address, 4 or 6 by its family."""
        if not self.exporter_ip:
            return 0
        return ipaddress.ip_address(self.exporter_ip).version

    def templates(self) -> tuple[tuple[Element, ...], tuple[Element, ...]]:
        """The complete IPv4 and IPv6 templates (exporter address and interface name added)."""
        extra: tuple[Element, ...] = ()
        if self.exporter_kind == 4:
            extra = (EXPORTER_V4,)
        elif self.exporter_kind == 6:
            extra = (EXPORTER_V6,)
        if self.enterprise:
            extra = (*extra, *ENTERPRISE_ELEMENTS)
        return (*TEMPLATE_V4, *extra, INTERFACE_NAME), (*TEMPLATE_V6, *extra, INTERFACE_NAME)


def max_record_length(params: IpfixParams, name_length: int = MAX_INTERFACE_NAME) -> int:
    """Longest data record (IPv6, with an interface name of ``name_length`` bytes)."""
    exporter = {0: 0, 4: 4, 6: 16}[params.exporter_kind]
    enterprise = _ENTERPRISE_FIXED + 1 + DNS_NAME_LEN if params.enterprise else 0
    return _FIXED_V6 + exporter + enterprise + _varlen(name_length)


def _varlen(length: int) -> int:
    return 1 + length if length < 255 else 3 + length


class IpfixMessage(NamedTuple):
    """One encoded message and the number of data records in it."""

    data: bytes
    records: int


# -- C encoder --------------------------------------------------------------------------------

def _c_params(params: IpfixParams, export_time: int, sequence: int) -> native_encode.IpfixParams:
    return native_encode.IpfixParams(
        export_time=export_time,
        sequence=sequence,
        domain_id=params.domain_id,
        max_message=params.max_message,
        template_base=params.template_base,
        exporter_kind=params.exporter_kind,
        enterprise=params.enterprise,
        exporter_ip16=(
            ip_to_16(ipaddress.ip_address(params.exporter_ip)) if params.exporter_ip else None
        ),
    )


def _names_table(interfaces: Mapping[int, str]) -> native_encode.IpfixNames:
    indexes: list[int] = []
    names: list[bytes] = []
    for key, name in interfaces.items():
        if not name or not 0 <= key <= _MAX_NAME_KEY:
            continue
        indexes.append(key)
        # interfaceName is a UTF-8 string; a name that is not valid UTF-8 is sent repaired.
        names.append(name.encode("utf-8", "replace")[:0xFFFF])
    index_array = np.array(indexes, dtype=np.uint64)
    offsets = np.zeros(len(names) + 1, dtype=np.uint64)
    np.cumsum([len(n) for n in names], out=offsets[1:])
    blob = b"".join(names)
    return native_encode.IpfixNames(index_array, offsets, blob)


def encode_messages(
    batch: FlowBatch,
    params: IpfixParams,
    *,
    export_time: int,
    sequence: int,
    start: int = 0,
    stop: int | None = None,
) -> list[IpfixMessage]:
    """The flows ``batch[start:stop]`` as data messages of at most ``params.max_message`` bytes.

    The first message has sequence number ``sequence``; each next one adds the records of the
    one before. Raises ``ValueError`` when a single record does not fit in a message.
    """
    array = np.ascontiguousarray(batch.array[start:stop])
    count = len(array)
    if count == 0:
        return []
    table = _names_table(batch.interfaces)
    c_params = _c_params(params, export_time, sequence)
    ends = np.empty(count, dtype=np.uint64)
    records = np.empty(count, dtype=np.uint64)
    try:
        data, n_messages = table.ipfix_encode(array, c_params, ends, records)
    except NativeError as exc:
        if exc.errno != errno.EMSGSIZE:
            raise
        raise ValueError(
            f"an IPFIX record of this batch does not fit in a message of {params.max_message} "
            "bytes"
        ) from None
    result: list[IpfixMessage] = []
    begin = 0
    for end, n in zip(ends[:n_messages].tolist(), records[:n_messages].tolist(), strict=True):
        result.append(IpfixMessage(data[begin:end], n))
        begin = end
    return result


def template_message(params: IpfixParams, *, export_time: int, sequence: int) -> bytes:
    """A message holding only the template set (both templates)."""
    return native_encode.ipfix_template_message(_c_params(params, export_time, sequence))


# -- Python reference -------------------------------------------------------------------------


def _header(length: int, export_time: int, sequence: int, domain_id: int) -> bytes:
    return struct.pack(
        "!HHIII", VERSION, length, export_time & 0xFFFF_FFFF, sequence & 0xFFFF_FFFF, domain_id
    )


def reference_template_message(params: IpfixParams, *, export_time: int, sequence: int) -> bytes:
    """:func:`template_message` computed in Python (the specification)."""
    body = b""
    for template_id, elements in enumerate(params.templates(), start=params.template_base):
        body += struct.pack("!HH", template_id, len(elements))
        body += b"".join(
            struct.pack("!HHI", 0x8000 | e.id, e.length, params.enterprise)
            if e.enterprise
            else struct.pack("!HH", e.id, e.length)
            for e in elements
        )
    template_set = struct.pack("!HH", TEMPLATE_SET_ID, SET_HEADER_LENGTH + len(body)) + body
    length = HEADER_LENGTH + len(template_set)
    return _header(length, export_time, sequence, params.domain_id) + template_set


def _reference_record(
    row: Any, names: Mapping[int, str], params: IpfixParams
) -> tuple[bool, bytes]:
    key = row["key"]
    src, dst = bytes(key["src_ip"]), bytes(key["dst_ip"])
    v4 = src[:12] == _MAPPED and dst[:12] == _MAPPED
    direction = int(key["direction"])
    if_index = int(key["if_index"])
    icmp_type, icmp_code = int(key["icmp_type"]), int(key["icmp_code"])
    sampling = int(row["sampling"])
    out = struct.pack(
        "!QQQQ",
        int(row["start_ns"]) // 1_000_000,
        int(row["end_ns"]) // 1_000_000,
        int(row["bytes"]),
        int(row["packets"]),
    )
    out += src[12:] + dst[12:] if v4 else src + dst
    out += struct.pack(
        "!HHBHHBBBBB",
        int(key["src_port"]),
        int(key["dst_port"]),
        int(key["proto"]),
        int(row["flags"]) & 0xFF,
        icmp_type << 8 | icmp_code,
        icmp_type,
        icmp_code,
        direction,
        int(row["dscp"]),
        (int(row["dscp"]) << 2) & 0xFF,
    )
    out += bytes(row["src_mac"]) + bytes(row["dst_mac"])
    out += struct.pack(
        "!HIIII",
        int(key["eth_protocol"]),
        if_index if direction == 0 else 0,
        0 if direction == 0 else if_index,
        sampling,
        sampling,
    )
    if params.exporter_ip:
        address = ipaddress.ip_address(params.exporter_ip)
        out += address.packed
    if params.enterprise:
        dns_name = bytes(row["dns_name"]).split(b"\0", 1)[0][:DNS_NAME_LEN]
        out += struct.pack(
            "!BHQQHBIQHHQB",
            int(row["features"]),
            int(row["flags"]),
            int(row["drop_bytes"]),
            int(row["drop_packets"]),
            int(row["drop_flags"]),
            int(row["drop_state"]),
            int(row["drop_cause"]),
            int(row["rtt_ns"]),
            int(row["dns_id"]),
            int(row["dns_flags"]),
            int(row["dns_latency_ns"]),
            int(row["dns_errno"]),
        )
        out += bytes([len(dns_name)]) + dns_name
    name = names.get(int(key["netns"]) << 32 | if_index, "")
    raw = name.encode("utf-8", "replace")[:0xFFFF] if name else b""
    out += bytes([len(raw)]) if len(raw) < 255 else b"\xff" + struct.pack("!H", len(raw))
    return v4, out + raw


def reference_messages(
    batch: FlowBatch,
    params: IpfixParams,
    *,
    export_time: int,
    sequence: int,
    start: int = 0,
    stop: int | None = None,
) -> list[IpfixMessage]:
    """:func:`encode_messages` computed in Python (the specification)."""
    records = [
        _reference_record(row, batch.interfaces, params) for row in batch.array[start:stop]
    ]
    return list(_pack(records, params, export_time, sequence))


def _pack(
    records: list[tuple[bool, bytes]], params: IpfixParams, export_time: int, sequence: int
) -> Iterator[IpfixMessage]:
    limit = params.max_message
    sets: list[tuple[bool, list[bytes]]] = []
    size = HEADER_LENGTH
    count = 0

    def close() -> IpfixMessage:
        body = b"".join(
            struct.pack(
                "!HH",
                params.template_base + (0 if v4 else 1),
                SET_HEADER_LENGTH + sum(len(r) for r in recs),
            )
            + b"".join(recs)
            for v4, recs in sets
        )
        header = _header(HEADER_LENGTH + len(body), export_time, sequence, params.domain_id)
        return IpfixMessage(header + body, count)

    for v4, record in records:
        if HEADER_LENGTH + SET_HEADER_LENGTH + len(record) > limit:
            raise ValueError(
                f"an IPFIX record of this batch does not fit in a message of {limit} bytes"
            )
        same_set = bool(sets) and sets[-1][0] == v4
        need = len(record) + (0 if same_set else SET_HEADER_LENGTH)
        if sets and size + need > limit:
            yield close()
            sequence += count
            sets, size, count = [], HEADER_LENGTH, 0
            same_set, need = False, len(record) + SET_HEADER_LENGTH
        if same_set:
            sets[-1][1].append(record)
        else:
            sets.append((v4, [record]))
        size += need
        count += 1
    if sets:
        yield close()
