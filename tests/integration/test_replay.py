"""Offline replay gives the flows live capture gave for the same frames.

Namespaces L and R joined by a veth pair with offloads ON (TCP sends GSO frames of tens of KB,
more than BPF_PROG_TEST_RUN takes). In R, an AF_PACKET capture (pcapng, with directions) and a
tcpdump capture of inbound frames (pcap) record the traffic while ``flowkit-agent`` traces R's
end live. Then ``flowkit-agent replay`` and ``flowkit.replay()`` replay the files: every flow
(keys, packets, bytes, flags, MACs) must equal the live one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    from .netns import AgentRun, Pair, agent_command
except ImportError:
    from netns import AgentRun, Pair, agent_command  # type: ignore[no-redef]

HERE = Path(__file__).parent
TRAFFIC = str(HERE / "traffic.py")
CAPTURE = str(HERE / "pcapng_capture.py")
KEY = ("Etype", "FlowDirection", "SrcMac", "DstMac", "SrcAddr", "DstAddr", "SrcPort", "DstPort",
       "Proto", "IcmpType", "IcmpCode", "Dscp", "Interface")


def by_key(flows: list[dict[str, Any]], addresses: set[str]) -> dict[tuple[Any, ...], list[int]]:
    """Flows between the test's addresses, merged by key: [packets, bytes, flags]."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for f in flows:
        if f["SrcAddr"] not in addresses or f["DstAddr"] not in addresses:
            continue
        acc = out.setdefault(tuple(f[k] for k in KEY), [0, 0, 0])
        acc[0] += f["Packets"]
        acc[1] += f["Bytes"]
        acc[2] |= f["Flags"]
    return out


def run(end: Any, *args: str) -> None:
    end.ns.run(sys.executable, TRAFFIC, *args, check=True)


def start(end: Any, *args: str) -> subprocess.Popen[str]:
    proc = end.ns.popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        text=True)
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    return proc


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


