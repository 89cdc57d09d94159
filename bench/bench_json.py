"""Benchmark of the stdout JSON exporter: flows per second per core, and peak RSS.

Prebuilt batches of synthetic flows are handed to :class:`StdoutExporter` writing to /dev/null,
so the number is the cost of the JSON encoding (flowkit.model.flow_to_json_dict + orjson) and of
the per-flow iteration, the same work ``flowkit-collector`` does per received flow. Run::

    .venv/bin/python bench/bench_json.py [--flows 200000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

from flowkit.testing import synthetic_flows
from flowkit_plugins.stdout_exporter import StdoutExporter


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_json(flows: int, batch_size: int) -> dict[str, Any]:
    batch = synthetic_flows(n_flows=batch_size, packets=1)
    batches = flows // batch_size
    with open("/dev/null", "wb") as sink:
        exporter = StdoutExporter(stream=sink)
        wall0, cpu0 = time.perf_counter(), _cpu()
        for _ in range(batches):
            exporter.export(batch)
        exporter.flush(5)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    total = batches * batch_size
    return {
        "benchmark": "stdout_json_exporter",
        "flows": total,
        "batch_flows": batch_size,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "flows_per_s": round(total / wall),
        "flows_per_cpu_s": round(total / cpu),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(bench_json(args.flows, args.batch)))


if __name__ == "__main__":
    main()
