"""Flows as Apache Arrow data: the schema of :meth:`FlowBatch.to_arrow` and its conversion.

pyarrow is optional (``pip install 'flowkit-ebpf[arrow]'``); this module imports it on first use and
says which extra to install when it is missing.

The schema is derived from :data:`flowkit.model.FLOW_DTYPE`: every field of the C record (the
fields of ``key`` included, padding excluded) is one column of the matching Arrow type, so a
field added to the record becomes a column without changes here. A few fields get a more useful
type, and a few columns are derived (see ``docs/python.md`` for the table):

* ``start_ns`` / ``end_ns`` become ``time_start`` / ``time_end``, ``timestamp[ns, tz=UTC]``;
* MACs and IP addresses are ``fixed_size_binary`` (6 and 16 bytes, network order; IPv4 as
  IPv4-mapped IPv6): they sort in address order and filter by equality or range;
* ``direction_name`` and ``proto_name`` are dictionaries (``ingress``/``egress``, ``TCP``...)
  that share their index buffer with the numeric ``direction`` / ``proto`` columns;
* ``interface`` (dictionary of names, ``""`` when unknown) comes from ``batch.interfaces``;
* ``agent_ip`` (dictionary, null when unknown) from ``batch.agent_ip``;
* the DEDUPER fields ``dup_if_index`` / ``dup_netns`` / ``dup_direction`` are variable-length
  lists of the ``dup_count`` entries used (empty without DEDUPER).

A FlowBatch is an array of C structs (one row of 224 bytes per flow, the layout the kernel and
the accounter write), while Arrow keeps each column contiguous and has no strided arrays: no
column can point into the rows, so the fields are copied. One C call (``fk_flow_arrow``,
``csrc/native/arrow.c``) builds the whole record batch as an Arrow C data interface array and
pyarrow imports it as it is (``RecordBatch._import_from_c`` with the cached schema): no Arrow
array is assembled in Python. The fields every flow carries (101 bytes a flow) are copied in
one vectorised pass over the rows (``fk_flow_columns``), which also computes the
``interface`` indices; a batch of 32,768 flows or more is split between two threads, as the
pass runs at the speed one core reads memory. The optional-feature fields are copied only when
a flow of the batch carries such data (otherwise they share read-only zero pages), the DEDUPER
lists only when a flow has entries (otherwise empty lists). The name columns reuse the copied
buffers (``direction_name``, ``proto_name``) or zero pages (``agent_ip``). The memory comes
from a pool and returns to it when Arrow releases the record batch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flowkit.model import FLOW_DTYPE, FlowBatch

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ArrowMissingError", "flow_schema", "require_pyarrow", "to_arrow"]

# Column names for the fields that change name because they change type.
_RENAMED = {"start_ns": "time_start", "end_ns": "time_end"}
_TIMESTAMPS = {"start_ns", "end_ns"}
_ALIGN = 64  # Arrow's recommended buffer alignment

# IANA protocol numbers with the names flowkit's filters and NetObserv's UI use.
PROTOCOL_NAMES: dict[int, str] = {
    1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP",
    51: "AH", 58: "ICMPv6", 89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP", 136: "UDPLite",
    137: "MPLS-in-IP",
}
DIRECTION_NAMES = ("ingress", "egress")


class ArrowMissingError(ImportError):
    """pyarrow is not installed; the message names the extra to install."""


def require_pyarrow(what: str = "Arrow export") -> Any:
    """Import pyarrow, or raise :class:`ArrowMissingError` naming the ``[arrow]`` extra."""
    try:
        import pyarrow
    except ImportError as exc:
        raise ArrowMissingError(
            f"{what} needs pyarrow, which is not installed: pip install 'flowkit-ebpf[arrow]'"
        ) from exc
    return pyarrow


@dataclass(frozen=True)
class _Column:
    name: str  # Arrow column name
    field: str  # dtype field name (leaf)
    offset: int  # byte offset in the row
    width: int  # bytes per value
    kind: str  # "int", "binary", "timestamp", "list" (fixed-size list of integers)
    numpy: np.dtype[Any]


_Leaf = tuple[str, int, "np.dtype[Any]"]


def _leaf_fields(dtype: np.dtype[Any], base: int = 0, prefix: str = "") -> list[_Leaf]:
    out: list[_Leaf] = []
    assert dtype.fields is not None
    for name in dtype.names or ():
        sub, offset = dtype.fields[name][:2]
        if name.startswith("pad"):
            continue
        if sub.fields is not None:
            out.extend(_leaf_fields(sub, base + offset, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", base + offset, sub))
    return out


@functools.cache
def _columns() -> tuple[_Column, ...]:
    leaves = _leaf_fields(FLOW_DTYPE)
    short = [path.rsplit(".", 1)[-1] for path, _, _ in leaves]
    columns = []
    for (path, offset, dt), leaf in zip(leaves, short, strict=True):
        # Leaf names are column names unless two fields share one (then the path is used).
        name = leaf if short.count(leaf) == 1 else path.replace(".", "_")
        if dt.subdtype is not None:
            base, shape = dt.subdtype
            if len(shape) != 1 or base.kind not in "ui":
                raise TypeError(f"no Arrow mapping for the record field {path} ({dt})")
            if base == np.dtype("u1") and not leaf.startswith("dup_"):
                columns.append(_Column(name, leaf, offset, int(shape[0]), "binary", base))
            else:  # several numbers per flow (the DEDUPER interface list)
                columns.append(_Column(name, leaf, offset, dt.itemsize, "list", base))
        elif dt.kind == "S":
            columns.append(_Column(name, leaf, offset, dt.itemsize, "binary", dt))
        elif dt.kind in "uif":
            kind = "timestamp" if leaf in _TIMESTAMPS else "int"
            columns.append(_Column(_RENAMED.get(name, name), leaf, offset, dt.itemsize, kind, dt))
        else:
            raise TypeError(f"no Arrow mapping for the record field {path} ({dt})")
    return tuple(columns)


def _arrow_type(pa: Any, column: _Column) -> Any:
    if column.kind == "timestamp":
        return pa.timestamp("ns", tz="UTC")
    if column.kind == "binary":
        return pa.binary(column.width)
    if column.kind == "list":  # variable length: the entries used (DEDUPER: dup_count)
        return pa.list_(pa.from_numpy_dtype(column.numpy.newbyteorder("=")))
    return pa.from_numpy_dtype(column.numpy.newbyteorder("="))


@functools.cache
def _dictionaries() -> dict[str, Any]:
    pa = require_pyarrow()
    # 0: no IP protocol (ARP and other non-IP frames; IPv6 hop-by-hop headers are skipped).
    protos = [PROTOCOL_NAMES.get(i, str(i)) if i else "" for i in range(256)]
    return {
        "direction_name": (pa.int8(), pa.array(DIRECTION_NAMES, pa.string())),
        "proto_name": (pa.uint8(), pa.array(protos, pa.string())),
    }


@functools.cache
def flow_schema() -> pa.Schema:
    """The Arrow schema of :meth:`FlowBatch.to_arrow` (same for every batch)."""
    pa = require_pyarrow()
    fields = []
    for column in _columns():
        fields.append(pa.field(column.name, _arrow_type(pa, column), nullable=False))
        if column.name == "if_index":
            fields.append(pa.field("interface", pa.dictionary(pa.int32(), pa.string()),
                                   nullable=False))
        elif column.name in ("direction", "proto"):
            index_type, _ = _dictionaries()[f"{column.name}_name"]
            fields.append(pa.field(f"{column.name}_name",
                                   pa.dictionary(index_type, pa.string())))
    fields.append(pa.field("agent_ip", pa.dictionary(pa.int8(), pa.string())))
    return pa.schema(fields, metadata={"flowkit.record": "struct fk_flow_out"})


# Columns that hold data only when their gate column (by name prefix) is non-zero for the flow:
# the optional features (FLOW_DTYPE: zero unless ``features`` has the feature's bit) and the
# DEDUPER lists (``dup_count`` entries used).
_GATES = {"features": ("drop_", "rtt_", "dns_"), "dup_count": ("dup_",)}


def _gate_of(name: str) -> str | None:
    for gate, prefixes in _GATES.items():
        if name != gate and name.startswith(prefixes):
            return gate
    return None


# -- conversion ---------------------------------------------------------------------------------

# Dictionaries of the record batch, by number (struct fk_arrow_child.dictionary).
_IF_DICT, _DIRECTION_DICT, _PROTO_DICT, _AGENT_DICT = range(4)


@functools.cache
def _exporter() -> Any:
    """The native exporter of :func:`flow_schema`'s columns, worked out once per process."""
    from flowkit.native import encode as native

    columns = _columns()
    core = [c for c in columns if _gate_of(c.name) is None]
    if [(c.offset, c.width) for c in core] != native.flow_column_layout():
        # pragma: no cover - test_native_column_list_matches_the_record keeps them equal
        raise RuntimeError("csrc/include/40-columns.h FK_FLOW_COLUMN_LIST does not match "
                           "FLOW_DTYPE: rebuild the extension (make native) or update the list")
    by_name = {c.name: c for c in columns}
    children = []
    for name in flow_schema().names:
        column = by_name.get(name)
        if name == "interface":
            children.append(native.ArrowChild(native.ARROW_INTERFACE, dictionary=_IF_DICT))
        elif name in ("direction_name", "proto_name"):
            source = by_name[name.removesuffix("_name")]
            children.append(native.ArrowChild(
                native.ARROW_NAMES, column=core.index(source),
                dictionary=_DIRECTION_DICT if name == "direction_name" else _PROTO_DICT))
        elif name == "agent_ip":
            children.append(native.ArrowChild(native.ARROW_AGENT, dictionary=_AGENT_DICT))
        elif column is None:  # pragma: no cover - flow_schema() has no other derived column
            raise RuntimeError(f"no native export for the column {name}")
        elif column.kind == "list":
            children.append(native.ArrowChild(native.ARROW_LIST, offset=column.offset,
                                              width=column.numpy.itemsize))
        elif _gate_of(name) == "features":
            children.append(native.ArrowChild(native.ARROW_GATED, offset=column.offset,
                                              width=column.width))
        else:
            children.append(native.ArrowChild(native.ARROW_COLUMN, column=core.index(column)))
    protos = [PROTOCOL_NAMES.get(i, str(i)) if i else "" for i in range(256)]
    return native.ArrowExporter(children, [None, list(DIRECTION_NAMES), protos, None])


