"""OpenTelemetry (OTLP) encoding of flow batches: one log record per flow, and flow metrics.

Logs: each flow is one ``LogRecord`` (``time_unix_nano`` = the flow's last packet) whose
attributes are :data:`LOG_ATTRIBUTES`, named after OpenTelemetry's semantic conventions where
one exists (``source.address``, ``network.transport``, ...) and under ``flowkit.`` otherwise.
The records are serialized in C (``csrc/native/otlp.c``) and wrapped in an
``ExportLogsServiceRequest`` here; :func:`reference_logs_request` builds the same request with
the ``opentelemetry-proto`` messages and is the specification the C code is tested against.

Metrics: :func:`metrics_request` sums bytes and packets per combination of a chosen attribute
set, keeps the ``max_series`` largest combinations by bytes and folds the rest into one series
with the attribute ``otel.metric.overflow = true`` (OpenTelemetry's convention for a
cardinality limit), so totals are always preserved. Both are delta-temporality monotonic sums:
``flowkit.flow.bytes`` (unit ``By``) and ``flowkit.flow.packets`` (unit ``{packet}``).

Building requests needs the extra ``flowkit-ebpf[otlp]`` (``opentelemetry-proto``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from flowkit.model import FlowBatch, mac_to_str
from flowkit.native.encode import IpfixNames

__all__ = [
    "LOG_ATTRIBUTES",
    "METRIC_ATTRIBUTES",
    "OVERFLOW_ATTRIBUTE",
    "OtlpResource",
    "encode_logs_request",
    "import_otlp_proto",
    "metrics_request",
    "reference_logs_request",
    "reference_metrics_request",
    "transport_name",
]

LOG_ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    ("source.address", "string", "SrcAddr: IPv4 dotted, IPv6 RFC 5952"),
    ("source.port", "int", "SrcPort"),
    ("destination.address", "string", "DstAddr"),
    ("destination.port", "int", "DstPort"),
    ("network.transport", "string", "tcp, udp, icmp, icmpv6, sctp, else the protocol number"),
    ("network.type", "string", "ipv4 or ipv6"),
    ("network.io.direction", "string", "receive (ingress) or transmit (egress)"),
    ("network.interface.name", "string", "Interface (absent when unknown)"),
    ("flowkit.flow.bytes", "int", "Bytes (Ethernet header included)"),
    ("flowkit.flow.packets", "int", "Packets"),
    ("flowkit.flow.start_time_unix_nano", "int", "first packet, unix ns"),
    ("flowkit.flow.end_time_unix_nano", "int", "last packet, unix ns"),
    ("flowkit.tcp.flags", "int", "Flags (NetObserv's, with 0x100 SYN+ACK etc.)"),
    ("flowkit.icmp.type", "int", "IcmpType"),
    ("flowkit.icmp.code", "int", "IcmpCode"),
    ("flowkit.dscp", "int", "Dscp"),
    ("flowkit.sampling", "int", "Sampling (1 in N; 0 = not sampled)"),
    ("flowkit.ethernet.type", "int", "Etype"),
    ("flowkit.source.mac", "string", "SrcMac"),
    ("flowkit.destination.mac", "string", "DstMac"),
    ("flowkit.interface.index", "int", "interface index"),
)
"""(name, OTLP value type, meaning) of every log record attribute, in the order sent."""

METRIC_ATTRIBUTES = (
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "network.transport",
    "network.type",
    "network.io.direction",
    "network.interface.name",
    "flowkit.dscp",
    "flowkit.ethernet.type",
    "flowkit.interface.index",
)
"""Attributes metrics may be broken down by."""

OVERFLOW_ATTRIBUTE = "otel.metric.overflow"

_TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}
_MAPPED = bytes(10) + b"\xff\xff"


def import_otlp_proto() -> Any:
    """The ``opentelemetry.proto`` modules flowkit uses (ImportError: says what to install)."""
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.metrics.v1 import metrics_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
    except ImportError as exc:
        raise ImportError(
            "the otlp exporter needs opentelemetry-proto and grpcio: "
            "pip install 'flowkit-ebpf[otlp]'"
        ) from exc

    class Proto:
        logs_service = logs_service_pb2
        metrics_service = metrics_service_pb2
        common = common_pb2
        logs = logs_pb2
        metrics = metrics_pb2
        resource = resource_pb2

    return Proto


def transport_name(proto: int) -> str:
    """``network.transport`` of an IP protocol number."""
    return _TRANSPORTS.get(proto, str(proto))


@functools.lru_cache(maxsize=65536)
def _ip_text(raw: bytes) -> str:
    if raw[:12] == _MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def _clean_name(name: str) -> str:
    return name.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class OtlpResource:
    """The resource and instrumentation scope every request carries."""

    attributes: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    scope_name: str = "flowkit"
    scope_version: str = ""

    def _values(self, proto: Any) -> tuple[Any, Any]:
        common = proto.common
        attrs = []
        for key, value in self.attributes.items():
            if isinstance(value, str):
                attrs.append(common.KeyValue(key=key, value=common.AnyValue(string_value=value)))
            else:
                array = common.ArrayValue(values=[common.AnyValue(string_value=v) for v in value])
                attrs.append(common.KeyValue(key=key, value=common.AnyValue(array_value=array)))
        resource = proto.resource.Resource(attributes=attrs)
        scope = common.InstrumentationScope(name=self.scope_name, version=self.scope_version)
        return resource, scope

    def framing(self, proto: Any) -> tuple[bytes, bytes]:
        """Serialized Resource and InstrumentationScope."""
        resource, scope = self._values(proto)
        return resource.SerializeToString(), scope.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _names_table(interfaces: Mapping[int, str]) -> IpfixNames:
    from flowkit.ipfix import _names_table as table

    return table(interfaces)


class LogRecords(NamedTuple):
    """Framed ``log_records`` of several flows; flow ``i`` ends at ``ends[i]``."""

    data: bytes
    ends: list[int]


def encode_log_records(batch: FlowBatch, start: int = 0, stop: int | None = None) -> LogRecords:
    """The flows ``batch[start:stop]`` as framed ``ScopeLogs.log_records`` entries (C)."""
    array = np.ascontiguousarray(batch.array[start:stop])
    count = len(array)
    if count == 0:
        return LogRecords(b"", [])
    table = _names_table(batch.interfaces)
    ends = np.empty(count, dtype=np.uint64)
    data = table.otlp_log_records(array, ends)
    return LogRecords(data, ends.tolist())


def wrap_log_records(records: bytes, resource: bytes, scope: bytes) -> bytes:
    """An ``ExportLogsServiceRequest`` holding one ResourceLogs / ScopeLogs with ``records``."""
    scope_logs = _field(1, scope) + records
    resource_logs = _field(1, resource) + _field(2, scope_logs)
    return _field(1, resource_logs)


def encode_logs_request(
    batch: FlowBatch, framing: tuple[bytes, bytes], start: int = 0, stop: int | None = None
) -> bytes:
    """The flows ``batch[start:stop]`` as a serialized ``ExportLogsServiceRequest``.

    ``framing`` is :meth:`OtlpResource.framing`. Equal to :func:`reference_logs_request`.
    """
    records = encode_log_records(batch, start, stop)
    return wrap_log_records(records.data, *framing)


def _flow_attributes(row: Any, names: Mapping[int, str]) -> list[tuple[str, str | int]]:
    key = row["key"]
    src, dst = bytes(key["src_ip"]), bytes(key["dst_ip"])
    v4 = src[:12] == _MAPPED and dst[:12] == _MAPPED
    if_index = int(key["if_index"])
    attrs: list[tuple[str, str | int]] = [
        ("source.address", _ip_text(src)),
        ("source.port", int(key["src_port"])),
        ("destination.address", _ip_text(dst)),
        ("destination.port", int(key["dst_port"])),
        ("network.transport", transport_name(int(key["proto"]))),
        ("network.type", "ipv4" if v4 else "ipv6"),
        ("network.io.direction", "receive" if int(key["direction"]) == 0 else "transmit"),
    ]
    name = names.get(int(key["netns"]) << 32 | if_index, "")
    if name:
        attrs.append(("network.interface.name", _clean_name(name)))
    attrs += [
        ("flowkit.flow.bytes", int(row["bytes"])),
        ("flowkit.flow.packets", int(row["packets"])),
        ("flowkit.flow.start_time_unix_nano", int(row["start_ns"])),
        ("flowkit.flow.end_time_unix_nano", int(row["end_ns"])),
        ("flowkit.tcp.flags", int(row["flags"])),
        ("flowkit.icmp.type", int(key["icmp_type"])),
        ("flowkit.icmp.code", int(key["icmp_code"])),
        ("flowkit.dscp", int(row["dscp"])),
        ("flowkit.sampling", int(row["sampling"])),
        ("flowkit.ethernet.type", int(key["eth_protocol"])),
        ("flowkit.source.mac", mac_to_str(bytes(row["src_mac"]))),
        ("flowkit.destination.mac", mac_to_str(bytes(row["dst_mac"]))),
        ("flowkit.interface.index", if_index),
    ]
    return attrs


def reference_logs_request(
    batch: FlowBatch, resource: OtlpResource, start: int = 0, stop: int | None = None
) -> bytes:
    """:func:`encode_logs_request` built with the opentelemetry-proto messages (specification)."""
    proto = import_otlp_proto()
    common = proto.common
    records = []
    for row in batch.array[start:stop]:
        attrs = []
        for key, value in _flow_attributes(row, batch.interfaces):
            any_value = (
                common.AnyValue(string_value=value)
                if isinstance(value, str)
                else common.AnyValue(int_value=value)
            )
            attrs.append(common.KeyValue(key=key, value=any_value))
        records.append(proto.logs.LogRecord(time_unix_nano=int(row["end_ns"]), attributes=attrs))
    res, scope = resource._values(proto)
    request = proto.logs_service.ExportLogsServiceRequest(
        resource_logs=[
            proto.logs.ResourceLogs(
                resource=res, scope_logs=[proto.logs.ScopeLogs(scope=scope, log_records=records)]
            )
        ]
    )
    data: bytes = request.SerializeToString()
    return data


# -- metrics ------------------------------------------------------------------------------------


def _metric_columns(batch: FlowBatch, attributes: Sequence[str]) -> list[np.ndarray[Any, Any]]:
    array = batch.array
    key = array["key"]
    columns: list[np.ndarray[Any, Any]] = []
    for name in attributes:
        if name == "source.address":
            columns.append(np.ascontiguousarray(key["src_ip"]).view("V16").ravel())
        elif name == "destination.address":
            columns.append(np.ascontiguousarray(key["dst_ip"]).view("V16").ravel())
        elif name == "source.port":
            columns.append(key["src_port"])
        elif name == "destination.port":
            columns.append(key["dst_port"])
        elif name == "network.transport":
            columns.append(key["proto"])
        elif name == "network.type":
            prefix = np.frombuffer(_MAPPED, "u1")
            v4 = (key["src_ip"][:, :12] == prefix).all(1) & (key["dst_ip"][:, :12] == prefix).all(1)
            columns.append(v4.astype(np.uint8))
        elif name == "network.io.direction":
            columns.append(key["direction"])
        elif name == "network.interface.name":  # names are keyed by netns << 32 | if_index
            columns.append(key["if_index"].astype(np.uint64)
                           | key["netns"].astype(np.uint64) << np.uint64(32))
        elif name == "flowkit.interface.index":
            columns.append(key["if_index"])
        elif name == "flowkit.dscp":
            columns.append(array["dscp"])
        elif name == "flowkit.ethernet.type":
            columns.append(key["eth_protocol"])
        else:
            raise ValueError(f"unknown metric attribute {name!r}")
    return columns


def _attribute_value(name: str, value: Any, interfaces: Mapping[int, str]) -> str | int:
    if name in ("source.address", "destination.address"):
        return _ip_text(bytes(value))
    if name == "network.transport":
        return transport_name(int(value))
    if name == "network.type":
        return "ipv4" if int(value) else "ipv6"
    if name == "network.io.direction":
        return "receive" if int(value) == 0 else "transmit"
    if name == "network.interface.name":
        return _clean_name(interfaces.get(int(value), ""))
    return int(value)


class Series(NamedTuple):
    """One metric series: its attributes and totals."""

    attributes: tuple[tuple[str, str | int | bool], ...]
    bytes: int
    packets: int


def aggregate(batch: FlowBatch, attributes: Sequence[str], max_series: int) -> list[Series]:
    """Bytes and packets per attribute combination: the ``max_series`` largest by bytes (ties
    by first appearance), then one overflow series with the rest when there is a rest."""
    n = len(batch)
    if n == 0:
        return []
    array = batch.array
    nbytes = array["bytes"].astype(np.uint64)
    packets = array["packets"].astype(np.uint64)
    if attributes:
        columns = _metric_columns(batch, attributes)
        table = np.empty(n, dtype=[(f"c{i}", c.dtype) for i, c in enumerate(columns)])
        for i, column in enumerate(columns):
            table[f"c{i}"] = column
        _, first, inverse = np.unique(table, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    else:
        table = None
        first = np.zeros(1, dtype=np.int64)
        inverse = np.zeros(n, dtype=np.int64)
    groups = len(first)
    sum_bytes = np.zeros(groups, dtype=np.uint64)
    sum_packets = np.zeros(groups, dtype=np.uint64)
    np.add.at(sum_bytes, inverse, nbytes)
    np.add.at(sum_packets, inverse, packets)
    # Largest bytes first; equal bytes: the combination seen first in the batch first.
    order = np.lexsort((first, np.uint64(np.iinfo(np.uint64).max) - sum_bytes))
    kept, rest = order[:max_series], order[max_series:]
    out = []
    for g in kept.tolist():
        attrs: tuple[tuple[str, str | int | bool], ...] = ()
        if table is not None:
            row = table[int(first[g])]
            attrs = tuple(
                (name, _attribute_value(name, row[f"c{i}"], batch.interfaces))
                for i, name in enumerate(attributes)
            )
        out.append(Series(attrs, int(sum_bytes[g]), int(sum_packets[g])))
    if len(rest):
        out.append(
            Series(
                ((OVERFLOW_ATTRIBUTE, True),),
                int(sum_bytes[rest].sum(dtype=np.uint64)),
                int(sum_packets[rest].sum(dtype=np.uint64)),
            )
        )
    return out


def _kv_bytes(key: str, value: str | int | bool) -> bytes:
    if isinstance(value, bool):
        any_value = b"\x10" + (b"\x01" if value else b"\x00")
    elif isinstance(value, str):
        any_value = _field(1, value.encode("utf-8"))
    else:
        any_value = b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    return _field(1, key.encode("utf-8")) + _field(2, any_value)


def _fixed64(number: int, value: int) -> bytes:
    return bytes([number << 3 | 1]) + (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")


def metrics_request(
    series: Sequence[Series], resource: OtlpResource, start_ns: int, time_ns: int
) -> bytes:
    """An ``ExportMetricsServiceRequest`` with the bytes and packets sums of ``series``.

    Written field by field (the series count, not the flow count, sets its cost); equal to
    :func:`reference_metrics_request`.
    """
    proto = import_otlp_proto()
    res, scope = resource.framing(proto)
    times = (_fixed64(2, start_ns) if start_ns else b"") + (
        _fixed64(3, time_ns) if time_ns else b""
    )
    attrs = [b"".join(_field(7, _kv_bytes(k, v)) for k, v in s.attributes) for s in series]

    def metric(name: str, unit: str, description: str, values: list[int]) -> bytes:
        points = b"".join(
            _field(1, times + (_fixed64(6, v) if v else b"") + a)
            for a, v in zip(attrs, values, strict=True)
        )
        # Sum: data_points = 1, aggregation_temporality = 2 (DELTA = 1), is_monotonic = 3.
        body = points + b"\x10\x01\x18\x01"
        return (_field(1, name.encode()) + _field(2, description.encode())
                + _field(3, unit.encode()) + _field(7, body))

    metrics = (
        _field(2, metric("flowkit.flow.bytes", "By", "Bytes of the flows seen",
                         [s.bytes for s in series]))
        + _field(2, metric("flowkit.flow.packets", "{packet}", "Packets of the flows seen",
                           [s.packets for s in series]))
    )
    scope_metrics = _field(1, scope) + metrics
    resource_metrics = _field(1, res) + _field(2, scope_metrics)
    return _field(1, resource_metrics)


def reference_metrics_request(
    series: Sequence[Series], resource: OtlpResource, start_ns: int, time_ns: int
) -> bytes:
    """:func:`metrics_request` built with the opentelemetry-proto messages (specification)."""
    proto = import_otlp_proto()
    common, metrics = proto.common, proto.metrics

    def kv(key: str, value: str | int | bool) -> Any:
        if isinstance(value, bool):
            return common.KeyValue(key=key, value=common.AnyValue(bool_value=value))
        if isinstance(value, str):
            return common.KeyValue(key=key, value=common.AnyValue(string_value=value))
        return common.KeyValue(key=key, value=common.AnyValue(int_value=value))

    def sum_metric(name: str, unit: str, description: str, values: list[int]) -> Any:
        points = [
            metrics.NumberDataPoint(
                attributes=[kv(k, v) for k, v in s.attributes],
                start_time_unix_nano=start_ns,
                time_unix_nano=time_ns,
                as_int=value,
            )
            for s, value in zip(series, values, strict=True)
        ]
        return metrics.Metric(
            name=name,
            unit=unit,
            description=description,
            sum=metrics.Sum(
                data_points=points,
                aggregation_temporality=metrics.AGGREGATION_TEMPORALITY_DELTA,
                is_monotonic=True,
            ),
        )

    res, scope = resource._values(proto)
    request = proto.metrics_service.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics.ResourceMetrics(
                resource=res,
                scope_metrics=[
                    metrics.ScopeMetrics(
                        scope=scope,
                        metrics=[
                            sum_metric("flowkit.flow.bytes", "By", "Bytes of the flows seen",
                                       [s.bytes for s in series]),
                            sum_metric("flowkit.flow.packets", "{packet}",
                                       "Packets of the flows seen", [s.packets for s in series]),
                        ],
                    )
                ],
            )
        ]
    )
    data: bytes = request.SerializeToString()
    return data
