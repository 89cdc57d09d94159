"""Typed calls into the C flow encoders (csrc/native/encode.c, ipfix.c, otlp.c, columns.c).

Flows are passed as contiguous numpy arrays of ``FLOW_DTYPE`` (``struct fk_flow_out``); the
encoders write into buffers sized by their ``*_bound`` functions and return ``bytes``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from flowkit.native._lib import (
    NULL,
    CData,
    NativeError,
    OwnedPointer,
    array_pointer,
    check,
    copy_out,
    ffi,
    lib,
    new_or_raise,
    uninitialised_bytes,
)

if TYPE_CHECKING:
    from flowkit._native import (
        struct_fk_arrow_child,
        struct_fk_arrow_strings,
        struct_fk_field,
        struct_fk_interface_map,
        struct_fk_ipfix_params,
    )

__all__ = [
    "ARROW_AGENT",
    "ARROW_COLUMN",
    "ARROW_GATED",
    "ARROW_INTERFACE",
    "ARROW_LIST",
    "ARROW_NAMES",
    "NAMES_DROP_REASON",
    "NAMES_TCP_STATE",
    "ArrowChild",
    "ArrowExporter",
    "Encoder",
    "IpfixNames",
    "IpfixParams",
    "arrow_pool_stats",
    "arrow_release",
    "flow_column_layout",
    "ipfix_template_message",
]

U64Array = npt.NDArray[np.uint64]
FlowRows = npt.NDArray[Any]
"""A contiguous numpy array of ``FLOW_DTYPE`` rows (``struct fk_flow_out``)."""

NAMES_DROP_REASON: int = lib.FK_NAMES_DROP_REASON
"""Name table kind of :meth:`Encoder.set_names`: kernel drop reasons."""
NAMES_TCP_STATE: int = lib.FK_NAMES_TCP_STATE
"""Name table kind of :meth:`Encoder.set_names`: TCP states."""


def _flows(rows: FlowRows) -> CData:
    return array_pointer("struct fk_flow_out[]", rows)


class Encoder:
    """``struct fk_encoder``: interface names and agent address of one batch's encodings."""

    __slots__ = ("_owned",)

    def __init__(
        self,
        if_ids: U64Array,
        name_offsets: U64Array,
        names: bytes,
        agent_text: bytes | None,
        agent_ip16: bytes | None,
    ) -> None:
        """``names[name_offsets[i]:name_offsets[i + 1]]`` is the UTF-8 name of ``if_ids[i]``."""
        pointer = new_or_raise(
            "fk_encoder_new",
            lib.fk_encoder_new,
            array_pointer("uint64_t[]", if_ids),
            array_pointer("uint64_t[]", name_offsets),
            array_pointer("uint8_t[]", names),
            len(if_ids),
            NULL if agent_text is None else array_pointer("uint8_t[]", agent_text),
            0 if agent_text is None else len(agent_text),
            NULL if agent_ip16 is None else array_pointer("uint8_t[]", agent_ip16),
        )
        self._owned = OwnedPointer(pointer, lib.fk_encoder_free, "encoder")

    def set_names(
        self, kind: int, values: npt.NDArray[np.uint32], name_offsets: U64Array, names: bytes
    ) -> None:
        """Names of ``values`` (``kind``: :data:`NAMES_DROP_REASON` or :data:`NAMES_TCP_STATE`)."""
        check(
            lib.fk_encoder_set_names(
                self._owned.pointer,
                kind,
                array_pointer("uint32_t[]", values),
                array_pointer("uint64_t[]", name_offsets),
                array_pointer("uint8_t[]", names),
                len(values),
            ),
            "fk_encoder_set_names",
        )

    def json(self, rows: FlowRows, newline: bool, offsets: U64Array) -> bytes:
        """NetObserv JSON of every row back to back; ``offsets`` (``len(rows) + 1``) receives
        where each starts."""
        encoder = self._owned.pointer
        count = len(rows)
        capacity = lib.fk_encoder_json_bound(encoder, count)
        out = uninitialised_bytes(capacity)
        used = check(
            lib.fk_encode_json(
                encoder, _flows(rows), count, out, capacity, int(newline),
                array_pointer("uint64_t[]", offsets, writable=True),
            ),
            "fk_encode_json",
        )
        return copy_out(out, used)

    def records(self, rows: FlowRows, offsets: U64Array) -> bytes:
        """Every row as a serialized ``pbflow.Record``; ``offsets`` as for :meth:`json`."""
        encoder = self._owned.pointer
        count = len(rows)
        capacity = lib.fk_encoder_records_bound(encoder, count)
        out = uninitialised_bytes(capacity)
        used = check(
            lib.fk_encode_records(
                encoder, _flows(rows), count, out, capacity,
                array_pointer("uint64_t[]", offsets, writable=True),
            ),
            "fk_encode_records",
        )
        return copy_out(out, used)

    def records_message(self, rows: FlowRows) -> bytes:
        """The rows as one serialized ``pbflow.Records`` message."""
        encoder = self._owned.pointer
        count = len(rows)
        capacity = lib.fk_encoder_records_bound(encoder, count)
        out = uninitialised_bytes(capacity)
        used = check(
            lib.fk_encode_records_message(encoder, _flows(rows), count, out, capacity),
            "fk_encode_records_message",
        )
        return copy_out(out, used)