def _interface_map(names: Mapping[int, str]) -> tuple[list[str], np.ndarray[Any, Any],
                                                   np.ndarray[Any, Any]]:
    """The ``interface`` dictionary and the sorted keys and indices the native pass uses.

    Keys are :func:`flowkit.model.interface_key` values (``netns << 32 | if_index``), the keys
    of ``batch.interfaces``; unknown interfaces get index 0 (``""``).
    """
    known = sorted((key, name) for key, name in names.items() if name)
    # Dictionary values are unique (pandas categories must be): "" first, then each name once.
    unique = {"": 0}
    for _, name in known:
        unique.setdefault(name, len(unique))
    keys = np.array([key for key, _ in known], dtype=np.uint64)
    values = np.array([unique[name] for _, name in known], dtype=np.int32)
    return list(unique), keys, values


def to_arrow(batch: FlowBatch) -> pa.RecordBatch:
    """The flows of ``batch`` as a ``pyarrow.RecordBatch`` of :func:`flow_schema`.

    The record batch owns its memory: it stays valid after the FlowBatch is released.
    """
    pa = require_pyarrow("FlowBatch.to_arrow()")
    exporter = _exporter()
    array = batch.array
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    dictionary, keys, values = _interface_map(batch.interfaces)
    agent = [batch.agent_ip] if batch.agent_ip else []
    address = exporter.export(array, keys, values, {_IF_DICT: dictionary, _AGENT_DICT: agent})
    # pyarrow takes the array over (and releases it, even when the import fails).
    return pa.RecordBatch._import_from_c(address, flow_schema())


