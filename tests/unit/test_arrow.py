"""FlowBatch as Arrow data: schema, values, the PyCapsule interface and the readers that use it."""

from __future__ import annotations

import ipaddress
import sys

import numpy as np
import pytest

from flowkit.model import FLOW_DTYPE, FlowBatch, ip_to_16
from flowkit.testing import make_flow

pa = pytest.importorskip("pyarrow")


def random_batch(n: int, seed: int = 7) -> FlowBatch:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * FLOW_DTYPE.itemsize, dtype=np.uint8)
    array = raw.view(FLOW_DTYPE).copy()
    # Times within the last day (timestamps must stay in int64's range).
    array["start_ns"] = rng.integers(1_700_000_000, 1_800_000_000, n, dtype=np.uint64) * 10**9
    array["end_ns"] = array["start_ns"] + rng.integers(0, 10**9, n, dtype=np.uint64)
    array["key"]["direction"] %= 2
    array["key"]["if_index"] = rng.integers(1, 5, n)
    array["pad"] = 0  # as the C code writes it
    return FlowBatch(array, {1: "lo", 2: "eth0", 3: "eth1"}, "198.18.0.9")


def leaf_fields(dtype: np.dtype, prefix: str = "") -> list[str]:  # type: ignore[type-arg]
    out = []
    for name in dtype.names or ():
        if name.startswith("pad"):
            continue
        sub = dtype.fields[name][0]  # type: ignore[index]
        out += leaf_fields(sub) if sub.fields else [name]
    return out


def test_every_record_field_is_a_column() -> None:
    from flowkit.arrow import flow_schema

    renamed = {"start_ns": "time_start", "end_ns": "time_end"}
    names = flow_schema().names
    for name in leaf_fields(FLOW_DTYPE):
        assert renamed.get(name, name) in names
    assert names[-1] == "agent_ip"


def test_documented_types() -> None:
    from flowkit.arrow import flow_schema

    schema = flow_schema()
    assert schema.field("time_start").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("src_ip").type == pa.binary(16)
    assert schema.field("src_mac").type == pa.binary(6)
    assert schema.field("bytes").type == pa.uint64()
    assert schema.field("direction_name").type == pa.dictionary(pa.int8(), pa.string())
    assert schema.field("proto_name").type == pa.dictionary(pa.uint8(), pa.string())
    assert schema.field("interface").type == pa.dictionary(pa.int32(), pa.string())


def test_columns_hold_the_flows() -> None:
    batch = random_batch(500)
    rows = batch.to_arrow().to_pylist()
    assert len(rows) == 500
    for flow, row in zip(batch, rows, strict=True):
        assert row["if_index"] == flow.if_index
        assert row["interface"] == flow.interface
        assert row["direction_name"] == ("ingress", "egress")[flow.direction]
        assert row["src_ip"] == ip_to_16(flow.src_ip)
        assert row["dst_ip"] == ip_to_16(flow.dst_ip)
        assert row["src_mac"] == flow.src_mac
        assert (row["src_port"], row["dst_port"]) == (flow.src_port, flow.dst_port)
        assert (row["packets"], row["bytes"], row["flags"]) == (flow.packets, flow.bytes,
                                                                  flow.flags)
        assert row["time_start"].timestamp() == pytest.approx(flow.start_ns / 1e9)
        assert row["agent_ip"] == "198.18.0.9"


def test_names_of_protocols_and_unknown_interfaces() -> None:
    flows = [make_flow(proto=p, if_index=i, interface=n)
             for p, i, n in ((6, 2, "eth0"), (17, 9, ""), (58, 2, "eth0"), (0, 9, ""))]
    table = FlowBatch.from_flows(flows).to_arrow()
    assert table.column("proto_name").to_pylist() == ["TCP", "UDP", "ICMPv6", ""]
    assert table.column("interface").to_pylist() == ["eth0", "", "eth0", ""]
    assert table.column("agent_ip").null_count == 4


