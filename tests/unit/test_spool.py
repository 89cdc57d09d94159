"""The disk spool (flowkit/spool.py): framing, torn tails, budget, ordering, restart."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from flowkit.metrics import Metrics
from flowkit.model import FlowBatch
from flowkit.settings_types import parse_byte_size
from flowkit.spool import (
    MIN_SEGMENT_BYTES,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    Spool,
    SpoolBusyError,
    SpoolConfig,
    check_spool_settings,
    decode_batch,
    encode_batch,
    read_spool,
)
from flowkit.testing import make_flow

SEG = MIN_SEGMENT_BYTES


def open_spool(
    directory: Path, max_bytes: int = 8 * SEG, metrics: Metrics | None = None, **kw: object
) -> Spool:
    on_drop = kw.pop("on_drop", None)
    config = SpoolConfig(directory, max_bytes=max_bytes, segment_bytes=SEG, **kw)  # type: ignore[arg-type]
    return Spool(config, name="test", metrics=metrics or Metrics(),
                 on_drop=on_drop)  # type: ignore[arg-type]


def drain(spool: Spool) -> list[tuple[int, bytes]]:
    out = []
    while (record := spool.peek()) is not None:
        spool.begin(record)
        out.append((record.flows, record.payload))
        spool.ack(record)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_in_order_and_segments_are_deleted(tmp_path: Path) -> None:
    payloads = [bytes([i]) * (1000 + i) for i in range(200)]  # ~200 kB: several segments
    with open_spool(tmp_path) as spool:
        for i, payload in enumerate(payloads):
            assert spool.append(payload, i + 1)
        assert len(segments(tmp_path)) >= 3
        assert spool.flows == sum(range(1, 201))
        assert drain(spool) == [(i + 1, p) for i, p in enumerate(payloads)]
        assert spool.flows == 0
        assert spool.empty()
    assert segments(tmp_path) == []
    assert not (tmp_path / "cursor").exists()


def test_record_framing_on_disk(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        spool.append(b"hello", 3)
    (path,) = segments(tmp_path)
    data = path.read_bytes()
    magic, version, flags = SEGMENT_HEADER.unpack_from(data)
    assert (magic, version, flags) == (SEGMENT_MAGIC, 1, 0)
    length, flows, crc = RECORD_HEADER.unpack_from(data, SEGMENT_HEADER.size)
    assert (length, flows) == (5, 3)
    assert crc == zlib.crc32(b"hello", zlib.crc32(struct.pack("<II", 5, 3)))
    assert data[SEGMENT_HEADER.size + RECORD_HEADER.size :] == b"hello"


def test_restart_replays_what_was_not_acknowledged(tmp_path: Path) -> None:
    metrics = Metrics()
    with open_spool(tmp_path) as spool:
        for i in range(10):
            spool.append(f"r{i}".encode(), 1)
        for _ in range(4):
            record = spool.peek()
            assert record is not None
            spool.begin(record)
            spool.ack(record)
    with open_spool(tmp_path, metrics=metrics) as again:
        assert again.recovered_flows == 6
        assert again.possible_duplicate_flows == 0
        assert [p for _f, p in drain(again)] == [f"r{i}".encode() for i in range(4, 10)]
    assert metrics.value("spool_recovered_flows_total", exporter="test") == 6
    assert metrics.value("spool_replayed_flows_total", exporter="test") == 6


def test_a_record_in_flight_at_a_crash_is_sent_again_and_counted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(3):
        spool.append(f"r{i}".encode(), 5)
    record = spool.peek()
    assert record is not None
    spool.begin(record)  # ... and the process dies before ack
    spool.close()
    metrics = Metrics()
    with open_spool(tmp_path, metrics=metrics) as again:
        assert again.possible_duplicate_flows == 5
        assert [p for _f, p in drain(again)] == [b"r0", b"r1", b"r2"]
    assert metrics.value("spool_possible_duplicate_flows_total", exporter="test") == 5


def test_a_released_record_is_not_a_duplicate(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append(b"x", 2)
    record = spool.peek()
    assert record is not None
    spool.begin(record)
    spool.release(record)  # the sink was down
    spool.close()
    with open_spool(tmp_path) as again:
        assert again.possible_duplicate_flows == 0
        assert again.recovered_flows == 2


@pytest.mark.parametrize("cut", [1, RECORD_HEADER.size - 1, RECORD_HEADER.size + 3])
def test_a_torn_tail_is_cut_off_and_counted_never_parsed(tmp_path: Path, cut: int) -> None:
    with open_spool(tmp_path) as spool:
        spool.append(b"a" * 100, 1)
        spool.append(b"b" * 100, 2)
    (path,) = segments(tmp_path)
    whole = path.stat().st_size
    with open(path, "ab") as handle:  # a third record, cut short by a crash
        record = RECORD_HEADER.pack(100, 7, 0) + b"c" * 100
        handle.write(record[:cut])
    metrics = Metrics()
    dropped: list[tuple[str, int]] = []
    with open_spool(tmp_path, metrics=metrics,
                    on_drop=lambda reason, n: dropped.append((reason, n))) as again:
        assert again.torn_records == 1
        assert again.torn_bytes == cut
        assert path.stat().st_size == whole
        # The header names 7 flows when it is whole; a header cut short names none.
        torn = 7 if cut >= RECORD_HEADER.size else 0
        assert again.torn_flows == torn
        assert again.recovered_flows == 3 + torn
        assert drain(again) == [(1, b"a" * 100), (2, b"b" * 100)]
    assert dropped == ([("spool_torn", torn)] if torn else [])
    assert metrics.value("spool_torn_records_total", exporter="test") == 1
    assert metrics.value("spool_torn_bytes_total", exporter="test") == cut


def test_a_corrupt_record_ends_its_segment(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for i in range(3):
            spool.append(bytes([65 + i]) * 50, 1)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    second_payload = SEGMENT_HEADER.size + 2 * RECORD_HEADER.size + 50
    data[second_payload + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with open_spool(tmp_path) as again:
        assert again.torn_records == 1
        assert again.torn_bytes == 2 * (RECORD_HEADER.size + 50)
        # The corrupt record and the whole one behind it, cut off with it.
        assert again.torn_flows == 2
        assert again.dropped == {"spool_torn": 2}
        assert drain(again) == [(1, b"A" * 50)]


def test_a_file_that_is_not_a_segment_is_dropped_not_parsed(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.seg").write_bytes(b"garbage" * 10)
    with open_spool(tmp_path) as spool:
        assert spool.torn_records == 1
        assert spool.flows == 0
        assert spool.peek() is None
    assert segments(tmp_path) == []


def test_over_the_budget_the_oldest_segments_are_dropped_and_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    dropped: list[tuple[str, int]] = []
    config = SpoolConfig(tmp_path, max_bytes=3 * SEG, segment_bytes=SEG)
    payload = b"z" * 1000
    with Spool(config, name="test", metrics=metrics,
               on_drop=lambda reason, n: dropped.append((reason, n))) as spool:
        for i in range(400):  # ~400 kB into a 192 KiB budget
            assert spool.append(payload + i.to_bytes(4, "little"), 1)
            assert spool.size_bytes <= 3 * SEG
        kept = drain(spool)
    lost = sum(n for _r, n in dropped)
    assert {r for r, _n in dropped} == {"spool_full"}
    assert lost + len(kept) == 400
    assert spool.dropped == {"spool_full": lost}
    # What is kept is the newest, contiguous and in order.
    indices = [int.from_bytes(p[-4:], "little") for _f, p in kept]
    assert indices == list(range(400 - len(kept), 400))


def test_a_record_larger_than_the_budget_is_dropped(tmp_path: Path) -> None:
    metrics = Metrics()
    with open_spool(tmp_path, max_bytes=2 * SEG, metrics=metrics) as spool:
        assert not spool.append(b"x" * (2 * SEG), 9)
        assert spool.append(b"y" * (SEG + 10), 1)  # bigger than a segment: one segment alone
        assert drain(spool) == [(1, b"y" * (SEG + 10))]
    assert spool.dropped == {"spool_full": 9}
    assert "ebpf_agent_spool_dropped_flows" not in metrics._instruments  # one family: the account's


def test_appends_while_reading_keep_the_order(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        got = []
        for i in range(300):
            spool.append(i.to_bytes(4, "little") * 100, 1)
            if i % 3 == 0:
                record = spool.peek()
                assert record is not None
                spool.ack(record)
                got.append(record.payload)
        got += [p for _f, p in drain(spool)]
    assert got == [i.to_bytes(4, "little") * 100 for i in range(300)]


def test_one_spool_per_directory(tmp_path: Path) -> None:
    with open_spool(tmp_path), pytest.raises(SpoolBusyError, match="in use"):
        open_spool(tmp_path)


def test_read_spool_lists_what_waits(tmp_path: Path) -> None:
    with open_spool(tmp_path) as spool:
        for i in range(5):
            spool.append(bytes([i]), i)
        record = spool.peek()
        assert record is not None
        spool.ack(record)
        assert list(read_spool(tmp_path)) == [(i, bytes([i])) for i in range(1, 5)]


def test_fsync_always_and_never_write_the_same_records(tmp_path: Path) -> None:
    for policy in ("always", "never"):
        directory = tmp_path / policy
        with open_spool(directory, fsync=policy) as spool:
            spool.append(b"abc", 1)
        assert list(read_spool(directory)) == [(1, b"abc")]


def test_batches_round_trip_through_the_spool_format() -> None:
    flows = [
        make_flow(src_port=1000 + i, packets=i + 1, bytes=100 * (i + 1), if_index=3,
                  interface="veth0")
        for i in range(5)
    ]
    batch = FlowBatch.from_flows(flows, agent_ip="198.18.255.1")
    back = decode_batch(encode_batch(batch))
    assert np.array_equal(back.array, batch.array)
    assert dict(back.interfaces) == {3: "veth0"}
    assert back.agent_ip == "198.18.255.1"
    with pytest.raises(ValueError, match="records"):
        decode_batch(b"FKB1" + struct.pack("<II", 7, 0))


def test_settings_checks(tmp_path: Path) -> None:
    check_spool_settings("GRPC", "", 0, 0)  # no spool: nothing to check
    check_spool_settings("GRPC", str(tmp_path / "new" / "dir"), 4 * SEG, SEG)
    with pytest.raises(ValueError, match="GRPC_SPOOL_DIR='relative' must be an absolute path"):
        check_spool_settings("GRPC", "relative", 4 * SEG, SEG)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        check_spool_settings("GRPC", str(afile / "sub"), 4 * SEG, SEG)
    with pytest.raises(ValueError, match="KAFKA_SPOOL_MAX_BYTES=1000 is too small"):
        check_spool_settings("KAFKA", str(tmp_path), 1000, SEG)
    with pytest.raises(ValueError, match="KAFKA_SPOOL_SEGMENT_BYTES=10 is too small"):
        check_spool_settings("KAFKA", str(tmp_path), 4 * SEG, 10)
    with pytest.raises(ValueError, match="more than the file system"):
        check_spool_settings("KAFKA", str(tmp_path), 1 << 60, SEG)


def test_byte_sizes() -> None:
    assert parse_byte_size("1048576") == 1 << 20
    assert parse_byte_size("64KiB") == 64 << 10
    assert parse_byte_size("512MiB") == 512 << 20
    assert parse_byte_size("2G") == 2 << 30
    assert parse_byte_size(123) == 123
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size("lots")