def column_bytes_copied(n_flows: int, features: bool = True, dup_entries: int = 0) -> int:
    """Bytes :func:`to_arrow` copies out of the records for ``n_flows`` flows.

    ``features=False``: no flow carries optional-feature data (those columns then share a zero
    buffer). ``dup_entries``: DEDUPER entries over all flows (4 + 2 + 1 bytes each, plus the
    4-byte list offsets of every flow when there is at least one). The ``interface`` indices
    (4 bytes a flow) are computed, not copied, and are not counted.
    """
    columns = _columns()
    core = sum(c.width for c in columns if _gate_of(c.name) is None)
    optional = sum(c.width for c in columns if _gate_of(c.name) == "features")
    total = n_flows * (core + (optional if features else 0))
    if dup_entries:
        widths = sum(c.numpy.itemsize for c in columns if c.kind == "list")
        total += dup_entries * widths + 4 * (n_flows + 1)
    return total


def from_arrow(data: Any) -> FlowBatch:
    """A :class:`FlowBatch` from Arrow data of :func:`flow_schema` (a ``RecordBatch``, a
    ``Table`` such as Parquet files read back, or any object with ``__arrow_c_stream__``).

    Extra columns (hive ``date``/``hour`` partitions...) are ignored. Interface names and the
    agent address come back from the ``interface`` and ``agent_ip`` columns.
    """
    pa = require_pyarrow("flowkit.arrow.from_arrow()")
    import pyarrow.compute as pc
    if isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    elif isinstance(data, pa.Table):
        table = data
    else:
        table = pa.table(data)
    n = table.num_rows
    out = np.zeros(n, dtype=FLOW_DTYPE)
    rows = out.view(np.uint8).reshape(n, FLOW_DTYPE.itemsize)
    for column in _columns():
        values = table.column(column.name).combine_chunks()
        if column.kind == "binary":
            raw = np.frombuffer(values.buffers()[1], dtype=np.uint8,
                                count=column.width * (values.offset + n))
            raw = raw[column.width * values.offset:].reshape(n, column.width)
        elif column.kind == "list":  # the entries used, padded with zeros (fixed-size too)
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            slots = column.width // column.numpy.itemsize
            if n and int(lengths.max()) > slots:
                raise ValueError(f"{column.name}: a list has more than {slots} entries")
            padded = np.zeros((n, slots), dtype=column.numpy)
            padded[np.arange(slots)[None, :] < lengths[:, None]] = \
                values.flatten().to_numpy(zero_copy_only=False)
            raw = padded.view(np.uint8).reshape(n, column.width)
        else:
            if column.kind == "timestamp":
                values = values.cast(pa.int64())
            raw = values.to_numpy(zero_copy_only=False).astype(column.numpy).view(np.uint8)
            raw = raw.reshape(n, column.width)
        rows[:, column.offset:column.offset + column.width] = raw
    names: dict[int, str] = {}
    if "interface" in table.column_names and n:
        pairs = pa.table({"i": table.column("if_index"), "ns": table.column("netns"),
                          "n": table.column("interface").cast(pa.string())})
        for row in pairs.group_by(["i", "ns", "n"]).aggregate([]).to_pylist():
            if row["n"]:
                names[(int(row["ns"]) << 32) | int(row["i"])] = row["n"]
    agent = None
    if "agent_ip" in table.column_names and n:
        valid = table.column("agent_ip").drop_null()
        if len(valid):
            agent = str(valid[0].as_py())
    return FlowBatch(out, names, agent)


def ip_strings(addresses: Any) -> pa.Array:
    """Format a ``src_ip`` / ``dst_ip`` column (16-byte addresses) as strings: IPv4 dotted
    (``198.18.0.1``), IPv6 compressed (``fd00::1``). For display; filter and sort on the bytes.

    Accepts a pyarrow array or chunked array, or a polars Series.
    """
    from flowkit.model import ip_from_16

    pa = require_pyarrow("flowkit.arrow.ip_strings()")
    if hasattr(addresses, "to_arrow") and not isinstance(addresses, pa.ChunkedArray):
        addresses = addresses.to_arrow()  # polars
    cache: dict[bytes, str] = {}
    out: list[str | None] = []
    for raw in addresses.to_pylist():
        if raw is None:
            out.append(None)
            continue
        text = cache.get(raw)
        if text is None:
            text = cache[raw] = str(ip_from_16(raw))
        out.append(text)
    return pa.array(out, pa.string())


def ip_bytes(address: str) -> bytes:
    """The 16-byte form of an address as stored in ``src_ip`` / ``dst_ip`` (for filters)."""
    from flowkit.model import ip_to_16

    return ip_to_16(address)
