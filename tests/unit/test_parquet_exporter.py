"""The parquet exporter: exact round trip, hive partitions, rotation, temporary files, drops."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from flowkit.model import FlowBatch
from flowkit.testing import make_flow

pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")

from flowkit.arrow import from_arrow  # noqa: E402
from flowkit.metrics import Metrics  # noqa: E402
from flowkit_plugins.parquet_exporter import ParquetExporter, ParquetSettings  # noqa: E402

HOUR = 3_600_000_000_000
T0 = 1_796_000_000 * 1_000_000_000  # 2026-11-30 00:53:20 UTC


def batch_of(n: int, start_ns: int = T0, port0: int = 0) -> FlowBatch:
    flows = [make_flow(src_port=(port0 + i) % 65536, bytes=100 + i, packets=1 + i % 7,
                       start_ns=start_ns + i, end_ns=start_ns + i + 1000) for i in range(n)]
    return FlowBatch.from_flows(flows, agent_ip="198.18.0.9")


def exporter(tmp_path: Path, **settings: object) -> ParquetExporter:
    base: dict[str, object] = {"parquet_directory": str(tmp_path / "flows")}
    base.update(settings)
    return ParquetExporter(ParquetSettings(**base), Metrics())  # type: ignore[arg-type]


def read_back(directory: Path) -> list[dict[str, object]]:
    if not list(directory.rglob("*.parquet")):
        return []
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    return from_arrow(table).to_dicts()


def canonical(flows: list[dict[str, object]]) -> list[str]:
    return sorted(json.dumps(f, sort_keys=True) for f in flows)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    exp = exporter(tmp_path)
    batches = [batch_of(500, port0=1000 * k) for k in range(4)]
    expected = [d for b in batches for d in b.to_dicts()]
    for b in batches:
        exp.export(b)
    exp.shutdown(5)
    assert canonical(read_back(tmp_path / "flows")) == canonical(expected)
    assert exp.written_flows == 2000
    assert exp.dropped_flows == 0


def test_hive_partitions_by_flow_start_hour(tmp_path: Path) -> None:
    exp = exporter(tmp_path)
    mixed = FlowBatch(np.concatenate([batch_of(3, T0).array, batch_of(2, T0 + HOUR).array]))
    exp.export(mixed)
    exp.shutdown(5)
    files = sorted(p.relative_to(tmp_path / "flows").parent.as_posix()
                   for p in (tmp_path / "flows").rglob("*.parquet"))
    assert files == ["date=2026-11-30/hour=00", "date=2026-11-30/hour=01"]
    table = ds.dataset(tmp_path / "flows", partitioning="hive").to_table()
    hours = table.group_by("hour").aggregate([("bytes", "count")]).to_pylist()
    assert sorted((r["hour"], r["bytes_count"]) for r in hours) == [(0, 3), (1, 2)]


def test_zstd_and_row_group_size(tmp_path: Path) -> None:
    exp = exporter(tmp_path, parquet_row_group_size=1024)
    for k in range(5):
        exp.export(batch_of(1000, port0=k * 1000))
    exp.shutdown(5)
    (path,) = (tmp_path / "flows").rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 5000
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        1024, 1024, 1024, 1024, 904]
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_rotation_by_size(tmp_path: Path) -> None:
    exp = exporter(tmp_path, parquet_row_group_size=1024, parquet_max_file_size=16384)
    expected = []
    for k in range(20):
        b = batch_of(1024, port0=k * 1024)
        expected += b.to_dicts()
        exp.export(b)
    exp.shutdown(5)
    files = list((tmp_path / "flows").rglob("*.parquet"))
    assert len(files) > 3
    for path in files:
        assert pq.ParquetFile(path).metadata.num_rows > 0
        # a file is closed at the first row group that takes it over the limit
        assert path.stat().st_size < 16384 + 64 * 1024
    assert canonical(read_back(tmp_path / "flows")) == canonical(expected)
    assert not list((tmp_path / "flows").rglob(".*.tmp"))


def test_rotation_by_age_without_new_flows(tmp_path: Path) -> None:
    exp = exporter(tmp_path, parquet_max_file_age=0.3)
    exp.export(batch_of(10))
    folder = tmp_path / "flows"
    assert list(folder.rglob(".*.parquet.tmp"))  # being written, hidden from readers
    assert read_back(folder) == []
    deadline = time.monotonic() + 10
    while not list(folder.rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_back(folder)) == 10  # completed by age alone
    assert not list(folder.rglob(".*.tmp"))
    exp.shutdown(5)


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "flows" / "date=2026-11-30" / "hour=08"
    folder.mkdir(parents=True)
    dead = folder / ".flows-20261130T080000Z-999999999-000001.parquet.tmp"
    alive = folder / f".flows-20261130T080000Z-{os.getppid()}-000001.parquet.tmp"
    dead.write_bytes(b"PAR1 half a file")
    alive.write_bytes(b"PAR1 another writer")
    exporter(tmp_path).shutdown(1)
    assert not dead.exists()
    assert alive.exists()


def test_write_error_is_counted_as_dropped(tmp_path: Path) -> None:
    exp = exporter(tmp_path, parquet_row_group_size=1024)
    exp.export(batch_of(2000))  # one row group written, 976 flows buffered
    (tmp_file,) = (tmp_path / "flows").rglob(".*.tmp")

    class Broken:
        def write_table(self, *a: object, **k: object) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    exp._files[next(iter(exp._files))].writer = Broken()
    exp.export(batch_of(100, port0=5000))
    exp.shutdown(5)
    assert exp.written_flows + exp.dropped_flows == 2100
    assert exp.dropped_flows == 2100  # the abandoned file held them all
    assert not tmp_file.exists()


def test_two_exporters_of_one_process_never_replace_each_others_files(tmp_path: Path) -> None:
    first, second = exporter(tmp_path), exporter(tmp_path)
    first.export(batch_of(7))
    second.export(batch_of(8, port0=100))
    first.shutdown(5)
    second.shutdown(5)
    assert len(list((tmp_path / "flows").rglob("*.parquet"))) == 2
    assert len(read_back(tmp_path / "flows")) == 15


def test_buffered_flows_stay_within_open_files_times_row_group_size(tmp_path: Path) -> None:
    """Memory is bounded: at most PARQUET_MAX_OPEN_FILES partitions are open, each buffering
    less than a row group, however many hours the flows span; and no flow is lost on the way."""
    exp = exporter(tmp_path, parquet_row_group_size=1024, parquet_max_open_files=2)
    for i in range(10):
        exp.export(batch_of(700, start_ns=T0 + (i % 4) * HOUR, port0=700 * i))
        assert len(exp._files) <= 2
        assert sum(f.pending_rows for f in exp._files.values()) < 2 * 1024
    exp.shutdown(5)
    assert exp.written_flows == 10 * 700
    assert len(read_back(tmp_path / "flows")) == 10 * 700


def test_settings_need_a_directory() -> None:
    with pytest.raises(ValueError, match="PARQUET_DIRECTORY is required"):
        ParquetSettings()


def test_the_parquet_exporter_passes_the_conformance_kit(tmp_path: Path) -> None:
    from flowkit.testing import check_exporter
    from flowkit_plugins import parquet_exporter

    directory = tmp_path / "flows"

    def delivered() -> int:
        # What a reader sees: the rows of complete files.
        return sum(pq.ParquetFile(p).metadata.num_rows for p in directory.rglob("*.parquet"))

    (spec,) = parquet_exporter.flowkit_exporters()
    # bounded_memory needs a sink that accepts nothing; a file system cannot be paused here.
    # Memory is bounded by PARQUET_MAX_OPEN_FILES x PARQUET_ROW_GROUP_SIZE buffered flows.
    ran = check_exporter(spec, ParquetSettings(parquet_directory=str(directory)),
                         delivered=delivered, skip=("bounded_memory",))
    assert set(ran) == {"flush_on_shutdown", "nothing_after_shutdown", "raising_export",
                        "settings_round_trip"}
