"""Flows as data: ``FlowBatch.to_arrow()``, the parquet exporter and offline replay.

1. ``to_arrow()`` on a batch of ``--flows`` random flows: best and median of ``--repeat``
   runs, and the bytes copied out of the C records; next to it, the time of merely reading
   the batch once (a numpy sum over its bytes), the floor for any conversion of the records.
2. The parquet exporter (default settings: zstd, 131072-flow row groups) writing
   ``--parquet-flows`` flows in batches of ``--flows``: flows per CPU-second of this process
   (conversion, encoding, compression and writing all included), file size.
3. Replay (root): a pcap of ``--frames`` frames (64-1514 bytes, 1000 UDP/TCP flows), through
   ``flowkit.replay()`` (BPF_PROG_TEST_RUN per frame), against ``tcpdump -r FILE -w /dev/null``
   (read only) and ``tcpdump -n -r FILE`` (read and decode, output to /dev/null).

Usage: ``sudo .venv/bin/python bench/bench_data.py [--flows N] [--repeat N] [--parquet-flows N]
[--frames N] [--no-replay]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from measure import cpu_seconds, flow_rates  # noqa: E402

from flowkit.model import FLOW_DTYPE, FlowBatch  # noqa: E402


def random_batch(n: int, seed: int = 1) -> FlowBatch:
    """Flows as a busy host exports them: many peers and ports, a few interfaces and MACs,
    counters spread over decades, optional feature columns off (zero)."""
    rng = np.random.default_rng(seed)
    array = np.zeros(n, dtype=FLOW_DTYPE)
    key = array["key"]
    key["src_ip"][:, 10:12] = key["dst_ip"][:, 10:12] = 0xFF
    key["src_ip"][:, 12:] = [198, 18, 0, 0]
    key["src_ip"][:, 14] = rng.integers(0, 256, n)
    key["src_ip"][:, 15] = rng.integers(0, 256, n)
    key["dst_ip"][:, 12:] = [198, 19, 0, 0]
    key["dst_ip"][:, 15] = rng.integers(0, 16, n)
    key["src_port"] = rng.integers(32768, 61000, n)
    key["dst_port"] = rng.choice([53, 80, 443, 5201, 8080], n)
    key["if_index"] = rng.integers(1, 4, n)
    key["eth_protocol"] = 0x0800
    key["direction"] = rng.integers(0, 2, n)
    key["proto"] = rng.choice([6, 17], n)
    array["packets"] = rng.integers(1, 10**4, n)
    array["bytes"] = array["packets"] * rng.integers(60, 1514, n)
    start = time.time_ns() - 10**9
    array["start_ns"] = start + rng.integers(0, 10**9, n, dtype=np.uint64)
    array["end_ns"] = array["start_ns"] + rng.integers(0, 10**9, n, dtype=np.uint64)
    array["flags"] = rng.choice([0, 0x10, 0x18, 0x112], n)
    array["src_mac"] = [2, 0xFB, 0, 0, 0, 1]
    array["dst_mac"] = [2, 0xFB, 0, 0, 0, 2]
    return FlowBatch(array, {1: "eth0", 2: "eth1", 3: "eth2"}, "198.18.0.9")


def bench_to_arrow(flows: int, repeat: int) -> dict[str, Any]:
    from flowkit.arrow import column_bytes_copied

    batch = random_batch(flows)
    batch.to_arrow()  # warm up: imports, schema
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        batch.to_arrow()
        times.append(time.perf_counter() - t0)
    copied = column_bytes_copied(flows, features=False)  # random_batch: optional features off
    # The floor of any conversion that reads the records: one numpy pass summing every byte
    # of the batch (as uint64 words), timed the same way.
    words = batch.array.view(np.uint64)
    floor = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        words.sum()
        floor.append(time.perf_counter() - t0)
    return {
        "flows": flows,
        "record_bytes": FLOW_DTYPE.itemsize,
        "best_ms": round(min(times) * 1e3, 3),
        "median_ms": round(statistics.median(times) * 1e3, 3),
        "read_batch_best_ms": round(min(floor) * 1e3, 3),
        "read_batch_median_ms": round(statistics.median(floor) * 1e3, 3),
        "bytes_copied": copied,
        "bytes_copied_per_flow": copied // flows,
        "copy_gb_per_s_best": round(copied / min(times) / 1e9, 2),
    }


def bench_parquet(total: int, batch_flows: int) -> dict[str, Any]:
    from flowkit.metrics import Metrics
    from flowkit_plugins.parquet_exporter import ParquetExporter, ParquetSettings

    batches = [random_batch(batch_flows, seed=i) for i in range(4)]
    with tempfile.TemporaryDirectory() as directory:
        exporter = ParquetExporter(ParquetSettings(parquet_directory=directory), Metrics())
        exporter.export(random_batch(1000, seed=99))  # warm up
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        sent = 0
        while sent < total:
            exporter.export(batches[(sent // batch_flows) % len(batches)])
            sent += batch_flows
        exporter.shutdown(60)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        size = sum(p.stat().st_size for p in Path(directory).rglob("*.parquet"))
    out = flow_rates(sent, batch_flows, wall, cpu)
    out.update(row_group_size=ParquetSettings.model_fields["parquet_row_group_size"].default,
               compression="zstd", file_bytes=size, bytes_per_flow=round(size / sent, 1))
    return out


def write_pcap(path: Path, frames: int, seed: int = 2) -> int:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([64, 128, 576, 1514], size=frames, p=[0.4, 0.2, 0.1, 0.3])
    flows = rng.integers(0, 1000, size=frames)
    total = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        t = 1_796_000_000
        for i in range(frames):
            flow, size = int(flows[i]), int(sizes[i])
            proto = 6 if flow % 2 else 17
            l4 = struct.pack("!HHIIBBHHH", 40000 + flow, 443, 0, 0, 0x50, 0x10, 0, 0, 0) \
                if proto == 6 else struct.pack("!HHHH", 40000 + flow, 53, size - 34, 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, proto, 0,
                             bytes([198, 18, flow >> 8, flow & 255]), bytes([198, 19, 0, 1]))
            frame = bytes.fromhex("02fb0000000202fb00000001") + b"\x08\x00" + ip + l4
            frame += b"\0" * (size - len(frame))
            out.write(struct.pack("<IIII", t + i // 100000, i % 100000 * 10, size, size))
            out.write(frame)
            total += size
    return total


def bench_replay(frames: int) -> dict[str, Any]:
    import flowkit

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.pcap"
        wire_bytes = write_pcap(path, frames)
        t0 = time.perf_counter()
        cpu0 = cpu_seconds()
        packets = sum(int(b.array["packets"].sum()) for b in flowkit.replay(path))
        replay_s, replay_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        assert packets == frames, (packets, frames)
        timings = {}
        for label, cmd in (("tcpdump_read_s", ["tcpdump", "-r", str(path), "-w", os.devnull]),
                           ("tcpdump_decode_s", ["tcpdump", "-n", "-r", str(path)])):
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            timings[label] = time.perf_counter() - t0
    return {
        "frames": frames,
        "file_bytes": path.stat().st_size if path.exists() else 24 + 16 * frames + wire_bytes,
        "replay_s": round(replay_s, 3),
        "replay_cpu_s": round(replay_cpu, 3),
        "replay_frames_per_s": round(frames / replay_s),
        "tcpdump_read_frames_per_s": round(frames / timings["tcpdump_read_s"]),
        "tcpdump_decode_frames_per_s": round(frames / timings["tcpdump_decode_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--parquet-flows", type=int, default=2_000_000)
    parser.add_argument("--frames", type=int, default=500_000)
    parser.add_argument("--no-replay", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "to_arrow": bench_to_arrow(args.flows, args.repeat),
        "parquet": bench_parquet(args.parquet_flows, args.flows),
    }
    if not args.no_replay:
        out["replay"] = bench_replay(args.frames)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
