"""Kernel cost per packet of flowkit's eBPF program, against an empty TC program.

Two measurements (root needed; everything created is removed on exit):

1. BPF_PROG_TEST_RUN: the programs run ``--repeat`` times on one 64-byte IPv4/UDP frame (the
   flow exists after the first run, so this is the steady-state hit path); best of ``--rounds``.
2. bpf_stats on live traffic: trafgen sends ``--packets`` frames over a veth pair between two
   namespaces; flowkit-agent traces the receiving end; run_time_ns / run_cnt of the attached
   programs is read with kernel.bpf_stats_enabled=1 (restored afterwards). The same is done with
   an empty program attached as a tc filter.

3. ``--compare OLD.o`` (BPF_PROG_TEST_RUN only): the empty program, ``OLD.o`` (another build of
   flowkit's object, e.g. ``git show REV:flowkit/bpf/flowkit.bpf.o > old.o``) and the current
   object run alternately, one round each in turn, so that a busy machine slows them alike;
   per object the best round and the median of the rounds.
4. ``--features`` (BPF_PROG_TEST_RUN only): the hit path with each optional feature switched on
   in turn (filter rules, DNS tracking), and the cost of the drop and RTT programs per event.

Objects are loaded as flowkit-agent loads them: with the flow cache on (``flow_cache`` = 1)
where the object has one. ``--flows N`` makes the live frames cycle through N flows (source
ports), so that consecutive packets never share a flow.

Usage: ``sudo .venv/bin/python bench/bench_kernel.py [--repeat N] [--rounds N] [--packets N]
[--flows N] [--compare OLD.o] [--features] [--no-live]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from netns import AgentRun, Pair, sh  # noqa: E402

from flowkit.ebpf import CollectionSpec  # noqa: E402

EMPTY_PROGRAM = """
#define SEC(n) __attribute__((section(n), used))
struct __sk_buff { unsigned int len; };
SEC("tc") int empty(struct __sk_buff *skb) { return -1; }
char LICENSE[] SEC("license") = "GPL";
"""


def udp_frame() -> bytes:
    """A 64-byte Ethernet/IPv4/UDP frame (without FCS)."""
    payload = b"\0" * (64 - 14 - 20 - 8)
    udp = struct.pack("!HHHH", 40000, 5001, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    return bytes.fromhex("02fb00000002" "02fb00000001") + b"\x08\x00" + ip + udp


def build_empty(directory: Path) -> Path:
    src = directory / "empty.bpf.c"
    src.write_text(EMPTY_PROGRAM)
    out = directory / "empty.bpf.o"
    sh("clang", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out))
    return out


def best_duration(program: Any, frame: bytes, repeat: int, rounds: int) -> int:
    program.test_run(frame, 1)  # create the flow: later runs measure the hit path
    return min(program.test_run(frame, repeat)[1] for _ in range(rounds))


def _spec(path: Path) -> CollectionSpec:
    """An object's spec set up as flowkit-agent loads it: the flow cache on where the object has
    one (objects from before it do not)."""
    spec = CollectionSpec.from_file(path)
    if "flow_cache" in spec.variables:
        spec.variables["flow_cache"].set(1)
    return spec


def _loaded(path: Path, **variables: int) -> Any:
    spec = _spec(path)
    for name, value in variables.items():
        spec.variables[name].set(value)
    programs = [name for name in spec.programs if name in ("empty", "flowkit_ingress")]
    return spec.load(programs=programs)


def compare_costs(empty_obj: Path, old_obj: Path, repeat: int, rounds: int) -> dict[str, Any]:
    """Empty, old and current objects, one round each in turn (see the module docstring)."""
    frame = udp_frame()
    objects = {"empty": (empty_obj, "empty"), "old": (old_obj, "flowkit_ingress"),
               "new": (ROOT / "flowkit" / "bpf" / "flowkit.bpf.o", "flowkit_ingress")}
    collections = {label: _loaded(path) for label, (path, _) in objects.items()}
    try:
        programs = {label: collections[label].programs[prog]
                    for label, (_, prog) in objects.items()}
        for program in programs.values():
            program.test_run(frame, 1)  # create the flow: later runs measure the hit path
        runs: dict[str, list[int]] = {label: [] for label in objects}
        for _ in range(rounds):
            for label, program in programs.items():
                runs[label].append(program.test_run(frame, repeat)[1])
    finally:
        for collection in collections.values():
            collection.close()
    out: dict[str, Any] = {"repeat": repeat, "rounds": rounds, "old_object": str(old_obj)}
    for label, values in runs.items():
        out[f"{label}_best_ns"] = min(values)
        out[f"{label}_median_ns"] = sorted(values)[len(values) // 2]
        out[f"{label}_rounds_ns"] = values
    for label in ("old", "new"):
        out[f"{label}_extra_best_ns"] = out[f"{label}_best_ns"] - out["empty_best_ns"]
        out[f"{label}_extra_median_ns"] = out[f"{label}_median_ns"] - out["empty_median_ns"]
    return out


def dns_query_frame() -> bytes:
    """A 64-byte-class Ethernet/IPv4/UDP DNS query for example.test (port 53)."""
    qname = b"\x07example\x04test\x00"
    dns = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(dns), 0) + dns
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    return bytes.fromhex("02fb00000002" "02fb00000001") + b"\x08\x00" + ip + udp


def feature_costs(empty_obj: Path, repeat: int, rounds: int) -> dict[str, Any]:
    """The hit path with each TC-side feature on, all variants alternating (see the docstring).

    ``filter_one_rule``: FLOW_FILTER_RULES with one Accept rule for 198.18.0.0/15 (the frame's
    source); ``dns_other_port``: ENABLE_DNS_TRACKING on a non-DNS frame (the port test only);
    ``dns_query``: the same on a DNS query frame (header and name copied, query map updated,
    feature map written, per DNS packet).
    """
    from flowkit.filters import parse_filter_rules

    obj = ROOT / "flowkit" / "bpf" / "flowkit.bpf.o"
    udp, dns = udp_frame(), dns_query_frame()
    variants: dict[str, tuple[Any, bytes]] = {}
    collections = []
    try:
        empty = _loaded(empty_obj)
        collections.append(empty)
        variants["empty"] = (empty.programs["empty"], udp)
        base = _loaded(obj)
        collections.append(base)
        variants["features_off"] = (base.programs["flowkit_ingress"], udp)
        spec = _spec(obj)
        spec.variables["filter_enabled"].set(1)
        rules = parse_filter_rules('[{"ip_cidr": "198.18.0.0/15", "action": "Accept"}]')
        spec.maps["filter_rules"].max_entries = len(rules.entries)
        filtered = spec.load(programs=["flowkit_ingress"])
        collections.append(filtered)
        for key, value in rules.map_entries():
            filtered.maps["filter_rules"].update(key, value)
        variants["filter_one_rule"] = (filtered.programs["flowkit_ingress"], udp)
        spec = _spec(obj)
        spec.variables["enable_dns"].set(1)
        for name in ("extras_a", "extras_b", "dns_queries"):
            spec.maps[name].max_entries = 1024
        tracked = spec.load(programs=["flowkit_ingress"])
        collections.append(tracked)
        variants["dns_other_port"] = (tracked.programs["flowkit_ingress"], udp)
        variants["dns_query"] = (tracked.programs["flowkit_ingress"], dns)
        for program, frame in variants.values():
            program.test_run(frame, 1)
        runs: dict[str, list[int]] = {label: [] for label in variants}
        for _ in range(rounds):
            for label, (program, frame) in variants.items():
                runs[label].append(program.test_run(frame, repeat)[1])
    finally:
        for collection in collections:
            collection.close()
    out: dict[str, Any] = {"repeat": repeat, "rounds": rounds}
    empty_best = min(runs["empty"])
    empty_median = sorted(runs["empty"])[len(runs["empty"]) // 2]
    for label, values in runs.items():
        median = sorted(values)[len(values) // 2]
        out[f"{label}_best_ns"] = min(values)
        out[f"{label}_median_ns"] = median
        out[f"{label}_extra_best_ns"] = min(values) - empty_best
        out[f"{label}_extra_median_ns"] = median - empty_median
    return out


def test_run_costs(empty_obj: Path, repeat: int, rounds: int) -> dict[str, Any]:
    frame = udp_frame()
    out: dict[str, Any] = {"frame_bytes": len(frame), "repeat": repeat, "rounds": rounds}
    with CollectionSpec.from_file(empty_obj).load() as empty:
        out["empty_ns"] = best_duration(empty.programs["empty"], frame, repeat, rounds)
    obj = ROOT / "flowkit" / "bpf" / "flowkit.bpf.o"
    for label, precise in (("flowkit_ns", 0), ("flowkit_precise_timestamps_ns", 1)):
        spec = _spec(obj)
        spec.variables["precise_timestamps"].set(precise)
        with spec.load() as coll:
            out[label] = best_duration(coll.programs["flowkit_ingress"], frame, repeat, rounds)
    out["flowkit_extra_ns"] = out["flowkit_ns"] - out["empty_ns"]
    out["flowkit_precise_extra_ns"] = out["flowkit_precise_timestamps_ns"] - out["empty_ns"]
    return out


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    old = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
    try:
        yield
    finally:
        sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={old}")


def prog_stats(prog_ids: set[int]) -> tuple[int, int]:
    progs = json.loads(sh("bpftool", "-j", "prog", "show").stdout)
    runs = [p for p in progs if p["id"] in prog_ids]
    return sum(p.get("run_time_ns", 0) for p in runs), sum(p.get("run_cnt", 0) for p in runs)


def agent_prog_ids(pid: int) -> set[int]:
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            if m := re.search(r"^prog_id:\s+(\d+)", info.read_text(), re.MULTILINE):
                ids.add(int(m.group(1)))
    return ids


def trafgen(pair: Pair, packets: int, cfg: Path, flows: int = 1) -> None:
    """``packets`` frames; with ``flows`` > 1 the source port steps through that many values,
    one flow after the other, so that consecutive frames never belong to the same flow."""
    left, right = pair.left, pair.right
    sport = "40000" if flows <= 1 else f"dinc(40000, {40000 + flows - 1}, 1)"
    cfg.write_text(
        f"{{ eth(da={right.mac}, sa={left.mac}), ipv4(saddr={left.ip4}, daddr={right.ip4}), "
        f"udp(sport={sport}, dport=7777), fill(0x00, 18) }}\n"
    )
    sh(*left.ns.cmd("trafgen", "--dev", left.ifname, "--conf", str(cfg), "-n", str(packets),
                    "--cpus", "1", "--qdisc-path"), timeout=600)


def live_costs(empty_obj: Path, packets: int, workdir: Path, flows: int = 1) -> dict[str, Any]:
    """bpf_stats per run on trafgen traffic (see the module docstring), the frames cycling
    through ``flows`` flows."""
    out: dict[str, Any] = {"packets": packets, "flows": flows}
    with bpf_stats():
        with Pair.create("fkBk") as pair:
            right = pair.right
            right.ns.run("tc", "qdisc", "add", "dev", right.ifname, "clsact")
            right.ns.run("tc", "filter", "add", "dev", right.ifname, "ingress", "bpf", "da",
                         "obj", str(empty_obj), "sec", "tc")
            text = right.ns.run("tc", "filter", "show", "dev", right.ifname, "ingress").stdout
            empty_id = int(re.search(r" id (\d+)", text).group(1))  # type: ignore[union-attr]
            trafgen(pair, packets, workdir / "live.cfg", flows)
            run_ns, runs = prog_stats({empty_id})
            out["empty_ns_per_packet"] = round(run_ns / max(runs, 1), 1)
            out["empty_runs"] = runs
        with Pair.create("fkBk") as pair:
            right = pair.right
            env = {"INTERFACES": right.ifname, "DIRECTION": "ingress", "TC_ATTACH_MODE": "tcx",
                   "CACHE_MAX_FLOWS": str(max(5000, 2 * flows))}
            with AgentRun(right.ns, env, taskset="0") as agent:
                agent.wait_traced(right.ifname)
                ids = agent_prog_ids(agent.proc.pid)
                before = prog_stats(ids)
                trafgen(pair, packets, workdir / "live.cfg", flows)
                after = prog_stats(ids)
                agent.stop()
            runs = after[1] - before[1]
            out["flowkit_ns_per_packet"] = round((after[0] - before[0]) / max(runs, 1), 1)
            out["flowkit_runs"] = runs
    out["flowkit_extra_ns"] = round(out["flowkit_ns_per_packet"] - out["empty_ns_per_packet"], 1)
    return out


def tracing_costs(drops: int, tcp_bytes: int, obj: Path | None = None) -> dict[str, Any]:
    """ns per event of the drop and RTT programs on live traffic (bpf_stats): ``drops`` UDP
    datagrams dropped by an nftables rule, then a TCP transfer of ``tcp_bytes`` (every segment
    an established socket receives runs flowkit_rtt). ``obj``: another object than the
    shipped one (EBPF_OBJECT)."""
    traffic = str(ROOT / "tests" / "integration" / "traffic.py")
    out: dict[str, Any] = {"drops_sent": drops, "tcp_bytes": tcp_bytes}
    with bpf_stats(), Pair.create("fkBt", offload=False) as pair:
        left, right = pair.left, pair.right
        subprocess.run(right.ns.cmd("nft", "-f", "-"), text=True, check=True, input=(
            "table inet fkbench {\n chain input {\n  type filter hook input priority 0;\n"
            "  udp dport 5003 drop\n }\n}\n"))
        env = {"INTERFACES": right.ifname, "ENABLE_PKT_DROPS": "true", "ENABLE_RTT": "true"}
        if obj is not None:
            env["EBPF_OBJECT"] = str(obj)
        with AgentRun(right.ns, env) as agent:
            agent.wait_traced(right.ifname)
            progs = json.loads(sh("bpftool", "-j", "prog", "show").stdout)
            ids = agent_prog_ids(agent.proc.pid)
            by_name = {p["name"]: p["id"] for p in progs if p["id"] in ids}
            for name, args in (("flowkit_drops", ("udp-send", right.ip4, "5003", "40010",
                                                  str(drops), "18")),
                               ("flowkit_rtt", ("tcp-send", right.ip4, "5002", "40011",
                                                str(tcp_bytes)))):
                sink = None
                if name == "flowkit_rtt":
                    sink = right.ns.popen([sys.executable, traffic, "tcp-sink", "5002"],
                                          stdout=subprocess.PIPE, text=True)
                    assert sink.stdout is not None
                    sink.stdout.readline()
                before = prog_stats({by_name[name]})
                sh(*left.ns.cmd(sys.executable, traffic, *args), timeout=600)
                after = prog_stats({by_name[name]})
                if sink is not None:
                    sink.wait(60)
                runs = after[1] - before[1]
                out[f"{name}_runs"] = runs
                out[f"{name}_ns_per_event"] = round((after[0] - before[0]) / max(runs, 1), 1)
            agent.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--packets", type=int, default=5_000_000)
    parser.add_argument("--compare", type=Path, help="another flowkit.bpf.o to run alternately")
    parser.add_argument("--features", action="store_true", help="cost of each optional feature")
    parser.add_argument("--no-live", action="store_true", help="skip the live trafgen runs")
    parser.add_argument("--flows", type=int, default=1,
                        help="live runs: flows the frames cycle through (1: one flow)")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fkbench") as tmp:
        workdir = Path(tmp)
        empty_obj = build_empty(workdir)
        result: dict[str, Any] = {
            "kernel": subprocess.run(["uname", "-r"], capture_output=True,
                                     text=True).stdout.strip(),
        }
        if args.compare:
            result["compare"] = compare_costs(empty_obj, args.compare, args.repeat, args.rounds)
        else:
            result["test_run"] = test_run_costs(empty_obj, args.repeat, args.rounds)
        if args.features:
            result["features"] = feature_costs(empty_obj, args.repeat, args.rounds)
            result["tracing"] = tracing_costs(20_000, 20_000_000)
        if not args.no_live:
            result["live"] = live_costs(empty_obj, args.packets, workdir, args.flows)
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
