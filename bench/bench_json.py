"""Benchmark of the stdout JSON exporter: flows per second per core, and peak RSS.

Prebuilt batches of synthetic flows are handed to :class:`StdoutExporter` writing to /dev/null,
so the number is the cost of the JSON encoding (flowkit.model.flow_to_json_dict + orjson) and of
the per-flow iteration, the same work ``flowkit-collector`` does per received flow. Run::

    .venv/bin/python bench/bench_json.py [--flows 200000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from measure import cpu_seconds, flow_rates

from flowkit.testing import synthetic_flows
from flowkit_plugins.stdout_exporter import StdoutExporter


def bench_json(flows: int, batch_size: int) -> dict[str, Any]:
    batch = synthetic_flows(n_flows=batch_size, packets=1)
    batches = flows // batch_size
    with open("/dev/null", "wb") as sink:
        exporter = StdoutExporter(stream=sink)
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            exporter.export(batch)
        exporter.flush(5)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    total = batches * batch_size
    return {
        "benchmark": "stdout_json_exporter",
        **flow_rates(total, batch_size, wall, cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(bench_json(args.flows, args.batch)))


if __name__ == "__main__":
    main()