def test_addresses_sort_in_address_order() -> None:
    addresses = ["198.18.0.10", "198.18.0.9", "fd00::1", "198.19.0.1", "10.0.0.1"]
    flows = [make_flow(dst_ip=a) for a in addresses]
    table = FlowBatch.from_flows(flows).to_arrow()
    order = pa.compute.sort_indices(table, [("dst_ip", "ascending")]).to_pylist()
    by_bytes = sorted(addresses, key=lambda a: ip_to_16(ipaddress.ip_address(a)))
    assert [addresses[i] for i in order] == by_bytes


def test_record_batch_outlives_the_flow_batch() -> None:
    batch = random_batch(100)
    total = int(batch.array["bytes"].sum())
    released = []
    owned = FlowBatch(batch.array.copy(), release=lambda: released.append(True))
    arrow = owned.to_arrow()
    owned.array[:] = 0
    owned.release()
    assert released == [True]
    assert pa.compute.sum(arrow.column("bytes")).as_py() != 0
    assert pa.compute.sum(batch.to_arrow().column("bytes")).as_py() == total


def test_empty_batch() -> None:
    table = FlowBatch.empty().to_arrow()
    assert table.num_rows == 0
    assert table.schema.names == FlowBatch.empty().to_arrow().schema.names


def test_pycapsule_readers_agree() -> None:
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    batch = random_batch(2000)
    expected = int(batch.array["bytes"].astype(object).sum())
    by_port: dict[int, int] = {}
    for flow in batch:
        by_port[flow.dst_port] = by_port.get(flow.dst_port, 0) + flow.bytes

    assert pa.record_batch(batch).num_rows == 2000
    assert pa.table(batch).column("bytes").to_pylist() == batch.array["bytes"].tolist()
    frame = pl.DataFrame(batch)
    assert frame["bytes"].cast(pl.Decimal(38, 0)).sum() == expected
    grouped = frame.group_by("dst_port").agg(pl.col("bytes").cast(pl.Decimal(38, 0)).sum())
    assert {r[0]: int(r[1]) for r in grouped.iter_rows()} == by_port
    assert pl.from_arrow(batch).struct.unnest().shape == frame.shape  # type: ignore[union-attr]
    total = duckdb.sql("select sum(bytes)::hugeint from batch").fetchall()
    assert total == [(expected,)]
    rows = duckdb.sql("select dst_port, sum(bytes)::hugeint from batch group by dst_port")
    assert {port: int(b) for port, b in rows.fetchall()} == by_port
    frame_pd = batch.to_pandas()
    assert str(frame_pd["time_start"].dtype) == "datetime64[ns, UTC]"
    assert {int(k): int(v) for k, v in
            frame_pd.groupby("dst_port")["bytes"].apply(lambda s: sum(map(int, s))).items()
            } == by_port


def test_from_arrow_round_trip() -> None:
    from flowkit.arrow import from_arrow

    batch = random_batch(300)
    back = from_arrow(batch.to_arrow())
    assert back.to_dicts() == batch.to_dicts()
    assert np.array_equal(back.array["key"], batch.array["key"])


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowkit.arrow import ArrowMissingError

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    batch = random_batch(3)
    with pytest.raises(ArrowMissingError, match=r"pip install 'flowkit-ebpf\[arrow\]'"):
        batch.to_arrow()
    assert len(batch.to_dicts()) == 3  # the core keeps working


