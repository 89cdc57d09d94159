"""Benchmark of the native accounter (JSON on stdout).

Two measurements:

- ``drain``: time to flip the flow maps, drain N flows (per-CPU values on every CPU) with batch
  syscalls, merge them and evict them as a FlowBatch, for N = 1k, 10k, 100k. Needs root (BPF
  maps); skipped otherwise. The python column is the same drain done by ``KernelDrainer`` with
  the records merged by the pure-Python reference accounter.
- ``merge``: records per second through ``add_records`` + ``evict``, native vs python (the
  reference), for a stream of single-packet records over a fixed set of flows.

Usage::

    .venv/bin/python -m bench.bench_accounter [--sizes 1000,10000,100000] [--repeat 5]
        [--records 1000000] [--output bench/results/accounter.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from flowkit.accounting import FlowTable, KernelDrainer
from flowkit.components import KernelMaps, Tracer
from flowkit.model import KEY_DTYPE, RECORD_DTYPE, VALUE_DTYPE, FlowArray
from flowkit.native import flows as native_flows
from flowkit.native.libbpf import map_update_batch
from flowkit_plugins.native_accounter import NativeAccounter
from flowkit_plugins.python_accounter import PythonAccounter

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
OFFSET = 1_700_000_000_000_000_000


def flow_keys(n: int) -> FlowArray:
    """``n`` distinct IPv4/UDP flow keys in 198.18.0.0/15."""
    keys = np.zeros(n, dtype=RECORD_DTYPE["key"])
    index = np.arange(n, dtype=np.uint32)
    keys["if_index"] = 2
    keys["eth_protocol"] = 0x0800
    keys["proto"] = 17
    keys["src_port"] = (index % 60000 + 1024).astype(np.uint16)
    keys["dst_port"] = 53
    src = keys["src_ip"]
    src[:, 10] = 0xFF
    src[:, 11] = 0xFF
    src[:, 12] = 198
    src[:, 13] = 18 + (index >> 16) % 2
    src[:, 14] = (index >> 8) & 0xFF
    src[:, 15] = index & 0xFF
    dst = keys["dst_ip"]
    dst[:, 10:12] = 0xFF
    dst[:, 12] = 198
    dst[:, 13] = 19
    dst[:, 15] = 1
    return keys


def single_packet_records(keys: FlowArray, count: int) -> FlowArray:
    """``count`` one-packet records cycling over ``keys``."""
    records = np.zeros(count, dtype=RECORD_DTYPE)
    records["key"] = keys[np.arange(count) % len(keys)]
    value = records["value"]
    value["packets"] = 1
    value["bytes"] = 100
    value["first_ns"] = np.arange(count, dtype=np.uint64) + 1
    value["last_ns"] = value["first_ns"]
    value["flags"] = 0x10
    return records


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class HandMadeMaps:
    """The selector + two per-CPU flow maps, as the eBPF program has them."""

    def __init__(self, max_entries: int) -> None:
        self.fds: list[int] = []
        key, value = KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize
        map0 = self._create(BPF_MAP_TYPE_PERCPU_HASH, key, value, max_entries, -1)
        map1 = self._create(BPF_MAP_TYPE_PERCPU_HASH, key, value, max_entries, -1)
        selector = self._create(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 1, map0)
        self.ncpus = native_flows.possible_cpus()
        self.maps = KernelMaps(selector, (map0, map1), -1, -1, max_entries, self.ncpus)

    def _create(self, kind: int, key: int, value: int, entries: int, inner: int) -> int:
        fd = native_flows.map_create(kind, key, value, entries, inner)
        self.fds.append(fd)
        return fd

    def fill(self, fd: int, keys: FlowArray) -> None:
        """Store every key with a one-packet value on every CPU (batch update)."""
        values = np.zeros((len(keys), self.ncpus), dtype=VALUE_DTYPE)
        values["packets"] = 1
        values["bytes"] = 100
        values["first_ns"] = 1000 + np.arange(self.ncpus)
        values["last_ns"] = 2000 + np.arange(self.ncpus)
        key_buf = np.ascontiguousarray(keys)
        map_update_batch(fd, key_buf, values, "flow map")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


class MapsOnly:
    """Just enough of a tracer for the native accounter to drain hand-made maps."""

    def __init__(self, maps: KernelMaps) -> None:
        self.kernel_maps = maps


def bench_drain_size(n: int, repeat: int) -> dict[str, Any]:
    """Drain timings for maps holding ``n`` flows."""
    keys = flow_keys(n)
    maps = HandMadeMaps(n)
    drainer = KernelDrainer(maps.maps)
    native = NativeAccounter(cast(Tracer, MapsOnly(maps.maps)), n + 1, boot_offset_ns=OFFSET)
    table = FlowTable(n)

    def fill_active() -> None:
        maps.fill(maps.maps.flow_map_fds[drainer.active_map()], keys)

    def drain_without_flip() -> None:
        idle = drainer.active_map() ^ 1
        drainer.native.drain_map(idle, table.native)

    def native_evict() -> None:
        batch = native.evict()
        assert len(batch) == n
        batch.release()

    def python_evict() -> None:
        reference = PythonAccounter(None, n + 1, OFFSET)
        reference.add_records(drainer.drain())
        reference.evict()

    flip_drain, drain_only, native_times, python_times = [], [], [], []
    try:
        for _ in range(repeat):
            # flip + drain + per-CPU merge into a table
            fill_active()
            flip_drain.append(timed(lambda: drainer.drain_into(table)))
            table.clear()
            # drain only (the idle map needs no flip), to separate the RCU wait
            maps.fill(maps.maps.flow_map_fds[drainer.active_map() ^ 1], keys)
            drain_only.append(timed(drain_without_flip))
            table.clear()
            # the accounter's evict: flip + drain + merge + FlowBatch with unix times
            fill_active()
            native_times.append(timed(native_evict))
            # the same drain, with the records merged by the python reference
            fill_active()
            python_times.append(timed(python_evict))
    finally:
        drainer.close()
        native.close()
        table.close()
        maps.close()
    native_s, python_s = statistics.median(native_times), statistics.median(python_times)
    return {
        "flows": n,
        "cpus": maps.ncpus,
        "flip_drain_merge_s": statistics.median(flip_drain),
        "drain_merge_no_flip_s": statistics.median(drain_only),
        "native_evict_s": native_s,
        "python_evict_s": python_s,
        "native_flows_per_s": n / native_s,
        "speedup": python_s / native_s,
    }


def bench_drain(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Drain timings for every size."""
    return [bench_drain_size(n, repeat) for n in sizes]


