"""The in-process agent: exporters behind bounded queues, several exporters, stop, capture()."""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from fk_doubles import ScriptedPlugin, synthetic_records

import flowkit
from flowkit.agent import Agent
from flowkit.components import Interface, InterfaceEvent
from flowkit.config import AgentConfig
from flowkit.model import FlowBatch
from flowkit.plugins import PluginManager
from flowkit.synthetic import SYNTHETIC_IFNAME, synthetic_flow_key

FOREVER = "1h"  # an eviction period no test reaches: only explicit events evict


@pytest.fixture
def run_agent(
    load: Callable[..., AgentConfig], builtin_pm: PluginManager
) -> Iterator[Callable[..., Agent]]:
    """``run_agent(**settings)`` starts an agent; every agent is shut down after the test."""
    agents: list[Agent] = []

    def start(**settings: Any) -> Agent:
        settings.setdefault("listen_poll_period", FOREVER)
        agent = Agent(load(**settings), plugin_manager=builtin_pm)
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        agent.shutdown()


def packets_by_flow(batches: list[FlowBatch]) -> Counter[tuple[str, str, int]]:
    """Packets per (src, dst, proto) over several batches."""
    totals: Counter[tuple[str, str, int]] = Counter()
    for batch in batches:
        for flow in batch:
            totals[(str(flow.src_ip), str(flow.dst_ip), flow.proto)] += flow.packets
    return totals


def expected_synthetic(records: int, flows: int) -> Counter[tuple[str, str, int]]:
    """Packets per flow after ``records`` synthetic records over ``flows`` flows."""
    totals: Counter[tuple[str, str, int]] = Counter()
    for n in range(records):
        key: dict[str, Any] = synthetic_flow_key(n % flows)
        totals[(str(key["src_ip"]), str(key["dst_ip"]), int(key["proto"]))] += 1
    return totals


def test_slow_exporter_drops_and_counts_batches_without_stalling_the_others(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    # One batch per chunk: a chunk holds the 8 flows, and 8 flows fill the cache.
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="slow,fast", buffers_length=1, cache_max_flows=8,
                      cache_active_timeout=FOREVER)
    slow, fast = scripted.exporter("slow"), scripted.exporter("fast")
    chunk = synthetic_records(range(8))

    scripted.tracer.feed(chunk)  # batch 1: the slow exporter takes it and blocks
    assert slow.entered.wait(10)
    fast.wait_for(lambda e: len(e.batches) == 1)
    for n in range(2, 7):  # batch 2 fills the slow queue (1 slot); batches 3..6 find it full
        scripted.tracer.feed(chunk)
        fast.wait_for(lambda e, n=n: len(e.batches) == n)  # type: ignore[misc]

    assert agent.metrics.value("dropped_batches_total", exporter="slow") == 4
    assert agent.metrics.value("dropped_flows_total", exporter="slow", reason="queue_full") == 32
    assert agent.metrics.value("dropped_batches_total", exporter="fast") == 0
    assert fast.packets == 48
    slow.release.set()
    agent.shutdown()
    assert len(slow.batches) == 2
    assert agent.metrics.value("exported_flows_total", exporter="slow") == 16
    assert agent.metrics.value("exported_flows_total", exporter="fast") == 48
    assert slow.shut_down
    assert fast.shut_down


def test_every_exporter_receives_every_flow(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="synthetic", accounter="python", listen_interfaces="scripted",
                      export="fast,slow", synthetic_max_records=100, synthetic_rate=0,
                      cache_active_timeout="50ms")
    fast, slow = scripted.exporter("fast"), scripted.exporter("slow")
    slow.release.set()  # this time the "slow" exporter keeps up
    fast.wait_for(lambda e: e.packets == 100)
    slow.wait_for(lambda e: e.packets == 100)
    agent.shutdown()

    expected = expected_synthetic(100, flows=8)
    assert packets_by_flow(fast.batches) == expected
    assert packets_by_flow(slow.batches) == expected
    assert agent.metrics.value("exported_flows_total", exporter="fast") == fast.flows