def test_docs_schema_table_matches_the_schema() -> None:
    import re
    from pathlib import Path

    from flowkit.arrow import flow_schema

    text = (Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text()
    table = text.split("<!-- schema -->", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        names, arrow_types = line.split("|")[1:3]
        found = re.findall(r"`(\w+)`", names)
        types = [t.strip() for t in re.split(r",\s*(?![^<\[]*[>\]])", arrow_types)]
        for name, arrow_type in zip(found, types * len(found) if len(types) == 1 else types,
                                    strict=False):
            documented[name] = arrow_type

    def spelled(t: object) -> str:
        if isinstance(t, pa.DictionaryType):
            return f"dictionary<{t.index_type}, {t.value_type}>"
        if isinstance(t, pa.ListType):
            return f"list<{t.value_type}>"
        return str(t)

    assert documented == {f.name: spelled(f.type) for f in flow_schema()}


def test_feature_columns_are_gathered_only_when_a_flow_has_the_feature() -> None:
    batch = random_batch(50)
    array = batch.array
    array["features"] = 0
    array["dup_count"] = 0
    array["drop_bytes"] = 7  # not data: no flow has the drops bit
    table = batch.to_arrow()
    assert set(table.column("drop_bytes").to_pylist()) == {0}
    assert set(table.column("dns_name").to_pylist()) == {bytes(32)}
    array["features"][3] = 1
    array["dup_count"][4] = 2
    table = batch.to_arrow()
    assert table.column("drop_bytes").to_pylist() == [7] * 50
    assert table.column("dup_if_index")[4].as_py() == array["dup_if_index"][4][:2].tolist()


def test_dedup_lists_hold_the_interfaces_a_flow_was_seen_on() -> None:
    from flowkit.arrow import from_arrow

    batch = random_batch(6)
    array = batch.array
    for field in ("dup_if_index", "dup_netns", "dup_direction"):
        array[field] = 0
    array["dup_count"] = [0, 1, 6, 0, 2, 0]
    array["dup_if_index"][1, 0] = 3
    array["dup_if_index"][2] = [1, 2, 3, 4, 5, 6]
    array["dup_if_index"][4, :2] = [7, 8]
    array["dup_netns"][4, :2] = [0, 5]
    array["dup_direction"][4, :2] = [1, 0]
    table = batch.to_arrow()
    assert table.column("dup_if_index").to_pylist() == [[], [3], [1, 2, 3, 4, 5, 6], [], [7, 8],
                                                        []]
    assert table.column("dup_netns")[4].as_py() == [0, 5]
    assert table.column("dup_direction")[4].as_py() == [1, 0]
    back = from_arrow(table)
    for field in ("dup_if_index", "dup_netns", "dup_direction", "dup_count"):
        assert np.array_equal(back.array[field], array[field])
    array["dup_count"] = 0
    assert set(map(len, batch.to_arrow().column("dup_netns").to_pylist())) == {0}


def test_from_arrow_reads_fixed_size_dedup_lists() -> None:
    """Files written when the ``dup_*`` columns were fixed_size_list[6] still read back."""
    from flowkit.arrow import from_arrow

    batch = random_batch(4)
    batch.array["dup_count"] = [0, 6, 1, 0]
    table = batch.to_arrow()
    for name, width in (("dup_if_index", pa.uint32()), ("dup_netns", pa.uint16()),
                        ("dup_direction", pa.uint8())):
        values = pa.array(batch.array[name].reshape(-1), width)
        fixed = pa.FixedSizeListArray.from_arrays(values, 6)
        table = table.set_column(table.schema.get_field_index(name), name, fixed)
    back = from_arrow(table)
    assert np.array_equal(back.array["dup_if_index"], batch.array["dup_if_index"])


def test_native_column_list_matches_the_record() -> None:
    """fk_flow_columns (csrc/include/40-columns.h) copies exactly the columns every flow
    carries, at FLOW_DTYPE's offsets: a field added to the record must be added there too."""
    from flowkit.arrow import _columns, _gate_of
    from flowkit.native.encode import flow_column_layout

    expected = [(c.offset, c.width) for c in _columns() if _gate_of(c.name) is None]
    assert flow_column_layout() == expected


def test_interfaces_in_other_namespaces_are_named_by_their_key() -> None:
    from flowkit.model import interface_key

    flows = [make_flow(if_index=i) for i in (2, 2, 3, 2, 40)]
    batch = FlowBatch.from_flows(flows)
    batch.array["key"]["netns"] = [0, 1, 0, 1, 0]
    names = {interface_key(2, 0): "eth0", interface_key(2, 1): "veth-a",
             interface_key(3, 0): "eth1", interface_key(9, 0): "eth9"}
    table = FlowBatch(batch.array, names).to_arrow()
    assert table.column("interface").to_pylist() == ["eth0", "veth-a", "eth1", "veth-a", ""]


def test_output_memory_is_reused_only_after_arrow_let_go_of_it() -> None:
    import gc

    first, second = random_batch(3000, seed=1), random_batch(3000, seed=2)
    kept = first.to_arrow()
    address = kept.column("bytes").buffers()[1].address
    for _ in range(3):  # while `kept` lives, its memory is never handed out again
        other = second.to_arrow()
        assert other.column("bytes").buffers()[1].address != address
        del other
    assert kept.column("bytes").to_pylist() == first.array["bytes"].tolist()
    del kept
    gc.collect()
    addresses = set()
    for _ in range(3):  # now the blocks come back instead of fresh memory
        addresses.add(second.to_arrow().column("bytes").buffers()[1].address)
    assert len(addresses) == 1


def _expected_column(array: np.ndarray, name: str) -> list[object]:  # type: ignore[type-arg]
    """What column ``name`` must hold, computed from the records with numpy alone."""
    from flowkit.arrow import _columns

    column = {c.name: c for c in _columns()}[name]
    values = array["key"][column.field] if column.field in array["key"].dtype.names \
        else array[column.field]
    if column.kind == "binary":
        return [bytes(v) for v in values.reshape(len(array), -1)]
    if column.kind == "list":
        counts = np.minimum(array["dup_count"], 6)
        return [v[:c].tolist() for v, c in zip(values, counts, strict=True)]
    return values.tolist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 1000, 40_007])