def bench_merge(records: int, flows: int, repeat: int) -> dict[str, Any]:
    keys = flow_keys(flows)
    data = single_packet_records(keys, records)
    python_records = data[: max(records // 10, 1)]  # the reference is slow: time a tenth

    def run_native() -> None:
        acc = NativeAccounter(None, flows + 1, boot_offset_ns=OFFSET)
        acc.add_records(data)
        acc.evict().release()
        acc.close()

    def run_python() -> None:
        acc = PythonAccounter(None, flows + 1, OFFSET)
        acc.add_records(python_records)
        acc.evict()

    native_s = statistics.median(timed(run_native) for _ in range(repeat))
    python_s = statistics.median(timed(run_python) for _ in range(max(1, repeat // 2)))
    native_rate = records / native_s
    python_rate = len(python_records) / python_s
    return {
        "records": records,
        "flows": flows,
        "native_records_per_s": native_rate,
        "python_records_per_s": python_rate,
        "speedup": native_rate / python_rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--merge-flows", type=int, default=10_000)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result: dict[str, Any] = {
        "benchmark": "accounter",
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "merge": bench_merge(args.records, args.merge_flows, args.repeat),
    }
    if os.geteuid() == 0:
        result["drain"] = bench_drain(sizes, args.repeat)
    else:
        result["drain"] = "skipped: needs root to create BPF maps"
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