def test_stop_exports_the_flows_not_yet_evicted(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="synthetic", accounter="python", listen_interfaces="scripted",
                      export="fast", synthetic_max_records=40, synthetic_rate=0,
                      synthetic_packet_bytes=250, cache_active_timeout=FOREVER)
    fast = scripted.exporter("fast")
    assert fast.batches == []
    agent.shutdown()

    assert fast.packets == 40
    assert sum(int(b.array["bytes"].sum()) for b in fast.batches) == 40 * 250
    assert packets_by_flow(fast.batches) == expected_synthetic(40, flows=8)
    assert fast.flushed
    assert fast.shut_down
    assert agent.join(0)


def test_exported_flows_carry_interface_names_and_agent_ip(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="synthetic", accounter="python", listen_interfaces="scripted",
                      export="fast", synthetic_max_records=8, synthetic_rate=0,
                      agent_ip="198.18.0.254", cache_active_timeout=FOREVER)
    agent.shutdown()

    flows = [flow for batch in scripted.exporter("fast").batches for flow in batch]
    assert len(flows) == 8
    assert {f.interface for f in flows} == {SYNTHETIC_IFNAME}
    assert {f.agent_ip for f in flows} == {ipaddress.ip_address("198.18.0.254")}
    assert {d["AgentIP"] for b in scripted.exporter("fast").batches for d in b.to_dicts()} == {
        "198.18.0.254"
    }


def test_exporter_errors_are_counted_and_do_not_stop_the_others(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="failing,fast", cache_max_flows=8, cache_active_timeout=FOREVER)
    failing, fast = scripted.exporter("failing"), scripted.exporter("fast")
    for n in range(1, 4):
        scripted.tracer.feed(synthetic_records(range(8)))
        fast.wait_for(lambda e, n=n: len(e.batches) == n)  # type: ignore[misc]
        failing.wait_for(lambda e, n=n: e.attempts == n)  # type: ignore[misc]
    agent.shutdown()

    assert agent.metrics.value("errors_total", component="exporter/failing", error="export") == 3
    assert agent.metrics.value("exported_flows_total", exporter="failing") == 0
    assert agent.metrics.value("exported_flows_total", exporter="fast") == 24


def test_interfaces_are_attached_and_detached_as_the_filter_says(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="fast", interfaces="/^fkF-/", exclude_interfaces="lo,fkF-skip",
                      cache_active_timeout=FOREVER)
    events = scripted.informer.events_in
    wanted = Interface(name="fkF-a", index=901)
    for iface in (Interface(name="fkF-skip", index=902), Interface(name="eth9", index=903),
                  Interface(name="lo", index=1), wanted):
        events.put(InterfaceEvent("added", iface))
    _wait(lambda: [i.name for i in agent.attached_interfaces] == ["fkF-a"])
    assert scripted.tracer.attached == ["fkF-a"]

    events.put(InterfaceEvent("deleted", wanted))
    _wait(lambda: agent.attached_interfaces == [])
    assert scripted.tracer.attached == []


def test_an_agent_starts_once(run_agent: Callable[..., Agent]) -> None:
    agent = run_agent(tracer="synthetic", accounter="python", listen_interfaces="poll",
                      synthetic_max_records=1, cache_active_timeout=FOREVER)
    with pytest.raises(RuntimeError, match="started once"):
        agent.start()


def test_shutdown_closes_every_component_and_is_idempotent(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="fast", cache_active_timeout=FOREVER)
    agent.shutdown()
    agent.shutdown()
    assert scripted.tracer.closed
    assert not _flowkit_threads()


def test_capture_yields_every_flow_as_batches_that_own_their_memory(
    builtin_pm: PluginManager,
) -> None:
    batches = list(
        flowkit.capture(
            0.5, plugin_manager=builtin_pm, tracer="synthetic", accounter="python",
            listen_interfaces="poll", listen_poll_period=FOREVER, synthetic_max_records=50,
            synthetic_rate=0, cache_active_timeout="100ms",
        )
    )
    assert batches
    assert all(isinstance(b, FlowBatch) for b in batches)
    assert packets_by_flow(batches) == expected_synthetic(50, flows=8)
    assert not _flowkit_threads()


