"""Where the kernel time of the copy path goes: perf samples of the sending core, hook on and off.

trafgen sends 60-byte UDP frames over a veth pair (its frames carry only the Ethernet header in
the linear area: the frames flowkit's program cannot read in place). A veth delivers in the
sender's context, so the core trafgen's worker runs on also runs the receive path and the TC
hook. While trafgen runs, each variant is attached in turn to the receiving end (TCX ingress, as
flowkit-agent attaches it) for ``--seconds``, and ``perf record -g`` samples that core
(cpu-clock, 2,000 Hz); ``--rounds`` rounds, the order rotating. Per variant, the median over
rounds of nanoseconds per packet spent:

- ``sender``: everything on that core (the sender's whole CPU per packet);
- ``program``: in the program, helpers included (samples with a ``bpf_prog_*`` frame);
  ``helpers`` is the part in ``bpf_skb_pull_data``/``bpf_skb_load_bytes``;
- ``dispatch``: in ``__netif_receive_skb_core`` itself (TCX runs inline there);
- ``stack_pulls``: in ``__pskb_pull_tail`` outside the program (ip_rcv and the UDP demux
  pulling the headers into the linear area);

and ``attributed`` = program + (dispatch - none's dispatch) + (stack_pulls - none's
stack_pulls), each difference taken within the round: what the hook adds where it runs, minus
what it saves the stack. ``sender_minus_none`` is the plain difference of whole-core CPU per
packet, far noisier on a VM (several hundred ns between windows).

Variants: ``none`` (nothing attached), ``empty`` (a TCX program that only returns: the floor of
any TC hook), or the path of a flowkit object (loaded as flowkit-agent loads it: flow cache on).

Usage::

    sudo .venv/bin/python bench/bench_copy_path.py --seconds 3 --rounds 3 \\
        --variants none,empty,/tmp/old.o,flowkit/bpf/flowkit.bpf.o

Needs root, trafgen and perf (linux-perf). Prints one JSON object; everything it creates
(namespaces, veths, programs, perf data) is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from measure import TcxHook  # noqa: E402
from netns import Pair, sh  # noqa: E402

EMPTY_PROGRAM = """
#define SEC(n) __attribute__((section(n), used))
struct __sk_buff { unsigned int len; };
SEC("tc") int flowkit_ingress(struct __sk_buff *skb) { return -1; }
SEC("tc") int flowkit_egress(struct __sk_buff *skb) { return -1; }
char LICENSE[] SEC("license") = "GPL";
"""

FREQUENCY = 2000  # perf samples per second: one sample = 500 us of the core

Stack = list[str]
BUCKETS: dict[str, Callable[[Stack], bool]] = {
    "program": lambda st: any(f.startswith("bpf_prog_") for f in st),
    "helpers": lambda st: any(f.startswith(("bpf_skb_pull_data", "bpf_skb_load_bytes"))
                              for f in st),
    "dispatch": lambda st: st[0].startswith("__netif_receive_skb_core"),
    "stack_pulls": lambda st: (any(f.startswith("__pskb_pull_tail") for f in st)
                               and not any(f.startswith("bpf_prog_") for f in st)),
}


def worker_cpu(pids: list[int]) -> str:
    """The CPU trafgen's sending worker runs on (trafgen pins worker i to CPU i)."""
    out: list[str] = sh("ps", "-L", "-o", "psr=", "-p", ",".join(map(str, pids))).stdout.split()
    return out[-1]


def sender_pids(pair: Pair) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", pair.left.ns.name).stdout.split()]


def samples(data: Path, comm: str = "trafgen") -> tuple[int, dict[str, int]]:
    """(samples of ``comm``, samples per bucket) of one perf recording."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym"],
                          capture_output=True, text=True, check=True).stdout
    total = 0
    counts = dict.fromkeys(BUCKETS, 0)
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or lines[0].split()[0] != comm:
            continue
        stack = [parts[1] if len(parts) > 1 else "?" for parts in
                 (line.split() for line in lines[1:])]
        if not stack:
            continue
        total += 1
        for name, test in BUCKETS.items():
            if test(stack):
                counts[name] += 1
    return total, counts


def measure(variants: list[str], seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    per: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with Pair.create("fkCp") as pair:
        cfg = workdir / "copy.cfg"
        cfg.write_text(
            f"{{ eth(da={pair.right.mac}, sa={pair.left.mac}), ipv4(saddr={pair.left.ip4}, "
            f"daddr={pair.right.ip4}), udp(sport=40000, dport=7777), fill(0x00, 18) }}\n")
        hooks: dict[str, TcxHook] = {}
        sender = subprocess.Popen(
            pair.left.ns.cmd("trafgen", "--dev", pair.left.ifname, "--conf", str(cfg),
                             "--cpus", "1", "--qdisc-path"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.0)
            cpu = worker_cpu(sender_pids(pair))
            for v in variants:
                if v != "none":
                    hooks[v] = TcxHook(pair, str(workdir / "empty.o") if v == "empty" else v)
            for r in range(rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for v in order:
                    if v != "none":
                        hooks[v].set(True)
                    time.sleep(0.3)
                    data = workdir / "perf.data"
                    before = pair.left.ns.link_stats(pair.left.ifname)["tx"]["packets"]
                    subprocess.run(["perf", "record", "-q", "-F", str(FREQUENCY), "-e",
                                    "cpu-clock", "-C", cpu, "-g", "-o", str(data), "--",
                                    "sleep", str(seconds)], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    packets = pair.left.ns.link_stats(pair.left.ifname)["tx"]["packets"] - before
                    if v != "none":
                        hooks[v].set(False)
                    total, counts = samples(data)
                    ns = 1e9 / FREQUENCY / packets
                    row = {"sender": total * ns, "packets": packets}
                    row.update({k: n * ns for k, n in counts.items()})
                    per[v].append(row)
        finally:
            os.killpg(sender.pid, signal.SIGINT)
            try:
                sender.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(sender.pid, signal.SIGKILL)
                sender.wait(10)
            for hook in hooks.values():
                hook.close()
    return summarise(variants, per)


def summarise(variants: list[str], per: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    base = per.get("none")
    out: dict[str, Any] = {}
    for v in variants:
        rows = per[v]
        result: dict[str, Any] = {
            k: round(statistics.median(r[k] for r in rows), 1)
            for k in ("sender", "program", "helpers", "dispatch", "stack_pulls")
        }
        result["packets_per_window"] = int(statistics.median(r["packets"] for r in rows))
        if base is not None and v != "none":
            attributed = [r["program"] + (r["dispatch"] - b["dispatch"])
                          + (r["stack_pulls"] - b["stack_pulls"])
                          for r, b in zip(rows, base, strict=True)]
            result["attributed"] = round(statistics.median(attributed), 1)
            result["attributed_each"] = [round(a, 1) for a in attributed]
            result["sender_minus_none"] = round(statistics.median(
                r["sender"] - b["sender"] for r, b in zip(rows, base, strict=True)), 1)
        out[v] = result
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="none,empty,"
                    + str(ROOT / "flowkit" / "bpf" / "flowkit.bpf.o"))
    args = ap.parse_args()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="fk-copy-path-") as tmp:
        workdir = Path(tmp)
        if "empty" in variants:
            (workdir / "empty.bpf.c").write_text(EMPTY_PROGRAM)
            sh("clang", "-O2", "-target", "bpf", "-c", str(workdir / "empty.bpf.c"), "-o",
               str(workdir / "empty.o"))
        result = measure(variants, args.seconds, args.rounds, workdir)
    print(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "variants": result},
                     indent=2))


if __name__ == "__main__":
    main()
