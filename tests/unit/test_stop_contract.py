"""The exporter stop contract (docs/plugins.md, "The stop contract"), with a slow and a failing
exporter in a real agent run on the synthetic tracer."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from flowkit import hookimpl
from flowkit.agent import Agent
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.config import AgentConfig
from flowkit.model import FlowBatch
from flowkit.plugins import PluginManager

FOREVER = "1h"


class Probe:
    """Records, per call, the thread, whether stop_event was set and whether export was running."""

    def __init__(self, context: ComponentContext, *, shutdown_delay: float = 0.0,
                 failing: bool = False, gives_up_on_stop: bool = False) -> None:
        self.stop_event = context.stop_event
        self.shutdown_delay = shutdown_delay
        self.failing = failing
        self.gives_up_on_stop = gives_up_on_stop
        self.calls: list[tuple[str, str, bool]] = []  # (method, thread name, stop_event set)
        self.flows = 0
        self.exporting = False
        self.overlap = False
        self.shutdown_timeout: float | None = None
        self.lock = threading.Lock()

    def _note(self, method: str) -> None:
        with self.lock:
            self.calls.append((method, threading.current_thread().name, self.stop_event.is_set()))
            if method != "export" and self.exporting:
                self.overlap = True

    def export(self, batch: FlowBatch) -> None:
        self._note("export")
        self.exporting = True
        try:
            if self.failing:
                raise ConnectionError("sink unreachable")
            if self.gives_up_on_stop and self.stop_event.is_set():
                return  # what docs/plugins.md used to suggest: stop retrying on stop_event
            self.flows += len(batch)
        finally:
            self.exporting = False

    def flush(self, timeout: float) -> bool:
        self._note("flush")
        if self.failing:
            raise ConnectionError("sink unreachable")
        return True

    def shutdown(self, timeout: float) -> None:
        self._note("shutdown")
        self.shutdown_timeout = timeout
        time.sleep(self.shutdown_delay)
        if self.failing:
            raise ConnectionError("sink unreachable")


class Probes:
    def __init__(self, **behaviours: dict[str, Any]) -> None:
        self.behaviours = behaviours
        self.made: dict[str, Probe] = {}

    @hookimpl
    def flowkit_exporters(self) -> list[ExporterSpec]:
        def factory(name: str) -> Any:
            def make(ctx: ComponentContext) -> Probe:
                self.made[name] = Probe(ctx, **self.behaviours[name])
                return self.made[name]
            return make
        return [ExporterSpec(name=name, factory=factory(name)) for name in self.behaviours]


def run_and_stop(pm: PluginManager, probes: Probes, records: int, **settings: str) -> Agent:
    pm.register(probes, name="probes", distribution="tests")
    config = AgentConfig.load(environ={}, plugin_manager=pm, cli={
        "tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll",
        "listen_poll_period": FOREVER, "synthetic_rate": "0",
        "synthetic_max_records": str(records), "cache_active_timeout": FOREVER,
        "export": ",".join(probes.behaviours), **settings})
    agent = Agent(config, plugin_manager=pm)
    agent.start()
    deadline = time.monotonic() + 10
    tracer: Any = agent.tracer
    while tracer.produced < records and time.monotonic() < deadline:
        time.sleep(0.01)
    agent.stop()
    agent.join(30)
    return agent


def test_the_last_batch_arrives_before_stop_event_is_set(builtin_pm: PluginManager) -> None:
    probes = Probes(careful={"gives_up_on_stop": True})
    run_and_stop(builtin_pm, probes, 40)
    probe = probes.made["careful"]
    assert probe.flows == 8  # every flow, from the final eviction (the timer never fired)
    exports = [c for c in probe.calls if c[0] == "export"]
    assert exports
    assert not any(stop_set for _, _, stop_set in exports)
    assert [c[0] for c in probe.calls][-2:] == ["flush", "shutdown"]
    assert all(stop_set for m, _, stop_set in probe.calls if m in ("flush", "shutdown"))


def test_export_runs_on_the_worker_thread_and_never_with_flush_or_shutdown(
    builtin_pm: PluginManager,
) -> None:
    probes = Probes(one={})
    run_and_stop(builtin_pm, probes, 20)
    probe = probes.made["one"]
    threads = {m: {t for mm, t, _ in probe.calls if mm == m} for m in ("export", "shutdown")}
    assert threads["export"] == {"flowkit-export-one"}
    assert "flowkit-export-one" not in threads["shutdown"]
    assert not probe.overlap


def test_a_slow_exporter_does_not_eat_the_others_stop_deadline(
    builtin_pm: PluginManager,
) -> None:
    probes = Probes(slow={"shutdown_delay": 1.5}, other={})
    run_and_stop(builtin_pm, probes, 16, shutdown_timeout="2s")
    other = probes.made["other"]
    assert other.flows == 8
    assert other.shutdown_timeout is not None
    assert other.shutdown_timeout > 1.0  # it was not handed what the slow one left over


def test_a_failing_exporter_is_counted_stopped_and_harms_no_other(
    builtin_pm: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    probes = Probes(failing={"failing": True}, good={})
    with caplog.at_level(logging.DEBUG, logger="flowkit"):
        agent = run_and_stop(builtin_pm, probes, 24)
    assert probes.made["good"].flows == 8
    failing = probes.made["failing"]
    assert [c[0] for c in failing.calls][-2:] == ["flush", "shutdown"]
    assert agent.stats()["errors"] >= 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors
    assert all(r.exc_info is None for r in errors)  # one line each, no traceback
    assert any("failed to shut down: ConnectionError: sink unreachable" in r.getMessage()
               for r in errors)


def test_export_errors_are_rate_limited(builtin_pm: PluginManager,
                                        caplog: pytest.LogCaptureFixture) -> None:
    probes = Probes(failing={"failing": True})
    builtin_pm.register(probes, name="probes", distribution="tests")
    config = AgentConfig.load(environ={}, plugin_manager=builtin_pm, cli={
        "tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll",
        "listen_poll_period": FOREVER, "synthetic_rate": "400", "cache_active_timeout": "50ms",
        "export": "failing"})
    agent = Agent(config, plugin_manager=builtin_pm)
    with caplog.at_level(logging.INFO, logger="flowkit.agent"):
        agent.start()
        deadline = time.monotonic() + 10
        while len([c for c in probes.made["failing"].calls if c[0] == "export"]) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        agent.stop()
        agent.join(30)
    exports = len([c for c in probes.made["failing"].calls if c[0] == "export"])
    lines = [r for r in caplog.records if "failed on a batch" in r.getMessage()]
    assert exports >= 5
    assert len(lines) == 1
    assert "ConnectionError: sink unreachable" in lines[0].getMessage()
    assert lines[0].exc_info is None


def test_a_factory_failure_names_the_component_and_stops_what_was_built(
    builtin_pm: PluginManager,
) -> None:
    from flowkit.components import ComponentStartError

    probes = Probes(first={})

    class Broken:
        @hookimpl
        def flowkit_exporters(self) -> list[ExporterSpec]:
            def fail(ctx: ComponentContext) -> Any:
                raise ValueError("BROKEN_PATH: /nonexistent is not a directory")
            return [ExporterSpec(name="broken", factory=fail)]

    builtin_pm.register(probes, name="probes", distribution="tests")
    builtin_pm.register(Broken(), name="broken", distribution="broken-dist")
    config = AgentConfig.load(environ={}, plugin_manager=builtin_pm, cli={
        "tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll",
        "export": "first,broken"})
    agent = Agent(config, plugin_manager=builtin_pm)
    with pytest.raises(ComponentStartError) as caught:
        agent.start()
    assert str(caught.value) == ('cannot start exporter "broken" (distribution broken-dist): '
                                 "BROKEN_PATH: /nonexistent is not a directory")
    assert caught.value.exit_status == 2
    assert [c[0] for c in probes.made["first"].calls] == ["shutdown"]
