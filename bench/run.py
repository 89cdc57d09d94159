"""Run every benchmark in turn (``make bench``); each writes its JSON/text under bench/results/.

Benchmarks need root (eBPF, namespaces) and a quiet machine: they measure speed, which the test
suite never asserts. Results and the exact commands are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("kernel", ["bench_kernel.py", "--repeat", "10000000", "--rounds", "5",
                "--packets", "3000000"]),
    ("rate", ["bench_rate.py", "--seconds", "10"]),
    ("host-cost", ["bench_host_cost.py", "--seconds", "5", "--rounds", "5"]),
    ("copy-path", ["bench_copy_path.py", "--seconds", "3", "--rounds", "5"]),
    ("accounter", ["bench_accounter.py", "--repeat", "5", "--output",
                   str(RESULTS / "accounter.json")]),
    ("encoding", ["bench_encoding.py", "--flows", "100000", "--repeat", "3"]),
    ("kafka", ["bench_kafka.py", "--json-out", str(RESULTS / "kafka.json")]),
    ("grpc", ["bench_grpc.py"]),
    ("ipfix", ["bench_ipfix.py", "--flows", "200000", "--repeat", "3"]),
    ("spool", ["bench_spool.py", "--mib", "512"]),
    ("otlp", ["bench_otlp.py", "--flows", "100000", "--repeat", "3"]),
    ("map-memory", ["bench_map_memory.py", "--rounds", "3", "--markdown"]),
    ("data", ["bench_data.py", "--flows", "100000", "--repeat", "50", "--parquet-flows",
              "2000000", "--frames", "500000"]),
]


def main(argv: list[str]) -> int:
    """Run the benchmarks named in ``argv`` (all when empty)."""
    RESULTS.mkdir(exist_ok=True)
    wanted = set(argv) or {name for name, _ in BENCHMARKS}
    failed = 0
    for name, args in BENCHMARKS:
        if name not in wanted:
            continue
        print(f"== {name}: {' '.join(args)}", flush=True)
        with open(RESULTS / f"{name}.txt", "w") as out:
            proc = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]],
                                  stdout=out, stderr=subprocess.STDOUT, check=False)
        print((RESULTS / f"{name}.txt").read_text()[-2000:])
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
