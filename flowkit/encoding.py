"""Fast encoders: a whole :class:`~flowkit.model.FlowBatch` to NetObserv JSON or pbflow protobuf.

Exporters encode every flow they send; doing that one :class:`~flowkit.model.Flow` at a time in
Python caps an exporter near 50k flows per second per core. The functions here hand the batch's
memory to C (``csrc/native/encode.c``), which writes the encoded bytes of the whole batch in one
call with the GIL released, and are byte-for-byte identical to flowkit's Python encodings:

* JSON: ``orjson.dumps(flow_to_json_dict(flow))`` (:func:`flowkit.model.flow_to_json_dict`);
* protobuf: ``flow_to_record(flow).SerializeToString()``
  (:func:`flowkit.pbflow.convert.flow_to_record`), and ``pbflow.Records`` messages.

The ``reference_*`` functions compute the same results with those Python encoders; they are the
specification the C code is tested against, and a fallback for debugging. Interface names come
from ``batch.interfaces`` and the agent address from ``batch.agent_ip``, as for :class:`Flow`.

Example (what a Kafka exporter does, one message per flow)::

    values = encode_records(batch).split()        # or encode_json_each(batch)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from flowkit.model import (
    FEATURE_DROPS,
    MAX_DUPS,
    TCP_STATE_NAMES,
    FlowBatch,
    flow_to_json_dict,
    ip_to_16,
)
from flowkit.native.encode import NAMES_DROP_REASON, NAMES_TCP_STATE, Encoder

__all__ = [
    "EncodedFlows",
    "encode_json_buffer",
    "encode_json_each",
    "encode_json_lines",
    "encode_records",
    "encode_records_message",
    "encode_records_messages",
    "reference_json_each",
    "reference_json_lines",
    "reference_records",
    "reference_records_message",
]

_MAX_IF_ID = (0xFFFF << 32) | 0xFFFF_FFFF  # interface_key(): 16-bit netns, 32-bit index
_NO_ID = np.uint64(1 << 63)  # matches no interface


class EncodedFlows(NamedTuple):
    """Encoded flows back to back in ``data``; flow ``i`` is ``data[offsets[i]:offsets[i + 1]]``.

    ``offsets`` has one entry more than there are flows (the last one is ``len(data)``).
    """

    data: bytes
    offsets: npt.NDArray[np.uint64]

    def split(self) -> list[bytes]:
        """One ``bytes`` object per flow (e.g. Kafka message values)."""
        data = self.data
        return [data[start:end] for start, end in pairwise(self.offsets.tolist())]


class _BatchEncoder:
    """A batch's flows as a C array plus the C encoder for its interface names and agent."""

    __slots__ = ("_array", "_bad_names", "count", "encoder")

    def __init__(self, batch: FlowBatch) -> None:
        # Exporters get contiguous arrays; a strided view is copied once.
        self._array = np.ascontiguousarray(batch.array)
        self.count = len(self._array)
        self._bad_names: dict[int, UnicodeEncodeError] = {}
        self.encoder = self._make_encoder(batch.interfaces, batch.agent_ip)
        if self.count and (self._array["features"] & FEATURE_DROPS).any():
            from flowkit.kernel_names import drop_reason_names

            self._set_names(NAMES_DROP_REASON, drop_reason_names())
            self._set_names(NAMES_TCP_STATE, TCP_STATE_NAMES)

    def _set_names(self, kind: int, names: Mapping[int, str]) -> None:
        values = np.array(list(names), dtype=np.uint32)
        encoded = [n.encode("utf-8") for n in names.values()]
        offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
        np.cumsum([len(n) for n in encoded], out=offsets[1:])
        blob = b"".join(encoded)
        self.encoder.set_names(kind, values, offsets, blob)

    def _make_encoder(self, interfaces: Mapping[int, str], agent_ip: str | None) -> Encoder:
        indexes: list[int] = []
        names: list[bytes] = []
        for if_index, name in interfaces.items():
            if not name or not 0 <= if_index <= _MAX_IF_ID:
                continue  # an empty name encodes like no name; other indexes never match
            try:
                names.append(name.encode("utf-8"))
            except UnicodeEncodeError as exc:  # lone surrogates: an error only if a flow uses it
                self._bad_names[if_index] = exc
                continue
            indexes.append(if_index)
        index_array = np.array(indexes, dtype=np.uint64)
        offsets = np.zeros(len(names) + 1, dtype=np.uint64)
        np.cumsum([len(n) for n in names], out=offsets[1:])
        blob = b"".join(names)
        agent_text = agent_ip16 = None
        if agent_ip:  # the same test as FlowBatch.__iter__
            address = ipaddress.ip_address(agent_ip)
            agent_text = str(address).encode("utf-8")
            agent_ip16 = ip_to_16(address)
        return Encoder(index_array, offsets, blob, agent_text, agent_ip16)

    def check_names(self, json: bool, start: int = 0, stop: int | None = None) -> None:
        """Raise what the Python encoders raise when a flow's interface name is not UTF-8."""
        if not self._bad_names:
            return
        rows = self._array[start:stop]
        key = rows["key"]
        ids = (key["netns"].astype(np.uint64) << np.uint64(32)) | key["if_index"]
        dups = (rows["dup_netns"].astype(np.uint64) << np.uint64(32)) | rows["dup_if_index"]
        listed = np.arange(MAX_DUPS) < np.minimum(rows["dup_count"], MAX_DUPS)[:, None]
        # In encoding order: a flow's own interface, then its list.
        candidates = np.concatenate([ids[:, None], np.where(listed, dups, _NO_ID)], axis=1)
        used = np.isin(candidates.ravel(), np.array(list(self._bad_names), dtype=np.uint64))
        if used.any():
            if_index = int(candidates.ravel()[used.argmax()])
            if json:
                raise orjson.JSONEncodeError("str is not valid UTF-8: surrogates not allowed")
            raise self._bad_names[if_index]

    def json(self, newline: bool) -> EncodedFlows:
        self.check_names(json=True)
        offsets = np.zeros(self.count + 1, dtype=np.uint64)
        if self.count == 0:
            return EncodedFlows(b"", offsets)
        return EncodedFlows(self.encoder.json(self._array, newline, offsets), offsets)

    def records(self) -> EncodedFlows:
        self.check_names(json=False)
        offsets = np.zeros(self.count + 1, dtype=np.uint64)
        if self.count == 0:
            return EncodedFlows(b"", offsets)
        return EncodedFlows(self.encoder.records(self._array, offsets), offsets)

    def records_message(self, start: int, stop: int) -> bytes:
        """A serialized ``pbflow.Records`` holding flows ``start`` to ``stop`` (clamped)."""
        start, stop, _ = slice(start, stop).indices(self.count)
        count = max(0, stop - start)
        if count == 0:
            return b""
        self.check_names(json=False, start=start, stop=stop)
        return self.encoder.records_message(self._array[start:stop])


