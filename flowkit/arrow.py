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
* ``agent_ip`` (dictionary, null when unknown) from ``batch.agent_ip``.

A FlowBatch is an array of C structs (one row of 104 bytes per flow, the layout the kernel and
the accounter write), while Arrow keeps each column contiguous: the fixed-width fields are
therefore copied, all of them in a single C pass over the rows (``fk_gather_columns``), into
one allocation that the Arrow buffers then use without further copies. Derived columns reuse
those buffers; only the ``interface`` indices (4 bytes a flow) are computed.
"""

from __future__ import annotations

import functools
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
    if column.kind == "list":
        item = column.numpy.newbyteorder("=")
        return pa.list_(pa.from_numpy_dtype(item), column.width // item.itemsize)
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


def _interface_column(pa: Any, if_index: np.ndarray[Any, Any], names: dict[int, str]) -> Any:
    """Dictionary-encoded interface names (``""`` for indexes without a known name).

    ``if_index`` holds :func:`flowkit.model.interface_key` values (``netns << 32 | if_index``),
    the keys of ``batch.interfaces``.
    """
    known = sorted((index, name) for index, name in names.items() if name)
    # Dictionary values are unique (pandas categories must be): "" first, then each name once.
    unique = {"": 0}
    for _, name in known:
        unique.setdefault(name, len(unique))
    dictionary = pa.array(list(unique), pa.string())
    n = len(if_index)
    if not known or n == 0:
        indices = np.zeros(n, dtype=np.int32)
    else:
        keys = np.array([index for index, _ in known], dtype=np.uint64)
        values = np.array([unique[name] for _, name in known], dtype=np.int32)
        top = max(int(if_index.max()), int(keys[-1]))
        if top < (1 << 20):
            lut = np.zeros(top + 1, dtype=np.int32)
            lut[keys] = values
            indices = lut[if_index]
        else:  # sparse, huge indexes: look them up through the sorted keys
            pos = np.clip(np.searchsorted(keys, if_index), 0, len(keys) - 1)
            indices = np.where(keys[pos] == if_index, values[pos], 0).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), dictionary, safe=False)


# Columns that hold data only when their gate column (by name prefix) is non-zero for the flow:
# the optional features (FLOW_DTYPE: zero unless ``features`` has the feature's bit) and the
# DEDUPER lists (``dup_count`` entries used).
_GATES = {"features": ("drop_", "rtt_", "dns_"), "dup_count": ("dup_",)}


def _gate_of(name: str) -> str | None:
    for gate, prefixes in _GATES.items():
        if name != gate and name.startswith(prefixes):
            return gate
    return None


def to_arrow(batch: FlowBatch) -> pa.RecordBatch:
    """The flows of ``batch`` as a ``pyarrow.RecordBatch`` of :func:`flow_schema`.

    The record batch owns its memory: it stays valid after the FlowBatch is released.
    """
    from flowkit.native.encode import gather_columns

    pa = require_pyarrow("FlowBatch.to_arrow()")
    array = batch.array
    n = len(array)
    columns = _columns()
    # One allocation for every column, each starting on a 64-byte boundary.
    starts = []
    total = 0
    for column in columns:
        starts.append(total)
        total += -(-column.width * n // _ALIGN) * _ALIGN
    # From Arrow's memory pool: freed batches' memory is reused without new page faults.
    buffer = pa.allocate_buffer(max(total, _ALIGN))
    zero_columns: set[str] = set()
    if n:
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        rows = array
        base = int(buffer.address)

        def gather(selected: list[tuple[_Column, int]]) -> None:
            gather_columns(rows, base, [(c.offset, c.width, start) for c, start in selected])

        # Optional-feature columns are zero unless their gate column says otherwise (see
        # FLOW_DTYPE): gather the rest first, and those only when a flow carries the feature.
        placed = list(zip(columns, starts, strict=True))
        gated = {c.name for c, _ in placed if _gate_of(c.name) is not None}
        gather([(c, st) for c, st in placed if c.name not in gated])
        gates = {c.name: (c, st) for c, st in placed}
        for gate in {_gate_of(name) for name in gated}:
            members = [(c, st) for c, st in placed if _gate_of(c.name) == gate]
            if gate not in gates:
                gather(members)
                continue
            gate_column, gate_start = gates[gate]
            values = np.frombuffer(buffer, np.uint8, gate_column.width * n, gate_start)
            if values.any():
                gather(members)
            else:
                zero_columns.update(c.name for c, _ in members)
    dictionaries = _dictionaries()
    schema = flow_schema()
    gathered = {column.name: buffer.slice(start, column.width * n)
                for column, start in zip(columns, starts, strict=True)
                if column.name == "netns"}
    arrays = []
    zeros = None
    for column, start in zip(columns, starts, strict=True):
        if column.name in zero_columns:
            if zeros is None:  # calloc'd: untouched pages cost nothing until read
                zeros = pa.py_buffer(np.zeros(max(c.width for c in columns) * n, np.uint8))
            data = zeros.slice(0, column.width * n)
        else:
            data = buffer.slice(start, column.width * n)
        if column.kind == "list":
            item_type = _arrow_type(pa, column)
            count = column.width // column.numpy.itemsize
            items = pa.Array.from_buffers(item_type.value_type, n * count, [None, data])
            arrays.append(pa.FixedSizeListArray.from_arrays(items, count))
            continue
        arrays.append(pa.Array.from_buffers(_arrow_type(pa, column), n, [None, data]))
        if column.name == "if_index":
            # Interface ids from the gathered columns (contiguous), not the strided records.
            if_index = np.frombuffer(data, dtype=np.uint32, count=n)
            netns = gathered.get("netns")
            ids = if_index.astype(np.uint64)
            if netns is not None:
                ids |= np.frombuffer(netns, dtype=np.uint16, count=n).astype(np.uint64) << \
                    np.uint64(32)
            arrays.append(_interface_column(pa, ids, dict(batch.interfaces)))
        elif column.name in ("direction", "proto"):
            index_type, dictionary = dictionaries[f"{column.name}_name"]
            indices = pa.Array.from_buffers(index_type, n, [None, data])
            arrays.append(pa.DictionaryArray.from_arrays(indices, dictionary, safe=False))
    if batch.agent_ip:
        agent = pa.DictionaryArray.from_arrays(
            pa.Array.from_buffers(pa.int8(), n, [None, pa.py_buffer(bytes(n))]),
            pa.array([batch.agent_ip], pa.string()), safe=False)
    else:
        agent = pa.nulls(n, pa.dictionary(pa.int8(), pa.string()))
    arrays.append(agent)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def column_bytes_copied(n_flows: int, features: bool = True) -> int:
    """Bytes :func:`to_arrow` copies out of the records for ``n_flows`` flows (the C gather);
    ``features=False``: a batch where no flow carries optional-feature or DEDUPER data."""
    return n_flows * sum(column.width for column in _columns()
                         if features or _gate_of(column.name) is None)


def from_arrow(data: Any) -> FlowBatch:
    """A :class:`FlowBatch` from Arrow data of :func:`flow_schema` (a ``RecordBatch``, a
    ``Table`` such as Parquet files read back, or any object with ``__arrow_c_stream__``).

    Extra columns (hive ``date``/``hour`` partitions...) are ignored. Interface names and the
    agent address come back from the ``interface`` and ``agent_ip`` columns.
    """
    pa = require_pyarrow("flowkit.arrow.from_arrow()")
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
        elif column.kind == "list":
            flat = values.flatten().to_numpy(zero_copy_only=False)
            raw = flat.astype(column.numpy).view(np.uint8).reshape(n, column.width)
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