@dataclass
class Recorded:
    pair: Pair
    live: list[dict[str, Any]]
    pcapng: Path
    pcap_inbound: Path
    capture: dict[str, Any]
    ifindex: int

    @property
    def addresses(self) -> set[str]:
        left, right = self.pair.left, self.pair.right
        return {left.ip4, left.ip6, right.ip4, right.ip6}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    workdir = tmp_path_factory.mktemp("replay")
    pcapng, pcap = workdir / "r.pcapng", workdir / "r-in.pcap"
    with Pair.create("fkRp", offload=True) as pair:
        left, right = pair.left, pair.right
        capture = start(right, CAPTURE, right.ifname, str(pcapng))
        tcpdump = right.ns.popen(["tcpdump", "-i", right.ifname, "-Q", "in", "-s", "0",
                                  "-U", "-B", "32768", "--immediate-mode", "-w", str(pcap)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert tcpdump.stderr is not None
        assert "listening on" in tcpdump.stderr.readline()
        with AgentRun(right.ns, {"INTERFACES": right.ifname}) as agent:
            agent.wait_traced(right.ifname)
            udp = start(right, TRAFFIC, "udp-sink", "5001", "3")
            tcp = start(right, TRAFFIC, "tcp-sink", "5002")
            run(left, "udp-send", right.ip4, "5001", "40001", "20", "1200")
            run(left, "udp-send", right.ip6, "5001", "40002", "9", "80")
            run(right, "udp-send", left.ip4, "6001", "40003", "4", "300")
            left.ns.run("ping", "-q", "-c", "3", "-i", "0.05", right.ip4)
            run(left, "tcp-send", right.ip4, "5002", "40004", "3000000")
            assert finish(tcp) == {"received": 3000000}
            finish(udp)
            time.sleep(0.5)
            recorded_capture = finish(capture)
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(10)
            tcpdump_report = tcpdump.stderr.read()
            assert "\n0 packets dropped by kernel" in tcpdump_report, tcpdump_report
            assert agent.stop() == 0
        yield Recorded(pair, agent.flows, pcapng, pcap, recorded_capture, right.ifindex)


def replay_cli(path: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run([*agent_command(), "replay", str(path), *args], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    flows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, flows, proc.stderr


def test_capture_holds_gso_frames_larger_than_a_page(recorded: Recorded) -> None:
    assert recorded.capture["largest"] > 8192  # offloads on: TCP sent GSO super-frames


def test_replay_of_pcapng_equals_live_capture(recorded: Recorded) -> None:
    status, replayed, stderr = replay_cli(recorded.pcapng, "--replay-if-index",
                                          str(recorded.ifindex))
    assert status == 0, stderr
    live = by_key(recorded.live, recorded.addresses)
    assert len(live) >= 8  # udp x3, icmp x2, tcp x2, ...
    assert by_key(replayed, recorded.addresses) == live
    tcp_in = [v for k, v in live.items() if k[6:9] == (40004, 5002, 6)]
    assert tcp_in
    assert tcp_in[0][1] > 3000000  # every payload byte, headers on top


def test_replayed_flow_times_are_capture_times(recorded: Recorded) -> None:
    _, replayed, _ = replay_cli(recorded.pcapng)
    live = [f for f in recorded.live if f["SrcPort"] == 40001]
    again = [f for f in replayed if f["SrcPort"] == 40001]
    # The capture stamped each frame a few microseconds from the program's clock.
    assert abs(again[0]["TimeFlowStartMs"] - live[0]["TimeFlowStartMs"]) < 1000
    assert again[0]["TimeFlowEndMs"] >= again[0]["TimeFlowStartMs"]
    assert all(f["Interface"] == recorded.pair.right.ifname for f in again)


def test_replay_of_tcpdump_pcap_equals_live_ingress(recorded: Recorded) -> None:
    status, replayed, stderr = replay_cli(recorded.pcap_inbound, "--replay-direction", "ingress",
                                          "--replay-if-index", str(recorded.ifindex))
    assert status == 0, stderr
    ingress = [f for f in recorded.live if f["FlowDirection"] == 0]
    name = recorded.pair.right.ifname
    for f in replayed:
        f["Interface"] = name  # a pcap file names no interface
    assert by_key(replayed, recorded.addresses) == by_key(ingress, recorded.addresses)


def test_python_replay_equals_the_cli(recorded: Recorded) -> None:
    import flowkit

    flows = [d for b in flowkit.replay(recorded.pcapng, replay_if_index=recorded.ifindex)
             for d in b.to_dicts()]
    _, cli, _ = replay_cli(recorded.pcapng, "--replay-if-index", str(recorded.ifindex))
    assert by_key(flows, recorded.addresses) == by_key(cli, recorded.addresses)


def test_truncated_capture_fails_naming_the_frame_and_keeps_earlier_flows(
    recorded: Recorded, tmp_path: Path
) -> None:
    from flowkit.pcapfile import read_capture

    frames = list(read_capture(recorded.pcapng))
    data = recorded.pcapng.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) * 2 // 3])
    status, replayed, stderr = replay_cli(cut)
    assert status == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"flowkit-agent: {cut}: frame ")
    bad = int(last.split("frame ")[1].split()[0])
    assert 1 < bad < len(frames)
    assert sum(f["Packets"] for f in replayed) == bad - 1  # every frame before it, counted
    assert sum(f["Bytes"] for f in replayed) == sum(f.orig_len for f in frames[: bad - 1])

    import flowkit
    from flowkit.pcapfile import CaptureError

    got: list[int] = []

    def consume() -> None:
        for batch in flowkit.replay(cut):
            got.append(int(batch.array["packets"].sum()))

    with pytest.raises(CaptureError, match=f"frame {bad} ") as info:
        consume()
    assert info.value.frame == bad
    assert sum(got) == bad - 1


def test_not_a_capture_exits_1_before_anything_runs(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not a capture\n")
    status, flows, stderr = replay_cli(bogus)
    assert status == 1
    assert flows == []
    assert "not a pcap or pcapng file" in stderr.strip().splitlines()[-1]
