"""How much kernel memory the maps of an object will take, computed before anything is created.

The kernel reserves a map's memory when the map is created — for per-CPU maps once per
*possible* CPU — and a map sized from a setting (CACHE_MAX_FLOWS, EBPF_RINGBUF_SIZE) can take
more memory than the host has. :func:`collection_memory` computes, from the sizes in a
:class:`~flowkit.ebpf.spec.CollectionSpec` (key and value sizes as the object declares them,
``max_entries`` as set before load) and the number of possible CPUs, what each map will cost.

The per-map figure follows the kernel's own accounting (``map_mem_usage``, what ``bpftool map
show`` reports as ``memlock``). What the host really loses is more. The largest part the
accounting leaves out: per-CPU map values are charged to the memory cgroup, and for that the
per-CPU allocator keeps one ``obj_cgroup`` pointer (8 bytes) per 4-byte slot of its chunks, in
vmalloc memory: 2 bytes per byte of value, whatever the number of CPUs
(:func:`host_memory`). On top of that come the allocators' own slack (per-CPU chunks, vmalloc
pages), covered by :data:`HOST_MARGIN`. Measured on this project's reference host (Linux 6.18,
2 possible CPUs, see docs/datapath.md, "Kernel memory", and bench/bench_map_memory.py), the
kernel's allocations (``Percpu`` + ``VmallocUsed`` + ``Slab``) stay within the estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowkit.ebpf.spec import CollectionSpec, MapSpec

HOST_MARGIN = 1.1
"""Host memory per byte of :func:`host_memory`: the per-CPU allocator's chunk slack and vmalloc
rounding (the kernel's allocations measured 0.96-0.99 of :func:`host_memory` for 400,000 to
1,000,000 flows on the reference host; the margin keeps the estimate above them)."""

_MEMCG_PERCPU = 2  # bytes of obj_cgroup pointers per byte of a per-CPU value (8 per 4-byte slot)
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


def host_memory(spec: MapSpec, ncpus: int) -> int:
    """Bytes of host memory ``spec`` takes once created (before :data:`HOST_MARGIN`): the
    kernel's accounting plus what it leaves out (the memory-cgroup metadata of per-CPU
    values)."""
    total = map_memory(spec, ncpus)
    if spec.type in _PERCPU_TYPES:
        total += _MEMCG_PERCPU * _round8(spec.value_size) * spec.max_entries
    return total


@dataclass(frozen=True)
class MemoryPlan:
    """What the maps of a collection will take: the kernel's accounting, and the host estimate."""

    maps: dict[str, int]
    """Map name -> bytes the kernel accounts for it (``memlock``)."""
    ncpus: int
    host_maps: dict[str, int]
    """Map name -> bytes of host memory it takes (:func:`host_memory`, margin included)."""

    @property
    def accounted(self) -> int:
        """Bytes the kernel accounts for the maps (the sum of ``memlock``)."""
        return sum(self.maps.values())

    @property
    def host(self) -> int:
        """Bytes of host memory the maps are expected to take (everything included)."""
        return sum(self.host_maps.values())


def collection_memory(spec: CollectionSpec, ncpus: int | None = None) -> MemoryPlan:
    """The memory every map of ``spec`` will take, as sized now (before load)."""
    cpus = possible_cpus() if ncpus is None else ncpus
    return MemoryPlan(
        {name: map_memory(m, cpus) for name, m in spec.maps.items()}, cpus,
        {name: int(host_memory(m, cpus) * HOST_MARGIN) for name, m in spec.maps.items()},
    )


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
