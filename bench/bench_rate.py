"""Share of packets counted at trafgen's highest rate, and CPU per million packets.

trafgen (one worker, which trafgen pins to CPU 0) sends 60-byte UDP frames for ``--seconds``
over a veth pair between two namespaces; the collector under test traces the receiving end from
CPU 1:

- ``flowkit``: flowkit-agent (TRACER=ebpf, ACCOUNTER=native, stdout exporter to a pipe,
  CACHE_ACTIVE_TIMEOUT=1s). Reports packets counted / packets sent and its CPU seconds per
  million packets;
- ``pmacctd``: pmacctd (libpcap, print plugin, 1 s refresh) on the same traffic: CPU seconds
  per million packets.

Usage: ``sudo .venv/bin/python bench/bench_rate.py [--seconds 10]``. Prints one JSON object.
Everything it creates (namespaces, veths, processes) is removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from measure import pmacct_pids, process_cpu_seconds, write_pmacctd_conf  # noqa: E402
from netns import AgentRun, Endpoint, Pair, flow_totals  # noqa: E402

# trafgen's --cpus 1 starts one worker and pins it to CPU 0 (it has no option to choose the
# CPU), so the collector runs on the other one.
COLLECTOR_CPU = "1"


def trafgen(pair: Pair, seconds: float, cfg: Path) -> int:
    left, right = pair.left, pair.right
    cfg.write_text(
        f"{{ eth(da={right.mac}, sa={left.mac}), ipv4(saddr={left.ip4}, daddr={right.ip4}), "
        "udp(sport=40000, dport=7777), fill(0x00, 18) }\n"
    )
    cmd = ["timeout", "-s", "INT", str(seconds),
           *left.ns.cmd("trafgen", "--dev", left.ifname, "--conf", str(cfg), "--cpus", "1",
                        "--qdisc-path")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"(\d+) packets outgoing", proc.stdout + proc.stderr)
    if not match:
        raise RuntimeError(proc.stdout + proc.stderr)
    return int(match.group(1))


def flowkit_run(seconds: float, workdir: Path) -> dict[str, Any]:
    with Pair.create("fkBr") as pair:
        right = pair.right
        env = {"INTERFACES": right.ifname, "TC_ATTACH_MODE": "tcx"}
        with AgentRun(right.ns, env, taskset=COLLECTOR_CPU) as agent:
            agent.wait_traced(right.ifname)
            cpu_before = process_cpu_seconds([agent.proc.pid])
            sent = trafgen(pair, seconds, workdir / "rate.cfg")
            time.sleep(1.5)  # let the last drain run before reading the CPU time
            cpu = process_cpu_seconds([agent.proc.pid]) - cpu_before
            agent.stop()
        counted, _ = flow_totals(agent.flows, DstPort=7777, FlowDirection=0)
    return {
        "sent": sent,
        "rate_pps": round(sent / seconds),
        "counted": counted,
        "share_counted": round(counted / sent, 6),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_million_packets": round(cpu / sent * 1e6, 3),
    }


@contextlib.contextmanager
def pmacctd(end: Endpoint, workdir: Path, name: str = "pmacctd") -> Iterator[list[int]]:
    """pmacctd (on COLLECTOR_CPU) capturing on the endpoint's interface, its capture socket
    open; yields its pids; stopped on exit."""
    conf = write_pmacctd_conf(workdir / f"{name}.conf", end.ifname, workdir / f"{name}.json")
    proc = end.ns.popen(["taskset", "-c", COLLECTOR_CPU, "pmacctd", "-f", str(conf)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # pcap socket open
        yield pmacct_pids(end.ns)
    finally:
        proc.terminate()
        proc.wait(10)


def pmacctd_run(seconds: float, workdir: Path) -> dict[str, Any]:
    with Pair.create("fkBp") as pair, pmacctd(pair.right, workdir) as pids:
        cpu_before = process_cpu_seconds(pids)
        sent = trafgen(pair, seconds, workdir / "rate.cfg")
        time.sleep(1.5)
        cpu = process_cpu_seconds(pids) - cpu_before
    return {
        "sent": sent,
        "rate_pps": round(sent / seconds),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_million_packets": round(cpu / sent * 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--skip-pmacct", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp:
        result: dict[str, Any] = {"seconds": args.seconds,
                                  "flowkit": flowkit_run(args.seconds, Path(tmp))}
        if not args.skip_pmacct:
            result["pmacctd"] = pmacctd_run(args.seconds, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
