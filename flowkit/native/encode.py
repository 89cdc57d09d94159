"""Typed calls into the C flow encoders (csrc/native/encode.c, ipfix.c, otlp.c, columns.c).

Flows are passed as contiguous numpy arrays of ``FLOW_DTYPE`` (``struct fk_flow_out``); the
encoders write into buffers sized by their ``*_bound`` functions and return ``bytes``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from flowkit.native._lib import (
    NULL,
    CData,
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
        struct_fk_column,
        struct_fk_field,
        struct_fk_interface_map,
        struct_fk_ipfix_params,
    )

__all__ = [
    "NAMES_DROP_REASON",
    "NAMES_TCP_STATE",
    "Encoder",
    "IpfixNames",
    "IpfixParams",
    "flow_column_layout",
    "flow_columns",
    "gather_columns",
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


def gather_columns(
    rows: npt.NDArray[Any], destination: int, columns: list[tuple[int, int, int]]
) -> None:
    """Transpose ``rows`` into columns: for ``(offset, width, start)``, the ``width`` bytes at
    ``offset`` of each row go back to back from address ``destination + start``.

    ``destination`` is the address of a writable buffer (e.g. a ``pyarrow.Buffer``) large
    enough for every column; ``rows`` must be C-contiguous.
    """
    if not len(rows) or not columns:
        return
    if not rows.flags.c_contiguous:
        raise ValueError("gather_columns needs C-contiguous rows")
    base = ffi.cast("uint8_t *", destination)
    specs = ffi.new("struct fk_column[]", len(columns))
    for i, (offset, width, start) in enumerate(columns):
        spec = cast("struct_fk_column", specs[i])
        spec.offset = offset
        spec.width = width
        spec.dst = base + start
    lib.fk_gather_columns(ffi.cast("uint8_t *", rows.ctypes.data), len(rows), rows.itemsize,
                          specs, len(columns))


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


def flow_columns(
    rows: FlowRows,
    destinations: list[int],
    if_keys: U64Array,
    if_values: npt.NDArray[np.int32],
    if_destination: int,
) -> int:
    """Copy the :func:`flow_column_layout` columns of ``rows`` in one pass: column ``c`` goes
    back to back from address ``destinations[c]``; each row's ``interface`` dictionary index
    (``if_values[j]`` where ``if_keys[j]`` is its ``netns << 32 | if_index``, ``if_keys``
    sorted; 0 when not listed) goes to the int32 at ``if_destination + 4 * i``.

    The destinations are addresses of writable buffers (e.g. a ``pyarrow.Buffer``) large
    enough for ``len(rows)`` values. Returns the OR of the rows' ``features``, plus 0x100 when
    a row has DEDUPER entries (``dup_count`` != 0).
    """
    if not len(rows):
        return 0
    if not rows.flags.c_contiguous:
        raise ValueError("flow_columns needs C-contiguous rows")
    if len(destinations) != len(_flow_column_layout()):
        raise ValueError("flow_columns needs one destination per column of flow_column_layout")
    if len(if_keys) != len(if_values):
        raise ValueError("flow_columns needs one interface index per key")
    keys = np.ascontiguousarray(if_keys, dtype=np.uint64)
    values = np.ascontiguousarray(if_values, dtype=np.int32)
    interfaces = cast("struct_fk_interface_map", ffi.new("struct fk_interface_map *"))
    interfaces.keys = array_pointer("uint64_t[]", keys) if len(keys) else NULL
    interfaces.values = array_pointer("int32_t[]", values) if len(values) else NULL
    interfaces.count = len(keys)
    dst = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", a) for a in destinations])
    return lib.fk_flow_columns(_flows(rows), len(rows), dst, cast("CData", interfaces),
                               ffi.cast("int32_t *", if_destination))
