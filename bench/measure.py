"""What every benchmark measures the same way: CPU time, peak RSS and the rate fields."""

from __future__ import annotations

import resource
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