def test_capture_stops_the_agent_when_the_caller_stops_iterating(
    builtin_pm: PluginManager,
) -> None:
    stream = flowkit.capture(
        plugin_manager=builtin_pm, tracer="synthetic", accounter="python",
        listen_interfaces="poll", listen_poll_period=FOREVER, synthetic_rate=0,
        cache_active_timeout="50ms",
    )
    assert isinstance(stream, Generator)
    first = next(stream)
    assert len(first) == 8
    stream.close()
    assert not _flowkit_threads()


def test_capture_rejects_bad_settings_before_starting(builtin_pm: PluginManager) -> None:
    from flowkit.config import ConfigError

    with pytest.raises(ConfigError, match="CACHE_ACTIVE_TIMEOUT"):
        next(flowkit.capture(plugin_manager=builtin_pm, tracer="synthetic",
                             accounter="python", listen_interfaces="poll",
                             cache_active_timeout="soon"))
    assert not _flowkit_threads()


def _flowkit_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowkit-")]


def _wait(condition: Callable[[], bool], timeout: float = 10) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    pytest.fail("condition not reached")


def _balanced(summary: dict[str, Any]) -> None:
    for name, books in summary["exporters"].items():
        total = books["exported"] + sum(books["dropped"].values())
        assert total == summary["evicted"], f"{name}: {books} of {summary['evicted']}"


def test_flows_stuck_in_a_queue_at_shutdown_are_counted_as_dropped(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="slow,fast", buffers_length=3, cache_max_flows=8,
                      cache_active_timeout=FOREVER, shutdown_timeout="300ms")
    slow, fast = scripted.exporter("slow"), scripted.exporter("fast")
    for n in range(1, 4):  # slow: one batch inside export() (never returns), two queued
        scripted.tracer.feed(synthetic_records(range(8)))
        fast.wait_for(lambda e, n=n: len(e.batches) == n)  # type: ignore[misc]
    agent.shutdown()

    summary = agent.summary()
    assert summary["evicted"] == 24
    assert summary["exporters"]["slow"] == {"exported": 0, "dropped": {"shutdown": 24}}
    assert summary["exporters"]["fast"] == {"exported": 24, "dropped": {}}
    assert agent.metrics.value("dropped_flows_total", exporter="slow", reason="shutdown") == 24
    slow.release.set()  # the abandoned export returns late: still counted once, as dropped
    assert slow.entered.is_set()
    _balanced(agent.summary())


def test_a_failing_exporter_counts_its_flows_as_dropped_with_reason_error(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="failing,fast", cache_max_flows=8, cache_active_timeout=FOREVER)
    scripted.tracer.feed(synthetic_records(range(8)))
    scripted.exporter("failing").wait_for(lambda e: e.attempts == 1)
    agent.shutdown()

    summary = agent.summary()
    assert summary["exporters"]["failing"] == {"exported": 0, "dropped": {"error": 8}}
    _balanced(summary)


def test_the_final_log_line_carries_the_books_as_integers(
    run_agent: Callable[..., Agent], scripted: ScriptedPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    agent = run_agent(tracer="scripted", accounter="python", listen_interfaces="scripted",
                      export="fast", cache_max_flows=8, cache_active_timeout=FOREVER)
    scripted.tracer.feed(synthetic_records(range(5)))
    caplog.set_level("INFO", logger="flowkit.agent")
    agent.shutdown()

    [record] = [r for r in caplog.records if r.getMessage().startswith("flowkit agent stopped")]
    assert record.flows == {  # type: ignore[attr-defined]
        "evicted": 5, "exporters": {"fast": {"exported": 5, "dropped": {}}}
    }


def test_a_failed_start_shuts_down_the_exporters_already_built_and_closes_the_tracer(
    load: Callable[..., AgentConfig], builtin_pm: PluginManager, scripted: ScriptedPlugin
) -> None:
    def broken_start() -> None:
        raise OSError("the kernel refused the map")

    scripted.tracer.start = broken_start  # type: ignore[method-assign]
    agent = Agent(load(tracer="scripted", accounter="python", listen_interfaces="scripted",
                       export="fast"), plugin_manager=builtin_pm)
    with pytest.raises(OSError, match="refused the map"):
        agent.start()
    assert scripted.exporter("fast").shut_down
    assert scripted.tracer.closed
    agent.shutdown()  # after a failed start: nothing left to do, and no error
    assert agent.join(1)
