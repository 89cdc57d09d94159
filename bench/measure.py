"""What every benchmark measures the same way: CPU time, peak RSS, the rate fields, and the
CPU time of other processes and of their threads (host-side benchmarks)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netns import Namespace, Pair


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


def thread_cpu_ns(pids: Iterable[int]) -> int:
    """CPU time of every thread of other processes so far, in nanoseconds (exact: the first
    field of /proc/<pid>/task/<tid>/schedstat; gone processes and threads count 0)."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total


def all_threads_cpu_ns() -> dict[int, int]:
    """CPU time so far of every thread on the host (all processes, kernel threads included), in
    nanoseconds, by thread id. From schedstat: on a kernel with paravirt steal accounting, as
    here, time the hypervisor stole is not in it."""
    out: dict[int, int] = {}
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return out


def threads_cpu_delta_ns(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU time the threads used between two :func:`all_threads_cpu_ns` readings (a thread
    that ended in between is left out; one that started counts from zero)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


def write_pmacctd_conf(path: Path, ifname: str, output: Path, append: bool = False) -> Path:
    """pmacctd's configuration for the benchmarks: libpcap on ``ifname``, print plugin to
    ``output`` (JSON, refreshed every second; with ``append``, every refresh is appended
    instead of replacing the file), flows keyed by MACs, addresses, ports, protocol."""
    path.write_text(
        "daemonize: false\n"
        f"pcap_interface: {ifname}\n"
        "plugins: print\n"
        "aggregate: src_mac,dst_mac,src_host,dst_host,src_port,dst_port,proto\n"
        "print_output: json\n"
        f"print_output_file: {output}\n"
        "print_refresh_time: 1\n"
        + ("print_output_file_append: true\n" if append else "")
    )
    return path


def pmacct_pids(ns: Namespace) -> list[int]:
    """pmacctd's processes (the core and its plugin) inside ``ns``."""
    out = []
    for pid in ns.run("ip", "netns", "pids", ns.name, check=False).stdout.split():
        try:
            if "pmacctd" in Path(f"/proc/{pid}/cmdline").read_text():
                out.append(int(pid))
        except OSError:
            continue
    return out


class TcxHook:
    """An object's flowkit_ingress/egress, loaded as flowkit-agent loads them (flow cache on
    where the object has one), attached with TCX to the receiving veth end and detached at will
    (``set``); ``path`` None is the object flowkit-agent loads."""

    def __init__(self, pair: Pair, path: str | None = None) -> None:
        from flowkit.ebpf import CollectionSpec
        from flowkit.ebpf.attach import Attacher
        from flowkit.netns import NetnsHandle
        from flowkit_plugins.ebpf_tracer import default_object_path

        spec = CollectionSpec.from_file(path or str(default_object_path()))
        if "flow_cache" in spec.variables:
            spec.variables["flow_cache"].set(1)
        self.pair = pair
        self._collection = spec.load()
        programs = self._collection.programs
        self._attacher = Attacher(programs["flowkit_ingress"].fd,
                                  programs["flowkit_egress"].fd, "tcx")
        with NetnsHandle.open(pair.right.ns.name) as handle:
            self._netns_id = handle.id or 0
        self._ifindex = pair.right.ifindex
        self.attached = False

    def set(self, on: bool) -> None:
        """Attach (True) or detach (False); nothing when already so."""
        if on and not self.attached:
            self._attacher.attach(self._ifindex, self.pair.right.ifname,
                                  netns=self.pair.right.ns.name, netns_id=self._netns_id)
        elif not on and self.attached:
            self._attacher.detach(self._ifindex, self._netns_id)
        self.attached = on

    def close(self) -> None:
        """Detach if attached, then release the programs and maps."""
        try:
            self.set(False)
        finally:
            self._attacher.close()
            self._collection.close()
