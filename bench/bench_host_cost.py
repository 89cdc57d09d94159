"""Whole host cost per packet: flowkit against pmacctd on the same packets at a fixed rate.

One UDP flow of 60-byte frames is sent over a veth pair between two namespaces at a fixed rate
(``--rate`` packets per second) by ``bench/paced_sender.py``, pinned to CPU 1: an AF_PACKET TX
ring like trafgen's, so the frames are non-linear (only the Ethernet header in the linear area)
as trafgen's are. A veth delivers in the sender's context, so CPU 1 also runs the receive path
and every hook on it. The observer runs on CPU 0:

- ``none``: nothing observes the receiving end (the baseline);
- ``flowkit``: flowkit-agent (ebpf tracer with TCX, native accounter, stdout to a pipe,
  CACHE_ACTIVE_TIMEOUT=1s); ``flowkit:<object>`` the same with EBPF_OBJECT=<object>;
  ``flowkit@<tree>`` the agent of another source tree (PYTHONPATH=<tree>, its C extension
  built in place with ``python csrc/build_ffi.py``), to compare versions;
- ``pmacctd``: pmacctd (libpcap on an AF_PACKET socket, print plugin, 1 s refresh).

What is measured is the CPU time of the WHOLE host: the sum over every thread of every process
on the host, kernel threads included (/proc/*/task/*/schedstat, in ns). On this kernel (no IRQ
time accounting) interrupt and softirq work is charged to the thread it interrupts, and with
paravirt steal accounting the time the hypervisor stole is not in it. /proc/stat's per-CPU time
not idle is reported too but not used: the hypervisor's steal varies by up to 1 us per packet
between windows and overlaps the guest's idle time, so it can be neither kept nor subtracted.
The packet rate is the same with and without an observer, so the host's CPU time per packet
with an observer minus without is what observing costs, wherever it is paid: the hook in the
sender's softirq, copies into a capture ring, wake-ups, the observer's own threads. A fixed rate
rather than a saturated sender keeps the comparison fair: a saturated sender makes pmacctd drop
packets, and an observer that drops looks cheap per packet sent.

Before the windows, each observer's own CPU time without any traffic is measured for
``--idle-seconds`` (its fixed cost, in ms per second). Each window: start the observer, start
the sender, let it run 1 s, measure ``--seconds``, stop the sender, give the observer 1 s
(pmacctd 2.5 s) to export, stop it and compare what it counted with what was sent (flowkit: the
flows it printed; pmacctd: its print output, and its capture statistics, asked for with
SIGUSR1). Observers run in rotating order for ``--rounds`` rounds; each round's cost of an
observer is its window minus that round's ``none`` window, and the summary gives the median and
the range over rounds. The per-part figures: ``own`` is the observer processes' CPU time
(/proc/<pid>/task/*/schedstat, exact), ``kernel`` the rest of its host cost.

Usage::

    sudo .venv/bin/python bench/bench_host_cost.py --rate 80000 --seconds 12 --rounds 5

Prints the windows as they come (stderr), then one JSON object and a verdict line. Everything
it creates (namespaces, veths, processes) is removed on exit, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from measure import (  # noqa: E402
    TcxHook,
    all_threads_cpu_ns,
    pmacct_pids,
    thread_cpu_ns,
    threads_cpu_delta_ns,
    write_pmacctd_conf,
)
from netns import AgentRun, Pair, flow_totals  # noqa: E402

SENDER_CPU = "1"
OBSERVER_CPU = "0"
SENDER = ROOT / "bench" / "paced_sender.py"
DST_PORT = 7777
TICKS = os.sysconf("SC_CLK_TCK")


# -- CPU time of the whole host ---------------------------------------------------------------


@dataclass
class HostTimes:
    """Cumulative /proc/stat times of every CPU (``cpu0``, ``cpu1``, ...), in seconds, read at
    ``at`` (CLOCK_MONOTONIC): idle (with iowait) and stolen."""

    at: float
    idle: dict[str, float]
    steal: dict[str, float]


def host_times() -> HostTimes:
    """Read /proc/stat. Busy time is derived from the idle column, not from the busy ones: on
    a NO_HZ kernel the idle time is measured (then rounded to 10 ms), while user, system, irq
    and softirq are sampled by the tick."""
    idle: dict[str, float] = {}
    steal: dict[str, float] = {}
    text = Path("/proc/stat").read_text()
    at = time.monotonic()
    for line in text.splitlines():
        name, *fields = line.split()
        if not re.fullmatch(r"cpu\d+", name):
            continue
        # user nice system idle iowait irq softirq steal guest guest_nice
        values = [int(v) / TICKS for v in fields[:8]]
        idle[name] = values[3] + values[4]
        steal[name] = values[7]
    return HostTimes(at, idle, steal)


def busy_seconds(before: HostTimes, after: HostTimes) -> dict[str, float]:
    """Seconds each CPU was not idle between two readings (stolen time included: the
    hypervisor's steal also overlaps the guest's idle time, so it cannot be subtracted)."""
    wall = after.at - before.at
    return {cpu: wall - (after.idle[cpu] - before.idle[cpu]) for cpu in after.idle}


# -- the traffic --------------------------------------------------------------------------------


def tx_packets(pid: int, ifname: str) -> int:
    """Packets ``ifname`` sent, read in the network namespace of process ``pid`` (no
    subprocess, so that reading it costs next to nothing inside a measured window)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, sep, counters = line.partition(":")
        if sep and name.strip() == ifname:
            return int(counters.split()[9])
    raise RuntimeError(f"{ifname} not found in /proc/{pid}/net/dev")


