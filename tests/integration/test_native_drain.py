"""The native accounter against the real eBPF program: lossless draining and the ring buffer.

The checked-in program (flowkit/bpf/flowkit.bpf.o) is loaded with libbpf and run with
BPF_PROG_TEST_RUN, which executes it on a packet we build, as many times as we ask: every
count is known exactly. No packet is sent anywhere; the frames use 198.18.0.0/15 addresses.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowkit.accounting import (
    KernelDrainer,
    RingBufferReader,
    read_kernel_counters,
)
from flowkit.components import Interface, KernelMaps
from flowkit.model import KEY_DTYPE, RECORD_DTYPE, VALUE_DTYPE, FlowArray, FlowBatch
from flowkit.native._lib import NativeError, ffi, lib
from flowkit_plugins.native_accounter import NativeAccounter
from flowkit_plugins.python_accounter import PythonAccounter

pytestmark = pytest.mark.integration

BPF_OBJECT = Path(__file__).resolve().parents[2] / "flowkit" / "bpf" / "flowkit.bpf.o"
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
DST_PORT = 53
PAYLOAD = 10


def udp_frame(src_port: int) -> bytes:
    """Ethernet + IPv4 + UDP from 198.18.0.1:src_port to 198.18.0.2:53."""
    eth = bytes.fromhex("020000000002" "020000000001") + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + PAYLOAD, 0, 0, 64, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    udp = struct.pack("!HHHH", src_port, DST_PORT, 8 + PAYLOAD, 0)
    return eth + ip + udp + b"x" * PAYLOAD


FRAME_LEN = len(udp_frame(1))


@dataclass
class LoadedProgram:
    """The flowkit eBPF object, loaded, with the file descriptors the accounter needs."""

    obj: Any
    prog_fd: int
    maps: KernelMaps

    def run(self, src_port: int, repeat: int) -> None:
        """Run the ingress program `repeat` times on one packet of flow `src_port`."""
        frame = udp_frame(src_port)
        keep = ffi.from_buffer(frame)
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = keep
        opts.data_size_in = len(frame)
        opts.repeat = repeat
        rc = lib.bpf_prog_test_run_opts(self.prog_fd, opts)
        if rc < 0:
            raise NativeError("bpf_prog_test_run_opts", -rc)


@pytest.fixture
def load_program() -> Iterator[Any]:
    """A factory loading the program with flow maps of a given size; closes everything."""
    loaded: list[Any] = []

    def load(max_entries: int) -> LoadedProgram:
        data = BPF_OBJECT.read_bytes()
        obj = lib.bpf_object__open_mem(ffi.from_buffer(data), len(data), ffi.NULL)
        if obj == ffi.NULL:
            raise NativeError("bpf_object__open_mem", ffi.errno)
        loaded.append(obj)
        for name in (b"flows_a", b"flows_b"):
            flow_map = lib.bpf_object__find_map_by_name(obj, name)
            assert lib.bpf_map__set_max_entries(flow_map, max_entries) == 0
        rc = lib.bpf_object__load(obj)
        if rc < 0:
            raise NativeError("bpf_object__load", -rc)

        def fd(name: bytes) -> int:
            return int(lib.bpf_map__fd(lib.bpf_object__find_map_by_name(obj, name)))

        prog = lib.bpf_object__find_program_by_name(obj, b"flowkit_ingress")
        maps = KernelMaps(
            selector_fd=fd(b"flow_selector"),
            flow_map_fds=(fd(b"flows_a"), fd(b"flows_b")),
            ringbuf_fd=fd(b"flow_events"),
            counters_fd=fd(b"counters"),
            max_entries=max_entries,
            ncpus=int(lib.fk_possible_cpus()),
        )
        return LoadedProgram(obj, int(lib.bpf_program__fd(prog)), maps)

    try:
        yield load
    finally:
        for obj in loaded:
            lib.bpf_object__close(obj)


class KernelTracer:
    """A tracer exposing loaded kernel maps, as the eBPF tracer does."""

    def __init__(self, maps: KernelMaps) -> None:
        self._maps = maps

    def start(self) -> None:
        pass

    def attach(self, interface: Interface) -> None:
        pass

    def detach(self, interface: Interface) -> None:
        pass

    @property
    def kernel_maps(self) -> KernelMaps:
        return self._maps

    def read_events(self, timeout: float) -> FlowArray:
        raise AssertionError("the native accounter must consume the ring buffer itself")

    def read_aggregates(self) -> FlowArray:
        raise AssertionError("the native accounter must drain the kernel itself")

    def close(self) -> None:
        pass


class DrainingTracer:
    """A tracer without kernel maps that reads through KernelDrainer/RingBufferReader (what the
    eBPF tracer does for the python accounter)."""

    def __init__(self, maps: KernelMaps) -> None:
        self.drainer = KernelDrainer(maps)
        self.reader = RingBufferReader(maps.ringbuf_fd)

    def start(self) -> None:
        pass

    def attach(self, interface: Interface) -> None:
        pass

    def detach(self, interface: Interface) -> None:
        pass

    @property
    def kernel_maps(self) -> None:
        return None

    def read_events(self, timeout: float) -> FlowArray:
        return self.reader.read(timeout)

    def read_aggregates(self) -> FlowArray:
        return self.drainer.drain()

    def close(self) -> None:
        self.drainer.close()
        self.reader.close()


class Totals:
    """Per-flow packet and byte totals over every batch seen."""

    def __init__(self) -> None:
        self.packets: Counter[int] = Counter()
        self.bytes: Counter[int] = Counter()
        self.batches = 0

    def add(self, batch: FlowBatch | None) -> None:
        if batch is None:
            return
        with batch:
            self.batches += 1
            ports = batch.array["key"]["src_port"].tolist()
            for port, packets, nbytes in zip(
                ports, batch.array["packets"].tolist(), batch.array["bytes"].tolist(),
                strict=True,
            ):
                self.packets[port] += packets
                self.bytes[port] += nbytes


def drive_concurrently(program: LoadedProgram, accounter: Any, flows: int, rounds: int,
                       repeat: int, min_drains: int) -> tuple[Totals, Counter[int]]:
    """Two generator threads run the program while the calling thread evicts and polls in a
    loop. Generators keep going until `rounds` rounds are done AND the accounter has evicted
    `min_drains` times, so drains overlap with packets whatever the scheduling.

    The load matters: at this rate (millions of packets, hundreds of drains), draining the
    map the kernel is writing to (no flip) was seen to lose hundreds of packets per run."""
    sent: Counter[int] = Counter()
    sent_lock = threading.Lock()
    drains = 0
    errors: list[BaseException] = []

    def generate(first_port: int) -> None:
        try:
            n = 0
            while n < rounds or drains < min_drains:
                for i in range(flows):
                    port = first_port + i
                    program.run(port, repeat)
                    with sent_lock:
                        sent[port] += repeat
                n += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=generate, args=(p,)) for p in (1000, 2000)]
    totals = Totals()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            totals.add(accounter.evict())
            totals.add(accounter.poll(0.0))
            drains += 1
    finally:
        for t in threads:
            t.join()
    # Everything after the last packet: the ring buffer, then both maps.
    totals.add(accounter.poll(0.0))
    totals.add(accounter.evict())
    totals.add(accounter.evict())
    assert not errors, errors
    return totals, sent


# -- lossless draining ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "lookup_batch_then_delete", "iterate"])
def test_native_drain_loses_no_packet_while_the_program_runs(load_program: Any,
                                                             mode: str) -> None:
    program = load_program(max_entries=1024)
    accounter = NativeAccounter(KernelTracer(program.maps), max_flows=1024)
    try:
        assert accounter.uses_kernel_maps
        assert accounter._drainer is not None
        accounter._drainer.set_mode(mode)
        totals, sent = drive_concurrently(program, accounter, flows=8, rounds=100,
                                          repeat=5000, min_drains=200)
        stats = accounter.drainer_stats()
    finally:
        accounter.close()
    assert totals.packets == sent
    assert totals.bytes == Counter({port: n * FRAME_LEN for port, n in sent.items()})
    assert stats is not None
    assert stats.drains >= 200
    assert read_kernel_counters(program.maps)["ringbuf_records"] == 0


def test_python_accounter_through_the_drainer_loses_no_packet(load_program: Any) -> None:
    program = load_program(max_entries=1024)
    tracer = DrainingTracer(program.maps)
    accounter = PythonAccounter(tracer, 1024)
    try:
        totals, sent = drive_concurrently(program, accounter, flows=8, rounds=50,
                                          repeat=5000, min_drains=100)
    finally:
        tracer.close()
    assert totals.packets == sent


# -- the ring buffer -----------------------------------------------------------------------------

def test_packets_beyond_a_full_map_reach_the_accounter_through_the_ring_buffer(
    load_program: Any,
) -> None:
    program = load_program(max_entries=4)
    accounter = NativeAccounter(KernelTracer(program.maps), max_flows=1000)
    try:
        for port in range(3000, 3010):
            program.run(port, 7)
        counters = read_kernel_counters(program.maps)
        totals = Totals()
        totals.add(accounter.poll(0.0))  # merges the ring buffer (no eviction: cache not full)
        totals.add(accounter.evict())
        ring_records = accounter.ringbuf_records()
    finally:
        accounter.close()
    assert totals.packets == Counter({port: 7 for port in range(3000, 3010)})
    assert counters["ringbuf_records"] == 6 * 7
    assert ring_records == 6 * 7
    assert counters["ringbuf_lost"] == 0


def test_ring_buffer_records_fill_the_cache_and_evict_early(load_program: Any) -> None:
    program = load_program(max_entries=1)
    accounter = NativeAccounter(KernelTracer(program.maps), max_flows=3)
    try:
        for port in range(4000, 4007):
            program.run(port, 1)
        batch = accounter.poll(0.0)
        assert batch is not None
        # 6 single-packet records, cache of 3: two full caches evicted by this poll.
        assert sorted(batch.array["key"]["src_port"].tolist()) == list(range(4001, 4007))
        batch.release()
        rest = accounter.evict()
        assert rest.array["key"]["src_port"].tolist() == [4000]
    finally:
        accounter.close()


def test_ring_buffer_reader_returns_one_record_per_packet(load_program: Any) -> None:
    program = load_program(max_entries=1)
    reader = RingBufferReader(program.maps.ringbuf_fd, capacity=4)
    try:
        program.run(5000, 1)
        program.run(5001, 6)
        first = reader.read(0.0)
        second = reader.read(0.0)
        third = reader.read(0.0)
    finally:
        reader.close()
    assert len(first) == 4
    assert len(second) == 2
    assert len(third) == 0
    records = np.concatenate([first, second])
    assert set(records["key"]["src_port"].tolist()) == {5001}
    assert set(records["value"]["packets"].tolist()) == {1}
    assert set(records["value"]["bytes"].tolist()) == {FRAME_LEN}


def test_ring_buffer_read_times_out_empty(load_program: Any) -> None:
    program = load_program(max_entries=16)
    reader = RingBufferReader(program.maps.ringbuf_fd)
    try:
        assert len(reader.read(0.05)) == 0
    finally:
        reader.close()



def test_a_wake_ends_a_long_wait_of_the_accounter_at_once(load_program: Any) -> None:
    """The agent polls a wakeable accounter until the next eviction (here 60 s away) and wakes
    it when stopping: the poll returns without the full wait, and a wake that comes before the
    poll ends that poll instead of being lost."""
    program = load_program(max_entries=16)
    accounter = NativeAccounter(KernelTracer(program.maps), max_flows=100)
    try:
        assert accounter.wakeable
        results: list[Any] = []
        poller = threading.Thread(target=lambda: results.append(accounter.poll(60.0)))
        poller.start()
        accounter.wake()
        poller.join(20)
        assert not poller.is_alive()
        assert results == [None]
        accounter.wake()  # before the poll: used up by it
        assert accounter.poll(60.0) is None
    finally:
        accounter.close()


def test_a_long_wait_returns_when_the_ring_buffer_has_records(load_program: Any) -> None:
    program = load_program(max_entries=1)
    reader = RingBufferReader(program.maps.ringbuf_fd)
    try:
        program.run(6000, 1)
        program.run(6001, 3)  # map full: three records in the ring buffer
        assert reader.wait(60.0)
        assert len(reader.read(0.0)) == 3
    finally:
        reader.close()

# -- maps made by hand: per-CPU merging, chunking, validation ------------------------------------

@pytest.fixture
def flow_maps() -> Iterator[Any]:
    """A factory for (selector, map0, map1) per-CPU flow maps; closes every fd it made."""
    fds: list[int] = []

    def make(max_entries: int, map_type: int = BPF_MAP_TYPE_PERCPU_HASH,
             value_size: int = VALUE_DTYPE.itemsize) -> KernelMaps:
        def created(fd: int) -> int:
            if fd < 0:
                raise NativeError("bpf_map_create", -fd)
            fds.append(fd)
            return fd

        map0 = created(lib.fk_map_create(map_type, KEY_DTYPE.itemsize, value_size, max_entries, -1))
        map1 = created(lib.fk_map_create(map_type, KEY_DTYPE.itemsize, value_size, max_entries, -1))
        selector = created(lib.fk_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 1, map0))
        return KernelMaps(selector, (map0, map1), -1, -1, max_entries, lib.fk_possible_cpus())

    try:
        yield make
    finally:
        for fd in fds:
            lib.fk_close_fd(fd)


def put(fd: int, port: int, per_cpu: list[tuple[int, int, int, int, int]]) -> None:
    """Store a key with one (packets, bytes, first_ns, last_ns, dscp) value per CPU."""
    key = np.zeros(1, dtype=RECORD_DTYPE["key"])
    key["src_port"] = port
    values = np.zeros(lib.fk_possible_cpus(), dtype=VALUE_DTYPE)
    for cpu, (packets, nbytes, first, last, dscp) in enumerate(per_cpu):
        values[cpu] = (packets, nbytes, first, last, 0, dscp, 0, 1, [0] * 6, [0] * 6, 0)
    rc = lib.fk_map_update(fd, ffi.from_buffer(key), ffi.from_buffer(values), 0)
    if rc < 0:
        raise NativeError("bpf_map_update_elem", -rc)


def test_drain_merges_cpus_and_skips_idle_ones(flow_maps: Any) -> None:
    if lib.fk_possible_cpus() < 2:
        pytest.skip("needs two possible CPUs")
    maps = flow_maps(16)
    put(maps.flow_map_fds[0], 1, [(2, 200, 10, 20, 5), (3, 300, 5, 15, 6)])
    put(maps.flow_map_fds[0], 2, [(0, 0, 1, 99, 9), (1, 100, 30, 30, 7)])
    put(maps.flow_map_fds[0], 3, [(0, 0, 0, 0, 0), (0, 0, 0, 0, 0)])
    drainer = KernelDrainer(maps)
    try:
        records = drainer.drain()
        assert len(drainer.drain()) == 0  # both maps are empty now
    finally:
        drainer.close()
    by_port = {int(r["key"]["src_port"]): r["value"] for r in records}
    assert set(by_port) == {1, 2}
    one, two = by_port[1], by_port[2]
    assert (one["packets"], one["bytes"], one["first_ns"], one["last_ns"], one["dscp"]) == (
        5, 500, 5, 20, 5)
    assert (two["packets"], two["first_ns"], two["last_ns"], two["dscp"]) == (1, 30, 30, 7)


@pytest.mark.parametrize("mode", ["auto", "lookup_batch_then_delete", "iterate"])
def test_drain_takes_more_keys_than_one_batch_holds(flow_maps: Any, mode: str) -> None:
    maps = flow_maps(5000)
    for port in range(3000):
        put(maps.flow_map_fds[0], port, [(1, 10, 1, 1, 0)])
    drainer = KernelDrainer(maps, chunk=64, mode=mode)
    try:
        records = drainer.drain()
        leftover = drainer.drain()
        drainer.drain()
        again = drainer.drain()  # map 0 again, emptied by the first drain
    finally:
        drainer.close()
    assert sorted(records["key"]["src_port"].tolist()) == list(range(3000))
    assert len(leftover) == 0
    assert len(again) == 0


def test_the_drainer_alternates_between_the_two_maps(flow_maps: Any) -> None:
    maps = flow_maps(16)
    drainer = KernelDrainer(maps)
    try:
        assert drainer.stats().active_map == 0
        put(maps.flow_map_fds[1], 7, [(4, 40, 1, 1, 0)])  # not drained: map 1 becomes active
        assert len(drainer.drain()) == 0
        assert drainer.stats().active_map == 1
        assert drainer.drain()["value"]["packets"].tolist() == [4]
        assert drainer.stats().active_map == 0
    finally:
        drainer.close()


def test_an_empty_flow_map_is_not_flipped(flow_maps: Any) -> None:
    """Once both maps were drained, a drain finding the active map empty neither flips (a
    grace period) nor walks the empty map's buckets: two syscalls. A flow arriving later is
    taken by the next drain, as after a flip."""
    maps = flow_maps(16)
    drainer = KernelDrainer(maps)
    try:
        assert len(drainer.drain()) == 0  # the first two drains flip: whatever was left
        assert len(drainer.drain()) == 0
        active = drainer.stats().active_map
        before = drainer.stats()
        assert len(drainer.drain()) == 0
        after = drainer.stats()
        assert after.active_map == active
        assert after.drains == before.drains + 1
        assert after.syscalls - before.syscalls == 2  # selector read, first-key probe
        put(maps.flow_map_fds[active], 9, [(3, 30, 1, 1, 0)])
        assert drainer.drain()["value"]["packets"].tolist() == [3]
        assert drainer.stats().active_map == 1 - active
    finally:
        drainer.close()


def test_plain_hash_maps_are_drained_too(flow_maps: Any) -> None:
    maps = flow_maps(16, map_type=BPF_MAP_TYPE_HASH)
    key = np.zeros(1, dtype=RECORD_DTYPE["key"])
    value = np.zeros(1, dtype=VALUE_DTYPE)
    value["packets"] = 9
    assert lib.fk_map_update(maps.flow_map_fds[0], ffi.from_buffer(key),
                             ffi.from_buffer(value), 0) == 0
    drainer = KernelDrainer(maps)
    try:
        assert drainer.drain()["value"]["packets"].tolist() == [9]
    finally:
        drainer.close()


def test_maps_of_the_wrong_shape_are_rejected(flow_maps: Any) -> None:
    maps = flow_maps(16, value_size=48)
    with pytest.raises(NativeError, match="fk_drainer_new"):
        KernelDrainer(maps)
