import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGRESS: _ClassVar[Direction]
    EGRESS: _ClassVar[Direction]
INGRESS: Direction
EGRESS: Direction

class CollectorReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Records(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, entries: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("eth_protocol", "direction", "time_flow_start", "time_flow_end", "data_link", "network", "transport", "bytes", "packets", "interface", "agent_ip", "flags", "icmp_type", "icmp_code", "pkt_drop_bytes", "pkt_drop_packets", "pkt_drop_latest_flags", "pkt_drop_latest_state", "pkt_drop_latest_drop_cause", "dns_id", "dns_flags", "dns_latency", "time_flow_rtt", "dns_errno", "dup_list", "sampling", "dns_name")
    ETH_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIME_FLOW_START_FIELD_NUMBER: _ClassVar[int]
    TIME_FLOW_END_FIELD_NUMBER: _ClassVar[int]
    DATA_LINK_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    AGENT_IP_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    ICMP_TYPE_FIELD_NUMBER: _ClassVar[int]
    ICMP_CODE_FIELD_NUMBER: _ClassVar[int]
    PKT_DROP_BYTES_FIELD_NUMBER: _ClassVar[int]
    PKT_DROP_PACKETS_FIELD_NUMBER: _ClassVar[int]
    PKT_DROP_LATEST_FLAGS_FIELD_NUMBER: _ClassVar[int]
    PKT_DROP_LATEST_STATE_FIELD_NUMBER: _ClassVar[int]
    PKT_DROP_LATEST_DROP_CAUSE_FIELD_NUMBER: _ClassVar[int]
    DNS_ID_FIELD_NUMBER: _ClassVar[int]
    DNS_FLAGS_FIELD_NUMBER: _ClassVar[int]
    DNS_LATENCY_FIELD_NUMBER: _ClassVar[int]
    TIME_FLOW_RTT_FIELD_NUMBER: _ClassVar[int]
    DNS_ERRNO_FIELD_NUMBER: _ClassVar[int]
    DUP_LIST_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DNS_NAME_FIELD_NUMBER: _ClassVar[int]
    eth_protocol: int
    direction: Direction
    time_flow_start: _timestamp_pb2.Timestamp
    time_flow_end: _timestamp_pb2.Timestamp
    data_link: DataLink
    network: Network
    transport: Transport
    bytes: int
    packets: int
    interface: str
    agent_ip: IP
    flags: int
    icmp_type: int
    icmp_code: int
    pkt_drop_bytes: int
    pkt_drop_packets: int
    pkt_drop_latest_flags: int
    pkt_drop_latest_state: int
    pkt_drop_latest_drop_cause: int
    dns_id: int
    dns_flags: int
    dns_latency: _duration_pb2.Duration
    time_flow_rtt: _duration_pb2.Duration
    dns_errno: int
    dup_list: _containers.RepeatedCompositeFieldContainer[DupMapEntry]
    sampling: int
    dns_name: str
    def __init__(self, eth_protocol: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., time_flow_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_flow_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data_link: _Optional[_Union[DataLink, _Mapping]] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., transport: _Optional[_Union[Transport, _Mapping]] = ..., bytes: _Optional[int] = ..., packets: _Optional[int] = ..., interface: _Optional[str] = ..., agent_ip: _Optional[_Union[IP, _Mapping]] = ..., flags: _Optional[int] = ..., icmp_type: _Optional[int] = ..., icmp_code: _Optional[int] = ..., pkt_drop_bytes: _Optional[int] = ..., pkt_drop_packets: _Optional[int] = ..., pkt_drop_latest_flags: _Optional[int] = ..., pkt_drop_latest_state: _Optional[int] = ..., pkt_drop_latest_drop_cause: _Optional[int] = ..., dns_id: _Optional[int] = ..., dns_flags: _Optional[int] = ..., dns_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_flow_rtt: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dns_errno: _Optional[int] = ..., dup_list: _Optional[_Iterable[_Union[DupMapEntry, _Mapping]]] = ..., sampling: _Optional[int] = ..., dns_name: _Optional[str] = ...) -> None: ...

class DupMapEntry(_message.Message):
    __slots__ = ("interface", "direction", "udn")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    UDN_FIELD_NUMBER: _ClassVar[int]
    interface: str
    direction: Direction
    udn: str
    def __init__(self, interface: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., udn: _Optional[str] = ...) -> None: ...

class DataLink(_message.Message):
    __slots__ = ("src_mac", "dst_mac")
    SRC_MAC_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    src_mac: int
    dst_mac: int
    def __init__(self, src_mac: _Optional[int] = ..., dst_mac: _Optional[int] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("src_addr", "dst_addr", "dscp")
    SRC_ADDR_FIELD_NUMBER: _ClassVar[int]
    DST_ADDR_FIELD_NUMBER: _ClassVar[int]
    DSCP_FIELD_NUMBER: _ClassVar[int]
    src_addr: IP
    dst_addr: IP
    dscp: int
    def __init__(self, src_addr: _Optional[_Union[IP, _Mapping]] = ..., dst_addr: _Optional[_Union[IP, _Mapping]] = ..., dscp: _Optional[int] = ...) -> None: ...

class IP(_message.Message):
    __slots__ = ("ipv4", "ipv6")
    IPV4_FIELD_NUMBER: _ClassVar[int]
    IPV6_FIELD_NUMBER: _ClassVar[int]
    ipv4: int
    ipv6: bytes
    def __init__(self, ipv4: _Optional[int] = ..., ipv6: _Optional[bytes] = ...) -> None: ...

class Transport(_message.Message):
    __slots__ = ("src_port", "dst_port", "protocol")
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    src_port: int
    dst_port: int
    protocol: int
    def __init__(self, src_port: _Optional[int] = ..., dst_port: _Optional[int] = ..., protocol: _Optional[int] = ...) -> None: ...