class Sender:
    """The paced sender (bench/paced_sender.py) on CPU 1 in the left namespace."""

    def __init__(self, pair: Pair, rate: float) -> None:
        left, right = pair.left, pair.right
        cmd = ["taskset", "-c", SENDER_CPU, *left.ns.cmd(
            sys.executable, str(SENDER), "--dev", left.ifname, "--rate", str(rate),
            "--dst-mac", right.mac, "--src-mac", left.mac, "--src-ip", left.ip4,
            "--dst-ip", right.ip4, "--dport", str(DST_PORT))]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.result: dict[str, int] = {}

    def stop(self) -> dict[str, int]:
        """Stop it (SIGINT); returns what it reports: frames ``sent``, ticks ``behind``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        if self.proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the paced sender failed (exit {self.proc.returncode})")
        self.result = json.loads(out)
        return self.result


@contextmanager
def sending(pair: Pair, rate: float) -> Iterator[Sender]:
    """A running :class:`Sender`, stopped on exit."""
    snd = Sender(pair, rate)
    try:
        yield snd
    finally:
        if snd.proc.returncode is None:
            with contextlib.suppress(RuntimeError):
                snd.stop()


# -- the observers ------------------------------------------------------------------------------


class Observer:
    """One observer on the receiving end: its processes, and what it counted once stopped."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pids: list[int] = []
        self.counted: int | None = None
        self.detail: dict[str, Any] = {}


