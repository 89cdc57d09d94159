"""What every benchmark measures the same way: CPU time, peak RSS, the rate fields, and the
alternating on/off windows and rotating rounds of the host-cost benchmarks."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flow_rates(flows: int, batch_flows: int, wall: float, cpu: float) -> dict[str, Any]:
    """The common result fields of an exporter benchmark."""
    return {
        "flows": flows,
        "batch_flows": batch_flows,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "flows_per_s": round(flows / wall),
        "flows_per_cpu_s": round(flows / cpu),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


# -- host-side measurements (bench_rate.py, bench_host_cost.py) ----------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of other processes so far, from /proc (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def write_pmacctd_conf(path: Path, ifname: str, output: Path) -> Path:
    """pmacctd's configuration for the benchmarks: libpcap on ``ifname``, print plugin to
    ``output`` (JSON, refreshed every second), flows keyed by MACs, addresses, ports, protocol."""
    path.write_text(
        "daemonize: false\n"
        f"pcap_interface: {ifname}\n"
        "plugins: print\n"
        "aggregate: src_mac,dst_mac,src_host,dst_host,src_port,dst_port,proto\n"
        "print_output: json\n"
        f"print_output_file: {output}\n"
        "print_refresh_time: 1\n"
    )
    return path


def alternating_windows(switch: Callable[[bool], None], sample: Callable[[], tuple[float, int]],
                        windows: int, window_s: float) -> dict[str, Any]:
    """The cost per unit of something that can be switched on and off while a load runs.

    ``2 * windows + 1`` windows of ``window_s`` seconds alternate off, on, off, ...; ``sample``
    returns (a cumulative cost, a cumulative count of units), read at the start and end of each
    window. Each on-window's cost per unit is compared with the mean of the off-windows on either
    side, so that a slow drift of the load (other work on the machine) cancels; the median of
    those differences is the result (``cost_per_unit``, in the unit of ``sample``'s cost times
    1e9: nanoseconds for CPU seconds).
    """
    per_unit: list[tuple[bool, float]] = []
    for i in range(2 * windows + 1):
        state = i % 2 == 1
        switch(state)
        cost0, units0 = sample()
        time.sleep(window_s)
        cost1, units1 = sample()
        if units1 > units0:
            per_unit.append((state, (cost1 - cost0) * 1e9 / (units1 - units0)))
    switch(False)
    diffs = [value - (per_unit[j - 1][1] + per_unit[j + 1][1]) / 2
             for j, (state, value) in enumerate(per_unit)
             if state and 0 < j < len(per_unit) - 1]
    return {
        "windows": windows,
        "window_s": window_s,
        "off_per_unit": round(statistics.median(v for st, v in per_unit if not st), 1),
        "cost_per_unit": round(statistics.median(diffs), 1),
        "cost_per_unit_each": [round(d, 1) for d in diffs],
    }


def rotating_rounds(kinds: Sequence[str], rounds: int,
                    run: Callable[[str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` rounds of ``run(kind)`` for every kind, the kinds in turn within a round (so
    that a burst of other work on the machine hits them alike); each result is also printed to
    stderr as it comes."""
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for round_no in range(rounds):
        for kind in kinds:
            result = run(kind)
            results[kind].append(result)
            print(json.dumps({"round": round_no, "collector": kind, **result}), file=sys.stderr,
                  flush=True)
    return results