class IpfixParams:
    """``struct fk_ipfix_params``: the message header and exporter fields of an IPFIX encoding."""

    __slots__ = ("_params",)

    def __init__(
        self,
        *,
        export_time: int,
        sequence: int,
        domain_id: int,
        max_message: int,
        template_base: int,
        exporter_kind: int,
        enterprise: int,
        exporter_ip16: bytes | None,
    ) -> None:
        params = cast("struct_fk_ipfix_params", ffi.new("struct fk_ipfix_params *"))
        params.export_time = export_time & 0xFFFF_FFFF
        params.sequence = sequence & 0xFFFF_FFFF
        params.domain_id = domain_id
        params.max_message = max_message
        params.template_base = template_base
        params.exporter_kind = exporter_kind
        params.enterprise = enterprise
        if exporter_ip16 is not None:
            ffi.memmove(params.exporter_ip, exporter_ip16, 16)
        self._params = cast(CData, params)


class IpfixNames:
    """``struct fk_ipfix_names``: interface names by interface key (IPFIX and OTLP encoders)."""

    __slots__ = ("_owned",)

    def __init__(self, keys: U64Array, name_offsets: U64Array, names: bytes) -> None:
        pointer = new_or_raise(
            "fk_ipfix_names_new",
            lib.fk_ipfix_names_new,
            array_pointer("uint64_t[]", keys),
            array_pointer("uint64_t[]", name_offsets),
            array_pointer("uint8_t[]", names),
            len(keys),
        )
        self._owned = OwnedPointer(pointer, lib.fk_ipfix_names_free, "IPFIX name table")

    def ipfix_encode(
        self, rows: FlowRows, params: IpfixParams, ends: U64Array, records: U64Array
    ) -> tuple[bytes, int]:
        """The rows as IPFIX data messages: ``(messages back to back, message count)``.

        Message ``i`` ends at ``ends[i]`` and holds ``records[i]`` records. Raises
        ``NativeError`` with ``EMSGSIZE`` when one record does not fit in a message.
        """
        names = self._owned.pointer
        count = len(rows)
        capacity = lib.fk_ipfix_bound(names, params._params, count)
        out = uninitialised_bytes(capacity)
        n_messages = check(
            lib.fk_ipfix_encode(
                names, _flows(rows), count, params._params, out, capacity,
                array_pointer("uint64_t[]", ends, writable=True),
                array_pointer("uint64_t[]", records, writable=True),
            ),
            "fk_ipfix_encode",
        )
        used = int(ends[n_messages - 1]) if n_messages else 0
        return copy_out(out, used), n_messages

    def otlp_log_records(self, rows: FlowRows, ends: U64Array) -> bytes:
        """The rows as framed OTLP ``log_records``; record ``i`` ends at ``ends[i]``."""
        names = self._owned.pointer
        count = len(rows)
        capacity = lib.fk_otlp_bound(names, count)
        out = uninitialised_bytes(capacity)
        used = check(
            lib.fk_otlp_log_records(
                names, _flows(rows), count, out, capacity,
                array_pointer("uint64_t[]", ends, writable=True),
            ),
            "fk_otlp_log_records",
        )
        return copy_out(out, used)


def ipfix_template_message(params: IpfixParams) -> bytes:
    """An IPFIX message holding only the template set."""
    out = ffi.new("uint8_t[]", 1024)
    used = check(lib.fk_ipfix_template_message(params._params, out, 1024),
                 "fk_ipfix_template_message")
    return copy_out(out, used)


def flow_column_layout() -> list[tuple[int, int]]:
    """``(offset, width)`` in ``struct fk_flow_out`` of each column :func:`flow_columns`
    copies, in its order (``FK_FLOW_COLUMN_LIST`` of csrc/include/40-columns.h)."""
    return list(_flow_column_layout())


@functools.cache
def _flow_column_layout() -> tuple[tuple[int, int], ...]:
    capacity = 256
    out = cast("list[struct_fk_field]", ffi.new("struct fk_field[]", capacity))
    count = min(lib.fk_flow_column_layout(cast("CData", out), capacity), capacity)
    return tuple((int(out[i].offset), int(out[i].width)) for i in range(count))


ARROW_COLUMN: int = lib.FK_ARROW_COLUMN
"""Kind of :class:`ArrowChild`: a column of :func:`flow_column_layout` (``column``)."""
ARROW_GATED: int = lib.FK_ARROW_GATED
"""Kind of :class:`ArrowChild`: an optional-feature field (``offset``, ``width``)."""
ARROW_LIST: int = lib.FK_ARROW_LIST
"""Kind of :class:`ArrowChild`: a DEDUPER list (items of ``width`` bytes at ``offset``)."""
ARROW_INTERFACE: int = lib.FK_ARROW_INTERFACE
"""Kind of :class:`ArrowChild`: interface indices over dictionary ``dictionary``."""
ARROW_NAMES: int = lib.FK_ARROW_NAMES
"""Kind of :class:`ArrowChild`: column ``column`` as indices into dictionary ``dictionary``."""
ARROW_AGENT: int = lib.FK_ARROW_AGENT
"""Kind of :class:`ArrowChild`: all-zero indices into dictionary ``dictionary`` (one value),
all null when that dictionary is empty."""


