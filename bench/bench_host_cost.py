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
import json
import os
import re
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

from bench_rate import cpu_seconds, pmacct_pids  # noqa: E402
from netns import AgentRun, Pair, flow_totals  # noqa: E402

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
    soft_before = cpu_seconds(soft)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, _status, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        out.seek(0)
        text = out.read()
    match = re.search(r"(\d+) packets outgoing", text)
    if not match:
        raise RuntimeError(text)
    sender_cpu = usage.ru_utime + usage.ru_stime + cpu_seconds(soft) - soft_before
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
        conf = workdir / "pmacctd.conf"
        conf.write_text(
            "daemonize: false\n"
            f"pcap_interface: {right.ifname}\n"
            "plugins: print\n"
            "aggregate: src_mac,dst_mac,src_host,dst_host,src_port,dst_port,proto\n"
            "print_output: json\n"
            f"print_output_file: {workdir / 'pmacct.json'}\n"
            "print_refresh_time: 1\n"
        )
        proc = right.ns.popen(["taskset", "-c", "0", "pmacctd", "-f", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)  # pcap socket open
            yield pmacct_pids(right.ns), None
        finally:
            proc.terminate()
            proc.wait(10)
        return
    raise SystemExit(f"unknown collector {kind!r}")


def one_run(kind: str, seconds: float, workdir: Path) -> dict[str, Any]:
    with Pair.create("fkBh") as pair, collector(kind, pair, workdir) as (pids, agent):
        cpu_before = cpu_seconds(pids)
        start = time.monotonic()
        sent, sender_cpu = trafgen(pair, seconds, workdir / "rate.cfg")
        elapsed = time.monotonic() - start
        time.sleep(1.5)  # the collector's last period
        cpu = cpu_seconds(pids) - cpu_before
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


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    base = _median(runs["none"], "sender_ns_per_packet") if "none" in runs else None
    out: dict[str, Any] = {}
    for kind, results in runs.items():
        sender = _median(results, "sender_ns_per_packet")
        entry: dict[str, Any] = {
            "rounds": len(results),
            "packets_sent_median": int(_median(results, "sent")),
            "sender_ns_per_packet": round(sender, 1),
        }
        if kind != "none" and base is not None:
            hook = sender - base
            own = _median(results, "collector_cpu_ns_per_packet")
            entry.update({
                "kernel_ns_per_packet": round(hook, 1),
                "collector_cpu_ns_per_packet": round(own, 1),
                "host_ns_per_packet": round(hook + own, 1),
            })
        if "counted" in results[0]:
            entry["all_packets_counted"] = all(r["counted"] == r["sent"] for r in results)
        out[kind] = entry
    flowkit = out.get("flowkit", {}).get("host_ns_per_packet")
    pmacct = out.get("pmacctd", {}).get("host_ns_per_packet")
    if flowkit and pmacct and flowkit > 0:
        out["pmacctd_over_flowkit"] = round(pmacct / flowkit, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--collectors", default="none,flowkit,pmacctd",
                        help="comma-separated: none, flowkit, flowkit:<object>, pmacctd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, eBPF, trafgen)")
    kinds = args.collectors.split(",")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp:
        for round_no in range(args.rounds):
            order = kinds[round_no % len(kinds):] + kinds[:round_no % len(kinds)]
            for kind in order:
                result = one_run(kind, args.seconds, Path(tmp))
                runs[kind].append(result)
                print(json.dumps({"round": round_no, "collector": kind, **result}),
                      file=sys.stderr, flush=True)
    print(json.dumps({"seconds": args.seconds, "runs": runs, "summary": summarise(runs)},
                     indent=2))


if __name__ == "__main__":
    main()
