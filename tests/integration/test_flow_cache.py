"""The eBPF program's per-CPU flow cache (``flow_cache`` = 1, as the ebpf tracer loads it).

Packets are run through ``flowkit_ingress`` with BPF_PROG_TEST_RUN, so every count is known: the
cache must neither lose nor double a packet, whether a flow stays in its slot, is pushed out of
it by another flow (flush into the flow map), meets a full flow map (flush into the ring buffer)
or is still in the cache when the drainer flips the maps.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import AgentRun, Pair, flow_totals
from test_native_drain import FRAME_LEN, udp_frame

from flowkit.accounting import KernelDrainer, RingBufferReader, read_kernel_counters
from flowkit.components import KernelMaps
from flowkit.ebpf import CollectionSpec
from flowkit.native._lib import lib
from flowkit_plugins.ebpf_tracer import MAP_CACHE_SELECTOR, MAP_CACHES, default_object_path

pytestmark = pytest.mark.integration

SLOTS = 256  # FK_FLOW_CACHE_SLOTS (csrc/flow.h)
TRAFFIC = str(Path(__file__).with_name("traffic.py"))


class CachedProgram:
    """flowkit_ingress loaded with the flow cache on, and a drainer of maps and caches."""

    def __init__(self, max_entries: int) -> None:
        spec = CollectionSpec.from_file(default_object_path())
        spec.variables["flow_cache"].set(1)
        for name in ("flows_a", "flows_b"):
            spec.maps[name].max_entries = max_entries
        self.coll = spec.load(programs=["flowkit_ingress"])
        maps = self.coll.maps
        self.maps = KernelMaps(
            selector_fd=maps["flow_selector"].fd,
            flow_map_fds=(maps["flows_a"].fd, maps["flows_b"].fd),
            ringbuf_fd=maps["flow_events"].fd,
            counters_fd=maps["counters"].fd,
            max_entries=max_entries,
            ncpus=lib.libbpf_num_possible_cpus(),
            cache_selector_fd=maps[MAP_CACHE_SELECTOR].fd,
            cache_map_fds=(maps[MAP_CACHES[0]].fd, maps[MAP_CACHES[1]].fd),
        )
        self.program = self.coll.programs["flowkit_ingress"]
        self.drainer = KernelDrainer(self.maps)
        self.frames: dict[int, bytes] = {}

    def run(self, src_port: int, repeat: int) -> None:
        frame = self.frames.get(src_port)
        if frame is None:
            frame = self.frames[src_port] = udp_frame(src_port)
        self.program.test_run(frame, repeat)

    def drain(self) -> tuple[Counter[int], Counter[int], list[int]]:
        """Packets and bytes per source port of one drain, and first_ns <= last_ns checks."""
        packets: Counter[int] = Counter()
        nbytes: Counter[int] = Counter()
        spans = []
        for record in self.drainer.drain():
            port = int(record["key"]["src_port"])
            packets[port] += int(record["value"]["packets"])
            nbytes[port] += int(record["value"]["bytes"])
            spans.append(int(record["value"]["last_ns"]) - int(record["value"]["first_ns"]))
        return packets, nbytes, spans

    def close(self) -> None:
        self.drainer.close()
        self.coll.close()


@pytest.fixture
def cached() -> Iterator[Any]:
    programs: list[CachedProgram] = []

    def load(max_entries: int = 4096) -> CachedProgram:
        program = CachedProgram(max_entries)
        programs.append(program)
        return program

    yield load
    for program in programs:
        program.close()


def test_packets_held_in_the_cache_are_drained_exactly(cached: Any) -> None:
    program = cached()
    program.run(4000, 1000)  # one flow: its slot holds all of them, the map none
    packets, nbytes, spans = program.drain()
    assert packets == Counter({4000: 1000})
    assert nbytes == Counter({4000: 1000 * FRAME_LEN})
    assert min(spans) >= 0
    # The drain zeroed the slot: the next period starts from nothing.
    program.run(4000, 3)
    assert program.drain()[0] == Counter({4000: 3})
    assert program.drain()[0] == Counter()



@pytest.mark.parametrize("mode", ["auto", "iterate"])
def test_a_cache_drain_is_exact_in_batches_and_slot_by_slot(cached: Any, mode: str) -> None:
    """The caches are read with one batch lookup and the occupied slots zeroed with one batch
    update (three syscalls with the flip, whatever the number of slots); ``iterate`` reads
    them slot by slot, as on kernels without batch operations on arrays."""
    program = cached()
    program.drainer.set_mode(mode)
    cache = program.drainer._cache_drainer
    assert cache is not None
    for port in range(4100, 4110):
        program.run(port, 10 + port - 4100)
    before = cache.stats().syscalls
    assert program.drain()[0] == Counter({port: 10 + port - 4100 for port in range(4100, 4110)})
    syscalls = cache.stats().syscalls - before
    assert program.drain()[0] == Counter()  # the occupied slots were zeroed
    if mode == "auto":
        assert syscalls == 4  # selector read, flip, batch lookup, batch update
    else:
        assert syscalls > SLOTS

def test_times_of_cached_packets_follow_the_monotonic_clock(cached: Any) -> None:
    program = cached()
    before = time.monotonic_ns()
    program.run(4100, 10)
    time.sleep(0.05)
    program.run(4100, 10)  # same slot, later ticks: last_ns moves on
    after = time.monotonic_ns()
    (record,) = program.drainer.drain()
    first, last = int(record["value"]["first_ns"]), int(record["value"]["last_ns"])
    assert before <= first <= last <= after
    # The coarse clock lags by at most a tick (10 ms at the lowest HZ, 100).
    assert last - first >= 40_000_000
    assert int(record["value"]["pad2"]) == 0


def test_flows_pushing_each_other_out_of_their_slots_are_exact(cached: Any) -> None:
    program = cached()
    ports = range(5000, 5000 + 3 * SLOTS)  # more flows than slots: slots are shared
    sent: Counter[int] = Counter()
    for rnd in range(3):
        for port in ports:
            program.run(port, 1 + (port + rnd) % 4)
            sent[port] += 1 + (port + rnd) % 4
    packets, nbytes, spans = program.drain()
    assert packets == sent
    assert nbytes == Counter({port: n * FRAME_LEN for port, n in sent.items()})
    assert min(spans) >= 0
    assert read_kernel_counters(program.maps)["ringbuf_records"] == 0


def test_a_full_map_takes_the_flushed_packets_through_the_ring_buffer(cached: Any) -> None:
    program = cached(max_entries=4)
    reader = RingBufferReader(program.maps.ringbuf_fd)
    try:
        sent: Counter[int] = Counter()
        for _ in range(2):
            for port in range(6000, 6000 + 2 * SLOTS):
                program.run(port, 5)
                sent[port] += 5
        events: Counter[int] = Counter()
        for record in reader.read(0.0):
            events[int(record["key"]["src_port"])] += int(record["value"]["packets"])
    finally:
        reader.close()
    packets, _, _ = program.drain()
    counters = read_kernel_counters(program.maps)
    assert packets + events == sent
    assert counters["ringbuf_records"] == sum(events.values()) > 0
    assert counters["ringbuf_lost"] == 0


def test_drains_during_traffic_lose_and_double_nothing(cached: Any) -> None:
    program = cached()
    sent: Counter[int] = Counter()
    got: Counter[int] = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def generate(first: int) -> None:
        try:
            n = 0
            while n < 40 or not stop.is_set():
                for port in range(first, first + 300):  # > SLOTS: hits, flushes and misses
                    program.run(port, 7)
                    sent[port] += 7
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=generate, args=(p,)) for p in (7000, 8000)]
    for t in threads:
        t.start()
    drains = 0
    while any(t.is_alive() for t in threads):
        got.update(program.drain()[0])
        drains += 1
        if drains >= 100:
            stop.set()
    for t in threads:
        t.join()
    got.update(program.drain()[0])
    assert not errors, errors
    assert drains >= 100
    assert got == sent


# -- the agent, with and without the cache (EBPF_FLOW_CACHE) --------------------------------------


@pytest.mark.parametrize("cache", ["true", "false"])
def test_the_agent_counts_exactly_with_and_without_the_cache(cache: str) -> None:
    with Pair.create("fkC", offload=False) as pair:
        left, right = pair.left, pair.right
        env = {"INTERFACES": right.ifname, "EBPF_FLOW_CACHE": cache, "DIRECTION": "ingress"}
        with AgentRun(right.ns, env) as agent:
            agent.wait_traced(right.ifname)
            # One flow of 50 datagrams, then more flows than cache slots, one datagram each.
            left.ns.run(sys.executable, TRAFFIC, "udp-send", right.ip4, "9100", "41000", "50",
                        "20")
            left.ns.run(sys.executable, TRAFFIC, "udp-many", right.ip4, "42000", str(SLOTS + 100))
            time.sleep(0.3)
            assert agent.stop() == 0
        frame = 14 + 20 + 8 + 20
        assert flow_totals(agent.flows, SrcPort=41000, DstPort=9100) == (50, 50 * frame)
        many = [f for f in agent.flows if f.get("SrcAddr") == left.ip4 and
                42000 <= f.get("SrcPort", 0) < 42000 + SLOTS + 100]
        per_port: Counter[int] = Counter()
        for f in many:
            per_port[f["SrcPort"]] += f["Packets"]
        assert per_port == Counter({42000 + i: 1 for i in range(SLOTS + 100)})
