"""Kernel memory of the eBPF maps, measured against the estimate made before they are created.

For each ``--flows`` value (CACHE_MAX_FLOWS) and each ``--features`` set, the shipped object's
collection is sized as the agent sizes it (:class:`EbpfTracer`), its estimate computed
(:func:`flowkit.ebpf.memory.collection_memory`), then the maps and programs are created in the
kernel (nothing is attached) and measured three ways:

- ``memlock``: the sum of ``bytes_memlock`` that ``bpftool map show`` reports for the maps of
  this collection (the kernel's own accounting, what the estimate's per-map figure predicts);
- the kernel allocations in /proc/meminfo: ``Percpu`` (per-CPU values), ``VmallocUsed``
  (preallocated elements, buckets, the ring buffer) and ``Slab``, before and after;
- ``MemAvailable`` before and after: what the host lost (noisy on a busy machine: other
  processes allocate meanwhile; the medians of ``--rounds`` runs are reported).

One JSON object per configuration; with ``--markdown``, a table for docs/benchmarks.md. Needs
root (creating BPF maps). Run::

    .venv/bin/python bench/bench_map_memory.py [--flows 5000,100000,400000,1000000]
        [--features none,all] [--rounds 3] [--markdown]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowkit import privileges
from flowkit.ebpf.memory import HOST_MARGIN, collection_memory
from flowkit_plugins.ebpf_tracer import EbpfTracer, EbpfTracerSettings

_FIELDS = ("MemAvailable", "MemFree", "Percpu", "VmallocUsed", "Slab")
FEATURES = {
    "none": {},
    # The feature maps (extras_a/extras_b) take CACHE_MAX_FLOWS entries with any of these,
    # dns_queries with DNS tracking.
    "all": {"enable_pkt_drops": True, "enable_rtt": True, "enable_dns_tracking": True},
}
MIB = 1 << 20


def meminfo() -> dict[str, int]:
    """The fields of /proc/meminfo this benchmark reads, in bytes."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in _FIELDS:
            out[key] = int(rest.split()[0]) * 1024
    return out


def map_id(fd: int) -> int:
    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
    found = re.search(r"map_id:\s+(\d+)", info)
    assert found is not None
    return int(found.group(1))


def memlock(ids: list[int]) -> int:
    """Sum of ``bytes_memlock`` of the maps with these ids, as bpftool reports it."""
    listed = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True,
                                       text=True, check=True).stdout)
    wanted = set(ids)
    return sum(int(m["bytes_memlock"]) for m in listed if m["id"] in wanted)


def settle() -> None:
    """Let freed maps go (they are released after an RCU grace period, by a worker)."""
    gc.collect()
    time.sleep(1.0)


def one_round(flows: int, features: dict[str, bool]) -> dict[str, Any]:
    tracer = EbpfTracer(EbpfTracerSettings(**features), cache_max_flows=flows)
    spec = tracer.collection_spec()
    plan = collection_memory(spec)
    settle()
    before = meminfo()
    with spec.load() as collection:
        after = meminfo()
        ids = [map_id(m.fd) for m in collection.maps.values()]
        accounted = memlock(ids)
        by_map = {name: plan.maps[name] for name in spec.maps}
    delta = {key: before[key] - after[key] if key.startswith("Mem") else after[key] - before[key]
             for key in _FIELDS}
    return {"plan": plan, "memlock": accounted, "delta": delta, "by_map": by_map}


def measure(flows: int, feature_set: str, rounds: int) -> dict[str, Any]:
    results = [one_round(flows, FEATURES[feature_set]) for _ in range(rounds)]
    plan = results[0]["plan"]
    median = {key: statistics.median(r["delta"][key] for r in results) for key in _FIELDS}
    kernel = median["Percpu"] + median["VmallocUsed"] + median["Slab"]
    flow_maps = sum(v for k, v in results[0]["by_map"].items() if k.startswith("flows_"))
    extras = sum(v for k, v in results[0]["by_map"].items()
                 if k.startswith("extras_") or k == "dns_queries")
    ring = results[0]["by_map"]["flow_events"]
    return {
        "cache_max_flows": flows,
        "features": feature_set,
        "possible_cpus": plan.ncpus,
        "rounds": rounds,
        "estimate_memlock_mib": round(plan.accounted / MIB, 1),
        "estimate_host_mib": round(plan.host / MIB, 1),
        "flow_maps_mib": round(flow_maps / MIB, 1),
        "extras_mib": round(extras / MIB, 1),
        "ringbuf_mib": round(ring / MIB, 1),
        "bpftool_memlock_mib": round(results[0]["memlock"] / MIB, 1),
        "memlock_per_flow_per_map": round(flow_maps / 2 / flows, 1),
        "percpu_mib": round(median["Percpu"] / MIB, 1),
        "vmalloc_mib": round(median["VmallocUsed"] / MIB, 1),
        "slab_mib": round(median["Slab"] / MIB, 1),
        "kernel_mib": round(kernel / MIB, 1),
        "memavailable_drop_mib": round(median["MemAvailable"] / MIB, 1),
        "memfree_drop_mib": round(median["MemFree"] / MIB, 1),
        "host_per_memlock": round(median["MemAvailable"] / results[0]["memlock"], 2),
        "kernel_per_memlock": round(kernel / results[0]["memlock"], 2),
        "kernel_per_estimate": round(kernel / plan.host, 2),
        "host_margin": HOST_MARGIN,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| CACHE_MAX_FLOWS | features | computed memlock | bpftool memlock | estimate "
            "(host) | Percpu + VmallocUsed + Slab | kernel / estimate | MemAvailable drop |\n"
            "|---:|---|---:|---:|---:|---:|---:|---:|\n")
    lines = [
        f"| {r['cache_max_flows']:,} | {r['features']} | {r['estimate_memlock_mib']} MiB "
        f"| {r['bpftool_memlock_mib']} MiB | {r['estimate_host_mib']} MiB "
        f"| {r['kernel_mib']} MiB | {r['kernel_per_estimate']} "
        f"| {r['memavailable_drop_mib']} MiB |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--flows", default="5000,100000,400000,1000000",
                        help="comma-separated CACHE_MAX_FLOWS values")
    parser.add_argument("--features", default="none,all",
                        help=f"comma-separated feature sets: {', '.join(FEATURES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    privileges.raise_memlock_limit()
    rows = []
    for feature_set in args.features.split(","):
        for flows in (int(v) for v in args.flows.split(",")):
            row = measure(flows, feature_set, args.rounds)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
