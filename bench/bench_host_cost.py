"""Whole host cost per packet: flowkit against pmacctd on the same trafgen traffic over a veth.

trafgen, pinned to CPU 1, sends 60-byte UDP frames as fast as it can over a veth pair between two
namespaces. A veth delivers in the sender's context, so CPU 1 also runs the receive path and any
hook on it: the sender core's CPU time per packet (trafgen's, which includes the softirq work
done in its context, plus ksoftirqd's on CPU 1) grows by exactly what the observer costs in the
kernel. CPU time rather than run time / packets, so that other work on the VM does not count.
The collector runs on CPU 0 and its own CPU time is read from /proc. For each collector:

    host ns/packet = (sender ns/packet with it - sender ns/packet with none) + its CPU ns/packet

Collectors, run in rotating order for ``--rounds`` rounds of ``--seconds`` each (medians are
reported, so that a burst of other work on the VM does not decide the result):

- ``none``: nothing observes the receiving veth end (the baseline);
- ``flowkit``: flowkit-agent (TCX, native accounter, stdout to a pipe, CACHE_ACTIVE_TIMEOUT=1s);
  every round also checks that it counted every packet trafgen sent;
- ``flowkit:<object>``: the same with EBPF_OBJECT=<object> (to compare datapath versions);
- ``pmacctd``: pmacctd (libpcap on an AF_PACKET socket, print plugin, 1 s refresh).

Usage::

    sudo .venv/bin/python bench/bench_host_cost.py --seconds 5 --rounds 5
    sudo .venv/bin/python bench/bench_host_cost.py --collectors none,flowkit,flowkit:/tmp/old.bpf.o

Prints one JSON object. Everything it creates (namespaces, veths, processes) is removed on exit.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_rate import pmacctd  # noqa: E402
from measure import (  # noqa: E402
    alternating_windows,
    process_cpu_seconds,
    rotating_rounds,
)
from netns import AgentRun, Pair, flow_totals, sh  # noqa: E402

SENDER_CPU = "1"


def ksoftirqd(cpu: str) -> list[int]:
    """Pid of ``ksoftirqd/<cpu>`` (receive work deferred from the sender's context runs there)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return [int(entry.name)]
            except OSError:
                continue
    return []


def trafgen(pair: Pair, seconds: float, cfg: Path) -> tuple[int, float]:
    """Send for ``seconds``; return (packets sent, CPU seconds of the sender core's work).

    The sender's CPU time is trafgen's (from wait4: the softirq work a veth does in its context
    is charged to it, this kernel has no IRQ time accounting) plus ksoftirqd's on that CPU.
    """
    left, right = pair.left, pair.right
    cfg.write_text(
        f"{{ eth(da={right.mac}, sa={left.mac}), ipv4(saddr={left.ip4}, daddr={right.ip4}), "
        "udp(sport=40000, dport=7777), fill(0x00, 18) }\n"
    )
    cmd = ["timeout", "-s", "INT", str(seconds),
           *left.ns.cmd("trafgen", "--dev", left.ifname, "--conf", str(cfg), "--cpu",
                        SENDER_CPU, "-q")]
    soft = ksoftirqd(SENDER_CPU)
    soft_before = process_cpu_seconds(soft)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, _status, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        out.seek(0)
        text = out.read()
    match = re.search(r"(\d+) packets outgoing", text)
    if not match:
        raise RuntimeError(text)
    sender_cpu = usage.ru_utime + usage.ru_stime + process_cpu_seconds(soft) - soft_before
    return int(match.group(1)), sender_cpu


@contextmanager
def collector(kind: str, pair: Pair, workdir: Path) -> Iterator[tuple[list[int], Any]]:
    """Start the collector on the receiving end; yield (its pids, its AgentRun or None)."""
    right = pair.right
    if kind == "none":
        yield [], None
        return
    if kind.startswith("flowkit"):
        env = {"INTERFACES": right.ifname, "TC_ATTACH_MODE": "tcx"}
        if ":" in kind:
            env["EBPF_OBJECT"] = kind.split(":", 1)[1]
        with AgentRun(right.ns, env, taskset="0") as agent:
            agent.wait_traced(right.ifname)
            yield [agent.proc.pid], agent
        return
    if kind == "pmacctd":
        with pmacctd(right, workdir) as pids:
            yield pids, None
        return
    raise SystemExit(f"unknown collector {kind!r}")


def one_run(kind: str, seconds: float, workdir: Path) -> dict[str, Any]:
    with Pair.create("fkBh") as pair, collector(kind, pair, workdir) as (pids, agent):
        cpu_before = process_cpu_seconds(pids)
        start = time.monotonic()
        sent, sender_cpu = trafgen(pair, seconds, workdir / "rate.cfg")
        elapsed = time.monotonic() - start
        time.sleep(1.5)  # the collector's last period
        cpu = process_cpu_seconds(pids) - cpu_before
        out: dict[str, Any] = {
            "sent": sent,
            "sender_ns_per_packet": sender_cpu * 1e9 / sent,
            "sender_wall_ns_per_packet": seconds * 1e9 / sent,
            "collector_cpu_ns_per_packet": cpu * 1e9 / sent,
            "wall_s": round(elapsed, 2),
        }
        if agent is not None:
            agent.stop()
            counted, _ = flow_totals(agent.flows, DstPort=7777, FlowDirection=0)
            out["counted"] = counted
    return out


# -- alternating windows: the kernel cost, robust to other work on the VM ----------------------


class Hook:
    """Something that observes the receiving veth end and can be switched on and off quickly."""

    def __init__(self, kind: str, pair: Pair, workdir: Path) -> None:
        self.kind, self.pair, self.workdir = kind, pair, workdir
        self._on = False
        self._stack = contextlib.ExitStack()
        if kind.startswith("flowkit"):
            from flowkit.ebpf import CollectionSpec
            from flowkit.ebpf.attach import Attacher
            from flowkit.netns import NetnsHandle

            path = kind.split(":", 1)[1] if ":" in kind else str(
                ROOT / "flowkit" / "bpf" / "flowkit.bpf.o")
            spec = CollectionSpec.from_file(path)
            if "flow_cache" in spec.variables:
                spec.variables["flow_cache"].set(1)  # as flowkit-agent loads it
            self._collection = spec.load()
            programs = self._collection.programs
            self._attacher = Attacher(programs["flowkit_ingress"].fd,
                                      programs["flowkit_egress"].fd, "tcx")
            with NetnsHandle.open(pair.right.ns.name) as handle:
                self._netns_id = handle.id or 0
            self._ifindex = pair.right.ifindex

    def on(self) -> None:
        if self.kind.startswith("flowkit"):
            self._attacher.attach(self._ifindex, self.pair.right.ifname,
                                  netns=self.pair.right.ns.name, netns_id=self._netns_id)
        elif self.kind == "pmacctd":
            self._stack.enter_context(pmacctd(self.pair.right, self.workdir, "pmacctd-alt"))
        self._on = True

    def off(self) -> None:
        if self.kind.startswith("flowkit"):
            self._attacher.detach(self._ifindex, self._netns_id)
        else:
            self._stack.close()
        self._on = False

    def close(self) -> None:
        if self._on:
            self.off()
        if self.kind.startswith("flowkit"):
            self._attacher.close()
            self._collection.close()


def _sender_state(pair: Pair) -> tuple[float, int]:
    """(CPU seconds of every process in the sender's namespace + ksoftirqd, packets sent)."""
    pids = [int(p) for p in sh("ip", "netns", "pids", pair.left.ns.name).stdout.split()]
    cpu = process_cpu_seconds(pids + ksoftirqd(SENDER_CPU))
    packets = pair.left.ns.link_stats(pair.left.ifname)["tx"]["packets"]
    return cpu, packets


def alternating(kind: str, windows: int, window_s: float, workdir: Path) -> dict[str, Any]:
    """Sender-core CPU per packet with the hook on minus with it off, in alternating windows.

    trafgen runs the whole time; each on-window is compared with the mean of the off-windows
    around it, and the median of those differences is the hook's kernel cost.
    """
    with Pair.create("fkBa") as pair:
        cfg = workdir / "alt.cfg"
        cfg.write_text(
            f"{{ eth(da={pair.right.mac}, sa={pair.left.mac}), ipv4(saddr={pair.left.ip4}, "
            f"daddr={pair.right.ip4}), udp(sport=40000, dport=7777), fill(0x00, 18) }}\n"
        )
        hook = Hook(kind, pair, workdir)
        sender = subprocess.Popen(
            pair.left.ns.cmd("trafgen", "--dev", pair.left.ifname, "--conf", str(cfg), "--cpu",
                             SENDER_CPU, "-q"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.0)
            result = alternating_windows(lambda state: hook.on() if state else hook.off(),
                                         lambda: _sender_state(pair), windows, window_s)
        finally:
            os.killpg(sender.pid, signal.SIGINT)  # trafgen and its worker
            try:
                sender.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(sender.pid, signal.SIGKILL)
                sender.wait(10)
            hook.close()
    return {
        "windows": windows,
        "window_s": window_s,
        "sender_ns_per_packet_off": result["off_per_unit"],
        "kernel_ns_per_packet": result["cost_per_unit"],
        "kernel_ns_per_packet_each": result["cost_per_unit_each"],
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(kernel: dict[str, dict[str, Any]],
              runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        own = _median(results, "collector_cpu_ns_per_packet")
        k = kernel[kind]["kernel_ns_per_packet"]
        entry: dict[str, Any] = {
            "kernel_ns_per_packet": k,
            "collector_cpu_ns_per_packet": round(own, 1),
            "host_ns_per_packet": round(k + own, 1),
            "sender_ns_per_packet_without_observer": kernel[kind]["sender_ns_per_packet_off"],
        }
        if "counted" in results[0]:
            entry["all_packets_counted"] = all(r["counted"] == r["sent"] for r in results)
        out[kind] = entry
    pmacct = out.get("pmacctd", {}).get("host_ns_per_packet")
    for kind, entry in list(out.items()):
        if kind.startswith("flowkit") and pmacct and entry["host_ns_per_packet"] > 0:
            entry["pmacctd_over_this"] = round(pmacct / entry["host_ns_per_packet"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=15,
                        help="on-windows per observer (as many off-windows around them)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--seconds", type=float, default=4,
                        help="length of each run measuring the observer's own CPU")
    parser.add_argument("--rounds", type=int, default=3, help="such runs per observer")
    parser.add_argument("--collectors", default="flowkit,pmacctd",
                        help="comma-separated: flowkit, flowkit:<object>, pmacctd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, eBPF, trafgen)")
    os.sched_setaffinity(0, {0})  # keep this process off the sender's CPU
    kinds = args.collectors.split(",")
    kernel: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp:
        for kind in kinds:
            kernel[kind] = alternating(kind, args.windows, args.window, Path(tmp))
            print(json.dumps({"collector": kind, **kernel[kind]}), file=sys.stderr, flush=True)
        runs = rotating_rounds(kinds, args.rounds,
                               lambda kind: one_run(kind, args.seconds, Path(tmp)))
    print(json.dumps({"kernel": kernel, "runs": runs, "summary": summarise(kernel, runs)},
                     indent=2))


if __name__ == "__main__":
    main()