def encode_json_lines(batch: FlowBatch) -> bytes:
    """Every flow as its NetObserv JSON object followed by ``\\n`` (the stdout format).

    Equal to ``b"".join(orjson.dumps(flow_to_json_dict(f)) + b"\\n" for f in batch)``.
    """
    return _BatchEncoder(batch).json(newline=True).data


def encode_json_buffer(batch: FlowBatch, newline: bool = False) -> EncodedFlows:
    """Every flow's JSON object back to back, with the offsets of each (``\\n``-ended if asked)."""
    return _BatchEncoder(batch).json(newline)


def encode_json_each(batch: FlowBatch) -> list[bytes]:
    """Every flow's JSON object as its own ``bytes`` (one Kafka message per flow)."""
    return _BatchEncoder(batch).json(newline=False).split()


def encode_records(batch: FlowBatch) -> EncodedFlows:
    """Every flow as a serialized ``pbflow.Record``, with the offsets of each.

    ``encode_records(batch).split()[i] == flow_to_record(flow_i).SerializeToString()``.
    """
    return _BatchEncoder(batch).records()


def encode_records_message(batch: FlowBatch, start: int = 0, stop: int | None = None) -> bytes:
    """A serialized ``pbflow.Records`` message with the flows ``batch[start:stop]``."""
    return _BatchEncoder(batch).records_message(start, len(batch) if stop is None else stop)


def encode_records_messages(
    batch: FlowBatch, max_flows: int, stop: int | None = None
) -> list[tuple[bytes, int]]:
    """The first ``stop`` flows (all by default) as ``pbflow.Records`` messages.

    Each message holds at most ``max_flows`` flows; returns ``(message, flow count)`` pairs in
    batch order (what the gRPC exporter sends, one ``Collector.Send`` per message).
    """
    if max_flows < 1:
        raise ValueError("max_flows must be at least 1")
    encoder = _BatchEncoder(batch)
    end = encoder.count if stop is None else max(0, min(stop, encoder.count))
    return [
        (encoder.records_message(i, min(i + max_flows, end)), min(max_flows, end - i))
        for i in range(0, end, max_flows)
    ]


# -- Python references ------------------------------------------------------------------------


def reference_json_lines(batch: FlowBatch) -> bytes:
    """:func:`encode_json_lines` computed in Python (the specification)."""
    return b"".join(orjson.dumps(flow_to_json_dict(f)) + b"\n" for f in batch)


def reference_json_each(batch: FlowBatch) -> list[bytes]:
    """:func:`encode_json_each` computed in Python (the specification)."""
    return [orjson.dumps(flow_to_json_dict(f)) for f in batch]


def reference_records(batch: FlowBatch) -> list[bytes]:
    """``encode_records(batch).split()`` computed with protobuf (needs ``flowkit-ebpf[grpc]``)."""
    from flowkit.pbflow.convert import flow_to_record

    return [flow_to_record(f).SerializeToString() for f in batch]


def reference_records_message(batch: FlowBatch, start: int = 0, stop: int | None = None) -> bytes:
    """:func:`encode_records_message` computed with protobuf (needs ``flowkit-ebpf[grpc]``)."""
    from flowkit.pbflow.convert import flow_to_record
    from flowkit.pbflow.flow_pb2 import Records

    view = FlowBatch(batch.array[start:stop], batch.interfaces, batch.agent_ip)
    message: bytes = Records(entries=[flow_to_record(f) for f in view]).SerializeToString()
    return message