@dataclass(frozen=True)
class ArrowChild:
    """One column of the record batch :class:`ArrowExporter` builds (``struct fk_arrow_child``)."""

    kind: int
    column: int = 0
    offset: int = 0
    width: int = 0
    dictionary: int = 0


class _Strings:
    """``struct fk_arrow_strings`` over UTF-8 strings, with the memory it points to."""

    __slots__ = ("_data", "_offsets", "pointer")

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [text.encode() for text in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        self._offsets = offsets
        self._data = b"".join(encoded) or b"\0"
        pointer = ffi.new("struct fk_arrow_strings *")
        struct = cast("struct_fk_arrow_strings", pointer)
        struct.offsets = array_pointer("int32_t[]", offsets)
        struct.data = array_pointer("uint8_t[]", self._data)
        struct.count = len(encoded)
        self.pointer: CData = pointer


class ArrowExporter:
    """Record batches of fixed columns (``children``) built in C (``fk_flow_arrow``) as Arrow C
    data interface arrays, in recycled memory.

    ``dictionaries[k]`` is dictionary ``k`` of the children, or ``None`` when it changes with
    every batch (then :meth:`export` gives it).
    """

    __slots__ = ("_children", "_constant", "_count", "_plan")

    def __init__(self, children: Sequence[ArrowChild],
                 dictionaries: Sequence[Sequence[str] | None]) -> None:
        plan = ffi.new("struct fk_arrow_child[]", max(len(children), 1))
        for i, child in enumerate(children):
            entry = cast("struct_fk_arrow_child", plan[i])
            entry.kind, entry.column, entry.offset = child.kind, child.column, child.offset
            entry.width, entry.dictionary = child.width, child.dictionary
        self._plan = plan
        self._children = len(children)
        self._count = len(dictionaries)
        self._constant = {k: _Strings(d) for k, d in enumerate(dictionaries) if d is not None}

    def export(self, rows: FlowRows, if_keys: U64Array, if_values: npt.NDArray[np.int32],
               dictionaries: Mapping[int, Sequence[str]]) -> int:
        """The address of a ``struct ArrowArray`` holding ``rows`` (a struct array with one
        child per column), owned by the caller: import it (``pyarrow.RecordBatch.
        _import_from_c``) or pass it to :func:`arrow_release`.

        ``if_keys`` (sorted) and ``if_values``: the interface dictionary index of each
        interface key (``netns << 32 | if_index``); other interfaces get index 0.
        ``dictionaries``: the dictionaries given as ``None`` to the constructor.
        """
        if not rows.flags.c_contiguous:
            raise ValueError("ArrowExporter.export needs C-contiguous rows")
        if len(if_keys) != len(if_values):
            raise ValueError("ArrowExporter.export needs one interface index per key")
        keys = np.ascontiguousarray(if_keys, dtype=np.uint64)
        values = np.ascontiguousarray(if_values, dtype=np.int32)
        interfaces = cast("struct_fk_interface_map", ffi.new("struct fk_interface_map *"))
        interfaces.keys = array_pointer("uint64_t[]", keys) if len(keys) else NULL
        interfaces.values = array_pointer("int32_t[]", values) if len(values) else NULL
        interfaces.count = len(keys)
        given = {k: _Strings(d) for k, d in dictionaries.items()}
        table = ffi.new("struct fk_arrow_strings[]", max(self._count, 1))
        for k in range(self._count):
            strings = self._constant.get(k) or given.get(k)
            if strings is None:
                raise ValueError(f"ArrowExporter.export: dictionary {k} is missing")
            table[k] = strings.pointer[0]
        err = ffi.new("int *")
        array = lib.fk_flow_arrow(_flows(rows), len(rows), self._plan, self._children,
                                  cast("CData", interfaces), table, self._count, err)
        if array == NULL:
            raise NativeError("fk_flow_arrow", err[0])
        return int(ffi.cast("uintptr_t", array))


def arrow_release(address: int) -> None:
    """Release a record batch of :meth:`ArrowExporter.export` that no consumer imported."""
    lib.fk_arrow_release(ffi.cast("struct ArrowArray *", address))


def arrow_pool_stats() -> tuple[int, int]:
    """``(free_bytes, blocks_in_use)`` of the pool behind :meth:`ArrowExporter.export`:
    memory kept for the next batches, and blocks still used by record batches."""
    free_bytes = ffi.new("uint64_t *")
    in_use = ffi.new("uint64_t *")
    lib.fk_arrow_pool_stats(free_bytes, in_use)
    return int(free_bytes[0]), int(in_use[0])
