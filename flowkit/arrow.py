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
column can point into the rows, so the fields are copied. The fields every flow carries (101
bytes a flow) are copied in one C pass over the rows with compile-time offsets
(``fk_flow_columns``), which also computes the ``interface`` indices; it runs at the speed of
reading the rows from memory. The optional-feature fields are copied only when a flow of the
batch carries such data (otherwise they share one zero buffer), the DEDUPER lists only when a
flow has entries (otherwise empty lists over a shared zero offsets buffer). The name columns
reuse the copied buffers (``direction_name``, ``proto_name``) or shared buffers (``agent_ip``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flowkit.model import FLOW_DTYPE, MAX_DUPS, FlowBatch

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

@dataclass(frozen=True)
class _Plan:
    """What :func:`to_arrow` does for each column, worked out once per process."""

    columns: tuple[_Column, ...]
    types: tuple[Any, ...]  # Arrow type of each column
    core: tuple[int, ...]  # columns copied by fk_flow_columns (all flows carry them)
    features: tuple[int, ...]  # columns with data only when ``features`` says so
    lists: tuple[int, ...]  # DEDUPER lists (``dup_count`` entries of each flow)
    names: tuple[str, ...]  # schema order: column names, derived columns included


@functools.cache
def _plan() -> _Plan:
    from flowkit.native.encode import flow_column_layout

    pa = require_pyarrow()
    columns = _columns()
    types = tuple(_arrow_type(pa, column) for column in columns)
    core = tuple(i for i, c in enumerate(columns) if _gate_of(c.name) is None)
    layout = [(columns[i].offset, columns[i].width) for i in core]
    if layout != flow_column_layout():  # pragma: no cover - a unit test keeps them equal
        raise RuntimeError("csrc/include/40-columns.h FK_FLOW_COLUMN_LIST does not match "
                           "FLOW_DTYPE: rebuild the extension (make native) or update the list")
    features = tuple(i for i, c in enumerate(columns) if _gate_of(c.name) == "features")
    lists = tuple(i for i, c in enumerate(columns) if c.kind == "list")
    return _Plan(columns, types, core, features, lists, tuple(flow_schema().names))


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class _Lease:
    """The owner Arrow keeps alive while it uses a recycled buffer (see :class:`_Recycler`)."""

    __slots__ = ("__weakref__",)


class _Recycler:
    """Output memory of :func:`to_arrow`, reused once Arrow no longer references it.

    Memory fresh from the allocator costs a page fault per 4 KiB on its first write, which is
    more than the copy into it; allocators return freed blocks of this size to the system
    within milliseconds, so every batch would pay that again. A block handed out is wrapped in
    a ``pyarrow.foreign_buffer`` whose owner (a :class:`_Lease`) lives as long as any Arrow
    array over it, in this process or exported through the C data interface; when the owner
    goes, the block comes back here. At most ``keep`` blocks totalling ``max_bytes`` are kept.
    """

    def __init__(self, keep: int = 4, max_bytes: int = 256 << 20) -> None:
        self._keep = keep
        self._max_bytes = max_bytes
        self._free: list[np.ndarray[Any, Any]] = []
        self._lock = threading.Lock()

    def buffer(self, pa: Any, nbytes: int) -> Any:
        """A writable Arrow buffer of ``nbytes`` (contents undefined)."""
        block = None
        with self._lock:
            fits = [i for i, b in enumerate(self._free)
                    if nbytes <= b.nbytes <= 2 * nbytes + (1 << 20)]
            if fits:
                block = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        if block is None:
            block = np.empty(nbytes, dtype=np.uint8)
        lease = _Lease()
        weakref.finalize(lease, self._give_back, block)
        return pa.foreign_buffer(block.ctypes.data, nbytes, base=lease)

    def _give_back(self, block: np.ndarray[Any, Any]) -> None:
        with self._lock:
            self._free.append(block)
            self._free.sort(key=lambda b: -b.nbytes)
            while len(self._free) > self._keep or \
                    sum(b.nbytes for b in self._free) > self._max_bytes:
                self._free.pop(0)  # the largest


_recycler = _Recycler()
_zeros: Any = None


def _zero_buffer(pa: Any, nbytes: int) -> Any:
    """A read-only zero-filled Arrow buffer of at least ``nbytes``, shared by every batch."""
    global _zeros
    if _zeros is None or _zeros.size < nbytes:
        _zeros = pa.py_buffer(np.zeros(max(nbytes, 1 << 16), np.uint8))
    return _zeros.slice(0, nbytes)


def _interface_map(names: Mapping[int, str]) -> tuple[Any, np.ndarray[Any, Any],
                                                   np.ndarray[Any, Any]]:
    """The ``interface`` dictionary and the sorted keys and indices ``fk_flow_columns`` uses.

    Keys are :func:`flowkit.model.interface_key` values (``netns << 32 | if_index``), the keys
    of ``batch.interfaces``; unknown interfaces get index 0 (``""``).
    """
    pa = require_pyarrow()
    known = sorted((key, name) for key, name in names.items() if name)
    # Dictionary values are unique (pandas categories must be): "" first, then each name once.
    unique = {"": 0}
    for _, name in known:
        unique.setdefault(name, len(unique))
    keys = np.array([key for key, _ in known], dtype=np.uint64)
    values = np.array([unique[name] for _, name in known], dtype=np.int32)
    return pa.array(list(unique), pa.string()), keys, values


def _list_column(pa: Any, array: np.ndarray[Any, Any], column: _Column, list_type: Any,
                 counts: np.ndarray[Any, Any] | None, offsets: Any) -> Any:
    """A DEDUPER list column: the first ``dup_count`` entries of each flow."""
    n = len(array)
    if counts is None:  # no flow has entries: empty lists, no values
        values = pa.array([], list_type.value_type)
    else:
        used = np.arange(MAX_DUPS)[None, :] < counts[:, None]
        values = pa.array(array[column.field][used], list_type.value_type)
    return pa.ListArray.from_buffers(list_type, n, [None, offsets], children=[values])


def to_arrow(batch: FlowBatch) -> pa.RecordBatch:
    """The flows of ``batch`` as a ``pyarrow.RecordBatch`` of :func:`flow_schema`.

    The record batch owns its memory: it stays valid after the FlowBatch is released.
    """
    pa = require_pyarrow("FlowBatch.to_arrow()")
    from flowkit.native.encode import flow_columns, gather_columns

    plan = _plan()
    array = batch.array
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    n = len(array)
    columns, types = plan.columns, plan.types
    dictionary, keys, values = _interface_map(batch.interfaces)
    # One block (recycled: no page faults) for the core columns and the interface indices,
    # each starting on a 64-byte boundary.
    starts = {}
    total = 0
    for i in plan.core:
        starts[i] = total
        total += _aligned(columns[i].width * n)
    buffer = _recycler.buffer(pa, max(total + _aligned(4 * n), _ALIGN))
    base = buffer.address
    gates = 0
    if n:
        gates = flow_columns(array, [base + starts[i] for i in plan.core], keys, values,
                             base + total)
    data: dict[int, Any] = {i: buffer.slice(starts[i], columns[i].width * n) for i in plan.core}
    if gates & 0xFF:  # a flow carries optional-feature data: copy those columns too
        feature_starts = {}
        feature_total = 0
        for i in plan.features:
            feature_starts[i] = feature_total
            feature_total += _aligned(columns[i].width * n)
        extra = _recycler.buffer(pa, feature_total)
        gather_columns(array, extra.address, [(columns[i].offset, columns[i].width,
                                               feature_starts[i]) for i in plan.features])
        data.update({i: extra.slice(feature_starts[i], columns[i].width * n)
                     for i in plan.features})
    else:  # all zero: one shared zero buffer, nothing copied
        data.update({i: _zero_buffer(pa, columns[i].width * n) for i in plan.features})
    if gates & 0x100:
        counts = np.minimum(array["dup_count"], MAX_DUPS)
        offsets_np = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets_np[1:])
        offsets = pa.py_buffer(offsets_np)
    else:
        counts, offsets = None, _zero_buffer(pa, 4 * (n + 1))
    by_name: dict[str, Any] = {}
    for i, column in enumerate(columns):
        if column.kind == "list":
            by_name[column.name] = _list_column(pa, array, column, types[i], counts, offsets)
            continue
        by_name[column.name] = pa.Array.from_buffers(types[i], n, [None, data[i]])
    interface_indices = pa.Array.from_buffers(pa.int32(), n,
                                              [None, buffer.slice(total, 4 * n)])
    by_name["interface"] = pa.DictionaryArray.from_arrays(interface_indices, dictionary,
                                                          safe=False)
    for name in ("direction", "proto"):
        index_type, names = _dictionaries()[f"{name}_name"]
        indices = pa.Array.from_buffers(index_type, n, [None, by_name[name].buffers()[1]])
        by_name[f"{name}_name"] = pa.DictionaryArray.from_arrays(indices, names, safe=False)
    if batch.agent_ip:
        by_name["agent_ip"] = pa.DictionaryArray.from_arrays(
            pa.Array.from_buffers(pa.int8(), n, [None, _zero_buffer(pa, n)]),
            pa.array([batch.agent_ip], pa.string()), safe=False)
    else:
        by_name["agent_ip"] = pa.nulls(n, pa.dictionary(pa.int8(), pa.string()))
    return pa.RecordBatch.from_arrays([by_name[name] for name in plan.names],
                                      schema=flow_schema())


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
