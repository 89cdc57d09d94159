"""How much kernel memory the maps of an object will take, computed before anything is created.

The kernel reserves a map's memory when the map is created — for per-CPU maps once per
*possible* CPU — and a map sized from a setting (CACHE_MAX_FLOWS, EBPF_RINGBUF_SIZE) can take
more memory than the host has. :func:`collection_memory` computes, from the sizes in a
:class:`~flowkit.ebpf.spec.CollectionSpec` (key and value sizes as the object declares them,
``max_entries`` as set before load) and the number of possible CPUs, what each map will cost.

The per-map figure follows the kernel's own accounting (``map_mem_usage``, what ``bpftool map
show`` reports as ``memlock``). What the host really loses is more: the per-CPU allocator and
vmalloc add overhead that the map's accounting leaves out. Measured on this project's reference
host (Linux 6.18, 2 possible CPUs, the flow maps at 100k and 400k entries; see
docs/datapath.md, "Kernel memory"), ``MemFree`` dropped by 1.53x the memlock figure;
:data:`HOST_OVERHEAD` rounds that up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowkit.ebpf.spec import CollectionSpec, MapSpec

HOST_OVERHEAD = 1.6
"""Host memory taken per byte of a map's own accounting (measured 1.53, rounded up)."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HTAB_ELEM = 48  # struct htab_elem before the key, 64-bit kernels
_BUCKET = 16  # struct bucket: hlist_nulls_head + raw spinlock, padded
_HTAB_STRUCT = 1024  # struct bpf_htab itself (about 800 bytes)
_HASH_TYPES = {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash"}
_PERCPU_TYPES = {"percpu_hash", "lru_percpu_hash", "percpu_array", "percpu_cgroup_storage"}


def possible_cpus() -> int:
    """CPUs the kernel may ever bring online (``/sys/devices/system/cpu/possible``): the number
    per-CPU maps are sized for, which can exceed the CPUs online."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += (int(high) - int(low) + 1) if high else 1
    return max(1, count)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def map_memory(spec: MapSpec, ncpus: int) -> int:
    """Bytes the kernel accounts for ``spec`` once created with ``ncpus`` possible CPUs."""
    entries = spec.max_entries
    value = _round8(spec.value_size)
    percpu = spec.type in _PERCPU_TYPES
    if spec.type in _HASH_TYPES:
        elem = _HTAB_ELEM + _round8(spec.key_size) + (8 if percpu else value)
        extra = 0 if percpu or spec.type.startswith("lru") else ncpus  # per-CPU spare elems
        total = _BUCKET * _pow2(entries) + elem * (entries + extra)
        if percpu:
            total += value * ncpus * entries
        return _HTAB_STRUCT + total + 4 * ncpus * 8  # per-CPU busy counters
    if spec.type == "ringbuf":
        pages = max(1, entries // _PAGE)
        return entries + 4 * _PAGE + 8 * (pages + 2)  # data, consumer/producer pages, page table
    if spec.type in ("array", "percpu_array"):
        return value * entries * (ncpus if percpu else 1)
    if spec.type.endswith("of_maps") or spec.type == "prog_array":
        return 8 * _pow2(max(1, entries)) + (_BUCKET * _pow2(entries) if "hash" in spec.type else 0)
    # Anything else: key and value per entry, per CPU when the type says so.
    return (_round8(spec.key_size) + value * (ncpus if percpu else 1)) * entries


@dataclass(frozen=True)
class MemoryPlan:
    """What the maps of a collection will take: the kernel's accounting, and the host estimate."""

    maps: dict[str, int]
    ncpus: int

    @property
    def accounted(self) -> int:
        """Bytes the kernel accounts for the maps (the sum of ``memlock``)."""
        return sum(self.maps.values())

    @property
    def host(self) -> int:
        """Bytes of host memory the maps are expected to take (overhead included)."""
        return int(self.accounted * HOST_OVERHEAD)


def collection_memory(spec: CollectionSpec, ncpus: int | None = None) -> MemoryPlan:
    """The memory every map of ``spec`` will take, as sized now (before load)."""
    cpus = possible_cpus() if ncpus is None else ncpus
    return MemoryPlan({name: map_memory(m, cpus) for name, m in spec.maps.items()}, cpus)


def mem_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None when unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