@contextmanager
def observe(kind: str, pair: Pair, workdir: Path) -> Iterator[Observer]:
    """Start the observer (ready to count when yielded); stop it on exit and fill ``counted``."""
    observer = Observer(kind)
    right = pair.right
    if kind == "none":
        yield observer
        return
    if kind.startswith("flowkit"):
        env = {"INTERFACES": right.ifname, "TC_ATTACH_MODE": "tcx"}
        name, _, tree = kind.partition("@")
        if ":" in name:
            env["EBPF_OBJECT"] = name.split(":", 1)[1]
        if tree:
            env["PYTHONPATH"] = tree
        with AgentRun(right.ns, env, taskset=OBSERVER_CPU) as agent:
            agent.wait_traced(right.ifname)
            observer.pids = [agent.proc.pid]
            yield observer
            agent.stop()
            observer.counted, _ = flow_totals(agent.flows, DstPort=DST_PORT, FlowDirection=0)
        return
    if kind == "pmacctd":
        output = workdir / "pmacctd.json"
        output.unlink(missing_ok=True)
        conf = write_pmacctd_conf(workdir / "pmacctd.conf", right.ifname, output, append=True)
        log_path = workdir / "pmacctd.log"
        with log_path.open("w") as log_file:
            proc = right.ns.popen(["taskset", "-c", OBSERVER_CPU, "pmacctd", "-f", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=log_file)
            try:
                time.sleep(2)  # its capture socket is open
                observer.pids = pmacct_pids(right.ns)
                yield observer
                time.sleep(1.5)  # its last refresh
                observer.detail = pmacctd_drops(observer.pids, log_path)
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        observer.counted = pmacctd_packets(output, right.ip4)
        return
    raise SystemExit(f"unknown observer {kind!r}")


def pmacctd_drops(pids: list[int], log_path: Path) -> dict[str, Any]:
    """Ask pmacctd's core process (SIGUSR1) for its capture statistics; return what it logs."""
    before = log_path.read_text(errors="replace")
    for pid in sorted(pids)[:1]:  # the core starts first
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    text = log_path.read_text(errors="replace")[len(before):]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    stats: dict[str, Any] = {"log": lines[-3:]}
    received = re.search(r"received[^0-9]*(\d+)", text, re.IGNORECASE)
    dropped = re.search(r"dropped[^0-9]*(\d+)", text, re.IGNORECASE)
    if received:
        stats["received"] = int(received.group(1))
    if dropped:
        stats["dropped"] = int(dropped.group(1))
    return stats


def pmacctd_packets(output: Path, dst_ip: str) -> int:
    """Packets of the benchmark's flow in pmacctd's print output (one JSON object per line per
    refresh, appended)."""
    total = 0
    if not output.exists():
        return 0
    for line in output.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("ip_dst") == dst_ip and int(record.get("port_dst", 0)) == DST_PORT:
                total += int(record.get("packets", 0))
    return total


# -- one window ---------------------------------------------------------------------------------


def window(kind: str, pair: Pair, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    """Start ``kind``, send at ``rate`` for 1 + ``seconds`` s, measure the last ``seconds``."""
    with observe(kind, pair, workdir) as observer:
        with sending(pair, rate) as snd:
            time.sleep(1.0)
            ifname = pair.left.ifname
            p0 = tx_packets(snd.proc.pid, ifname)
            own0, snd0 = thread_cpu_ns(observer.pids), thread_cpu_ns([snd.proc.pid])
            t0, all0 = host_times(), all_threads_cpu_ns()
            time.sleep(seconds)
            t1, all1 = host_times(), all_threads_cpu_ns()
            own1, snd1 = thread_cpu_ns(observer.pids), thread_cpu_ns([snd.proc.pid])
            p1 = tx_packets(snd.proc.pid, ifname)
            report = snd.stop()
        time.sleep(1.0)  # the observer's last period
    elapsed = t1.at - t0.at
    packets = p1 - p0
    if packets <= 0:
        raise RuntimeError("no packet was sent during the window")
    host = threads_cpu_delta_ns(all0, all1)
    busy = busy_seconds(t0, t1)
    steal = sum(t1.steal[c] - t0.steal[c] for c in t1.steal)
    out: dict[str, Any] = {
        "packets": packets,
        "seconds": round(elapsed, 3),
        "rate_pps": round(packets / elapsed),
        "host_ns_per_packet": round(host / packets, 1),
        "observer_ns_per_packet": round((own1 - own0) / packets, 1),
        "sender_process_ns_per_packet": round((snd1 - snd0) / packets, 1),
        "not_idle_ns_per_packet": {c: round(v * 1e9 / packets, 1) for c, v in busy.items()},
        "steal_ns_per_packet": round(steal * 1e9 / packets, 1),
        "sender_ticks_behind": report["behind"],
        "sent": report["sent"],
    }
    if observer.counted is not None:
        out["counted"] = observer.counted
    if observer.detail:
        out["capture_stats"] = observer.detail
    return out


def alternating(kind: str, pair: Pair, rate: float, windows: int,
                window_s: float) -> dict[str, Any]:
    """flowkit's kernel side alone, in short windows: with the sender running, its programs are
    attached and detached in turn (``2 * windows + 1`` windows, off first); each on-window's
    host CPU per packet minus the mean of the off-windows around it. Short windows cancel the
    slow drifts of the VM that long windows cannot."""
    name, _, tree = kind.partition("@")
    obj = name.split(":", 1)[1] if ":" in name else None
    if obj is None and tree:
        obj = str(Path(tree) / "flowkit" / "bpf" / "flowkit.bpf.o")
    hook = TcxHook(pair, obj)
    per_packet: list[tuple[bool, float]] = []
    try:
        with sending(pair, rate) as snd:
            time.sleep(1.0)
            for i in range(2 * windows + 1):
                on = i % 2 == 1
                hook.set(on)
                time.sleep(0.05)
                cpu0, p0 = all_threads_cpu_ns(), tx_packets(snd.proc.pid, pair.left.ifname)
                time.sleep(window_s)
                cpu1, p1 = all_threads_cpu_ns(), tx_packets(snd.proc.pid, pair.left.ifname)
                per_packet.append((on, threads_cpu_delta_ns(cpu0, cpu1) / max(1, p1 - p0)))
            hook.set(False)
            behind = snd.stop()["behind"]
    finally:
        hook.close()
    diffs = [value - (per_packet[j - 1][1] + per_packet[j + 1][1]) / 2
             for j, (on, value) in enumerate(per_packet) if on]
    quartiles = statistics.quantiles(diffs, n=4)
    return {
        "windows": windows, "window_s": window_s, "sender_ticks_behind": behind,
        "kernel_ns_per_packet": round(statistics.median(diffs), 1),
        "quartiles": [round(q, 1) for q in quartiles],
        "off_ns_per_packet": round(statistics.median(v for on, v in per_packet if not on), 1),
        "each": [round(d, 1) for d in diffs],
    }


def idle_cpu(kind: str, pair: Pair, seconds: float, workdir: Path) -> dict[str, Any]:
    """The observer's own CPU time with no traffic at all (its fixed cost), from 5 s after it
    is ready."""
    with observe(kind, pair, workdir) as observer:
        time.sleep(5.0)  # past the start's one-off work (first drains, garbage collection)
        own0, at0 = thread_cpu_ns(observer.pids), time.monotonic()
        time.sleep(seconds)
        own1, at1 = thread_cpu_ns(observer.pids), time.monotonic()
    ms_per_s = (own1 - own0) / 1e6 / (at1 - at0)
    return {"seconds": round(at1 - at0, 2), "own_ms_per_s": round(ms_per_s, 3),
            "own_percent_of_one_cpu": round(ms_per_s / 10, 3)}


# -- summary ------------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def summarise(runs: dict[str, list[dict[str, Any]]],
              toggled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per observer: host cost per packet (its window minus the same round's baseline), own
    CPU, the rest (kernel), over rounds; the pmacctd / flowkit ratios per round; and, for
    flowkit, the kernel side from alternating windows plus its own CPU."""
    base = runs["none"]
    out: dict[str, Any] = {"none": {
        "host_ns_per_packet": _spread([r["host_ns_per_packet"] for r in base]),
        "rate_pps": _spread([r["rate_pps"] for r in base]),
    }}
    costs: dict[str, list[float]] = {}
    for kind, results in runs.items():
        if kind == "none":
            continue
        pairs = list(zip(results, base, strict=True))
        host = [r["host_ns_per_packet"] - b["host_ns_per_packet"] for r, b in pairs]
        own = [r["observer_ns_per_packet"] for r in results]
        costs[kind] = host
        entry: dict[str, Any] = {
            "host_ns_per_packet": _spread(host),
            "own_ns_per_packet": _spread(own),
            "kernel_ns_per_packet": _spread([h - o for h, o in zip(host, own, strict=True)]),
            "sender_process_ns_per_packet": _spread(
                [r["sender_process_ns_per_packet"] - b["sender_process_ns_per_packet"]
                 for r, b in pairs]),
            "rate_pps": _spread([r["rate_pps"] for r in results]),
            "counted_share": _spread([100.0 * r.get("counted", 0) / r["sent"] for r in results]),
            "every_packet_counted": all(r.get("counted") == r["sent"] for r in results),
        }
        out[kind] = entry
    pmacct = costs.get("pmacctd")
    for kind, host in costs.items():
        if kind.startswith("flowkit") and pmacct:
            ratios = [p / f for p, f in zip(pmacct, host, strict=True) if f > 0]
            out[kind]["pmacctd_over_this"] = {
                "per_round": [round(r, 1) for r in ratios],
                "of_medians": round(statistics.median(pmacct) / statistics.median(host), 1)
                if statistics.median(host) > 0 else None,
                **_spread(ratios),
            } if ratios else None
    for kind, alt in (toggled or {}).items():
        if kind not in out:
            continue
        own = out[kind]["own_ns_per_packet"]["median"]
        host = alt["kernel_ns_per_packet"] + own
        out[kind]["alternating"] = {
            "kernel_ns_per_packet": alt["kernel_ns_per_packet"],
            "kernel_quartiles": alt["quartiles"],
            "host_ns_per_packet": round(host, 1),
            "host_quartiles": [round(q + own, 1) for q in alt["quartiles"]],
        }
        if pmacct and host > 0:
            p = statistics.median(pmacct)
            low, high = alt["quartiles"][0] + own, alt["quartiles"][2] + own
            out[kind]["alternating"]["pmacctd_over_this"] = {
                "median": round(p / host, 1),
                # pmacctd's median over flowkit's upper and lower quartile (None: unbounded)
                "quartile_range": [round(p / high, 1) if high > 0 else None,
                                   round(p / low, 1) if low > 0 else None],
            }
    return out


def verdict(summary: dict[str, Any]) -> list[str]:
    lines = []
    pm = summary.get("pmacctd")
    for kind, entry in summary.items():
        if not kind.startswith("flowkit"):
            continue
        host = entry["host_ns_per_packet"]
        line = (f"{kind}: {host['median']:.0f} ns/packet whole host (rounds {host['min']:.0f} to "
                f"{host['max']:.0f}; own CPU {entry['own_ns_per_packet']['median']:.1f}"
                + (f", idle {entry['idle']['own_ms_per_s']:.2f} ms/s" if "idle" in entry else "")
                + f"), every packet counted: {'yes' if entry['every_packet_counted'] else 'NO'}")
        if pm:
            ratio = entry.get("pmacctd_over_this")
            p = pm["host_ns_per_packet"]
            line += (f"; pmacctd {p['median']:.0f} ns/packet (rounds {p['min']:.0f} to "
                     f"{p['max']:.0f}; counted {pm['counted_share']['min']:.2f}-"
                     f"{pm['counted_share']['max']:.2f} % of the packets sent)")
            if ratio:
                line += (f"; pmacctd / flowkit = {ratio['of_medians']}x (per round "
                         f"{ratio['min']}x to {ratio['max']}x)")
        alt = entry.get("alternating")
        if alt:
            line += (f". Alternating windows: flowkit {alt['host_ns_per_packet']:.0f} ns/packet "
                     f"(kernel {alt['kernel_ns_per_packet']:.0f}, quartiles "
                     f"{alt['kernel_quartiles'][0]:.0f} to {alt['kernel_quartiles'][2]:.0f}, "
                     f"+ own)")
            r = alt.get("pmacctd_over_this")
            if r:
                lo, hi = r["quartile_range"]
                line += (f"; pmacctd / flowkit = {r['median']}x (over flowkit's quartiles: "
                         f"{lo}x to {hi if hi is not None else 'unbounded '}x)")
        lines.append("VERDICT " + line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=80_000, help="packets per second")
    parser.add_argument("--seconds", type=float, default=12, help="measured seconds per window")
    parser.add_argument("--rounds", type=int, default=5, help="windows per observer")
    parser.add_argument("--observers", default="flowkit,pmacctd",
                        help="comma-separated: flowkit, flowkit:<object>, flowkit@<tree>, "
                        "pmacctd ('none', the baseline, is always measured)")
    parser.add_argument("--toggle-windows", type=int, default=30,
                        help="flowkit's kernel side is also measured in this many on-windows "
                        "alternating with off-windows (0: not)")
    parser.add_argument("--toggle-window", type=float, default=1.0,
                        help="seconds per alternating window")
    parser.add_argument("--idle-seconds", type=float, default=10,
                        help="also measure each observer's own CPU without traffic for this "
                        "long (0: not)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, eBPF, AF_PACKET)")
    # SIGTERM unwinds like an exception, so that namespaces and processes are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {int(OBSERVER_CPU)})  # keep this process off the sender's CPU
    kinds = ["none", *[k for k in args.observers.split(",") if k and k != "none"]]
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    idle: dict[str, Any] = {}
    toggled: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp, Pair.create("fkBh") as pair:
        if args.idle_seconds > 0:
            for kind in kinds[1:]:
                idle[kind] = idle_cpu(kind, pair, args.idle_seconds, Path(tmp))
                print(json.dumps({"idle": kind, **idle[kind]}), file=sys.stderr, flush=True)
        if args.toggle_windows > 0:
            for kind in kinds[1:]:
                if kind.startswith("flowkit"):
                    toggled[kind] = alternating(kind, pair, args.rate, args.toggle_windows,
                                                args.toggle_window)
                    print(json.dumps({"alternating": kind, **toggled[kind]}), file=sys.stderr,
                          flush=True)
        for round_no in range(args.rounds):
            order = kinds[round_no % len(kinds):] + kinds[:round_no % len(kinds)]
            for kind in order:
                result = window(kind, pair, args.rate, args.seconds, Path(tmp))
                runs[kind].append(result)
                print(json.dumps({"round": round_no, "observer": kind, **result}),
                      file=sys.stderr, flush=True)
    summary = summarise(runs, toggled)
    for kind, entry in idle.items():
        summary[kind]["idle"] = entry
    print(json.dumps({"rate_pps": args.rate, "seconds": args.seconds, "rounds": args.rounds,
                      "runs": runs, "summary": summary}, indent=2))
    for line in verdict(summary):
        print(line)


if __name__ == "__main__":
    main()