def test_every_column_equals_the_records_at_any_batch_size(n: int) -> None:
    """The native pass works on groups of 16 rows, blocks of 256 and, from 32,768 rows, two
    threads over halves: every size around those boundaries gives exactly the records."""
    from flowkit.arrow import _columns
    from flowkit.model import interface_key

    batch = random_batch(n, seed=n)
    array = batch.array
    rng = np.random.default_rng(n)
    array["key"]["netns"] = rng.integers(0, 3, n)
    array["features"] = 0
    array["features"][n // 2] = 2  # the optional columns hold data
    array["dup_count"] = rng.integers(0, 8, n)  # 7 counts as 6
    names = {interface_key(i, ns): f"if{i}-{ns}" for i in range(1, 5) for ns in (0, 2)}
    names[interface_key(3, 0)] = "eth0"
    names[interface_key(4, 2)] = "eth0"  # two keys, one name
    table = FlowBatch(array, names).to_arrow()
    table.validate(full=True)
    for column in _columns():
        got = table.column(column.name)
        if column.kind == "timestamp":
            got = got.cast(pa.int64())
        assert got.to_pylist() == _expected_column(array, column.name), column.name
    expected_names = [names.get(interface_key(int(i), int(ns)), "")
                      for i, ns in zip(array["key"]["if_index"], array["key"]["netns"],
                                       strict=True)]
    assert table.column("interface").to_pylist() == expected_names
    from flowkit.arrow import PROTOCOL_NAMES
    assert table.column("proto_name").to_pylist() == [
        PROTOCOL_NAMES.get(int(p), str(int(p))) if p else "" for p in array["key"]["proto"]]
    assert table.column("direction_name").to_pylist() == [
        ("ingress", "egress")[d] for d in array["key"]["direction"]]
    assert table.column("agent_ip").null_count == n


def test_record_batches_held_at_once_keep_their_own_values() -> None:
    """Output memory is recycled: a record batch still held is never written again."""
    import gc

    from flowkit.native.encode import arrow_pool_stats

    first, second = random_batch(5000, seed=11), random_batch(5000, seed=12)
    _, in_use = arrow_pool_stats()
    a, b = first.to_arrow(), second.to_arrow()
    for _ in range(5):  # more conversions while both are held
        first.to_arrow()
        second.to_arrow()
    for held, batch in ((a, first), (b, second)):
        assert held.column("bytes").to_pylist() == batch.array["bytes"].tolist()
        assert held.column("src_ip").to_pylist() == _expected_column(batch.array, "src_ip")
        assert held.column("interface").to_pylist() == [f.interface for f in batch]
    assert arrow_pool_stats()[1] == in_use + 2
    del a, b, held
    gc.collect()
    assert arrow_pool_stats()[1] == in_use
