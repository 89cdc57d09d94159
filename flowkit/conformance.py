"""The exporter conformance kit: checks any exporter plugin can run in its own test suite.

:func:`check_exporter` builds the exporter from its spec, drives it as the agent would and
reads back from the real sink (through a function the plugin's test provides) what arrived:

``flush_on_shutdown``
    flows exported and then ``shutdown()`` (no ``flush()`` first) all reach the sink.
``nothing_after_shutdown``
    ``export()`` after ``shutdown()`` delivers nothing (it may return or raise, not deliver).
``raising_export``
    in a running agent, an ``export()`` that raises is logged and counted (``dropped_flows``
    with reason ``error``), the agent keeps running, every later batch still reaches the sink,
    and the agent's books balance (``evicted == exported + sum(dropped)``: an exporter that
    reports its deliveries itself must say so with ``accounts_delivery = True``).
``bounded_memory``
    while the sink does not accept anything (``stall()``), the memory the exporter holds stops
    growing: the second half of a stream of batches must not add as much as the first half did.
    Give the exporter small buffer settings for this check.
``settings_round_trip``
    the settings model reads the same values back from environment variables, flags and a YAML
    file (the three ways users give settings).

A failed check raises :class:`ConformanceError` naming every check that failed and why; the
return value lists the checks that ran. See docs/plugins.md, "Testing a plugin".
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from flowkit.components import ComponentContext, ExporterSpec
from flowkit.config import AgentConfig, load_config, settings_table
from flowkit.metrics import Metrics
from flowkit.model import FlowBatch
from flowkit.synthetic import synthetic_flow_key

__all__ = ["CHECKS", "ConformanceError", "check_exporter"]

CHECKS = ("flush_on_shutdown", "nothing_after_shutdown", "raising_export", "bounded_memory",
          "settings_round_trip")


class ConformanceError(AssertionError):
    """One or more conformance checks failed; the message lists each with its reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        lines = [f"{name}: {why}" for name, why in failures.items()]
        super().__init__("exporter conformance failed:\n  " + "\n  ".join(lines))
        self.failures = failures


def _batch(n_flows: int, offset: int = 0) -> FlowBatch:
    """``n_flows`` distinct flows (synthetic keys ``offset`` .. ``offset+n_flows-1``)."""
    from flowkit.model import Flow

    now = time.time_ns()
    flows = []
    for i in range(offset, offset + n_flows):
        key: dict[str, Any] = synthetic_flow_key(i)
        flows.append(Flow(**key, packets=1, bytes=100, start_ns=now, end_ns=now,
                          dscp=0, sampling=0))
    return FlowBatch.from_flows(flows)


def _build(spec: ExporterSpec, settings: BaseModel | None, stop: threading.Event) -> Any:
    return spec.factory(ComponentContext(AgentConfig(), settings, Metrics(), stop_event=stop))


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _call(fn: Callable[[], Any], timeout: float, what: str) -> None:
    """Run ``fn`` on a thread; a hang past ``timeout`` is a failure (not a test-suite hang)."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the caller
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"conformance-{what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not return within {timeout:g} s")
    if error:
        raise error[0]


# -- the checks --------------------------------------------------------------------------------


def _flush_on_shutdown(spec: ExporterSpec, settings: BaseModel | None,
                       delivered: Callable[[], int], timeout: float) -> None:
    before = delivered()
    exporter = _build(spec, settings, threading.Event())
    _call(lambda: exporter.export(_batch(7)), timeout, "export()")
    _call(lambda: exporter.shutdown(timeout), timeout + 5, "shutdown()")
    if not _wait(lambda: delivered() - before >= 7, timeout):
        raise AssertionError(f"exported 7 flows, then shutdown(); the sink got "
                             f"{delivered() - before}")


def _nothing_after_shutdown(spec: ExporterSpec, settings: BaseModel | None,
                            delivered: Callable[[], int], timeout: float) -> None:
    exporter = _build(spec, settings, threading.Event())
    _call(lambda: exporter.shutdown(timeout), timeout + 5, "shutdown()")
    before = delivered()
    with contextlib.suppress(Exception):
        _call(lambda: exporter.export(_batch(5)), timeout, "export() after shutdown()")
    time.sleep(0.5)
    if delivered() != before:
        raise AssertionError(f"{delivered() - before} flows reached the sink after shutdown()")


class _RaisingOnce:
    """The exporter under test, except that its first ``export`` raises."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        # The agent's books must see the exporter as it is: one that reports its own deliveries
        # (accounts_delivery) would otherwise be counted twice.
        self.accounts_delivery = bool(getattr(inner, "accounts_delivery", False))
        self.raised = 0
        self.flows_after = 0
        self._lock = threading.Lock()

    def export(self, batch: FlowBatch) -> None:
        with self._lock:
            first = self.raised == 0
            if first:
                self.raised = len(batch)
        if first:
            raise RuntimeError("conformance kit: this export() fails on purpose")
        self.inner.export(batch)
        with self._lock:
            self.flows_after += len(batch)

    def flush(self, timeout: float) -> bool:
        result: bool = self.inner.flush(timeout)
        return result

    def shutdown(self, timeout: float) -> None:
        self.inner.shutdown(timeout)


def _builtin(name: str) -> Any:
    """A built-in component module, by entry point (core code does not import the plugins)."""
    for ep in entry_points(group="flowkit"):
        if ep.name == name:
            return ep.load()
    raise LookupError(f"flowkit's built-in plugin {name!r} is not installed")


def _raising_export(spec: ExporterSpec, settings: BaseModel | None,
                    delivered: Callable[[], int], timeout: float) -> None:
    from flowkit import hookimpl
    from flowkit.agent import Agent
    from flowkit.pipeline import resolve_pipeline
    from flowkit.plugins import PluginManager

    wrappers: list[_RaisingOnce] = []

    def factory(context: ComponentContext) -> _RaisingOnce:
        context.settings = settings
        wrapper = _RaisingOnce(spec.factory(context))
        wrappers.append(wrapper)
        return wrapper

    class UnderTest:
        @hookimpl
        def flowkit_exporters(self) -> list[ExporterSpec]:
            return [ExporterSpec(name="under-test", factory=factory)]

    pm = PluginManager(load_entrypoints=False, disabled=())
    for name in ("synthetic", "python-accounter", "poll"):
        pm.register(_builtin(name), name=name)
    pm.register(UnderTest(), name="under-test")
    config = load_config(environ={}, plugin_manager=pm, cli={
        "tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll",
        "listen_poll_period": "1h", "export": "under-test", "synthetic_rate": "200",
        "synthetic_flows": "4", "cache_active_timeout": "100ms",
        "shutdown_timeout": str(timeout)})
    before = delivered()
    agent = Agent(resolve_pipeline(config, pm))
    agent.start()
    try:
        wrapper = wrappers[0]
        _wait(lambda: wrapper.raised > 0 and wrapper.flows_after > 0, timeout)
        if agent.stop_requested.is_set():
            raise AssertionError("the agent stopped after export() raised")
        if wrapper.flows_after == 0:
            raise AssertionError("after export() raised once, no later batch was exported")
    finally:
        agent.shutdown()
    books = agent.summary()
    account = books["exporters"]["under-test"]
    counted = account["exported"] + sum(account["dropped"].values()) + account.get("spooled", 0)
    if counted != books["evicted"] + account.get("recovered", 0):
        raise AssertionError(f"the agent's books do not balance: evicted {books['evicted']}, "
                             f"{account} (does the exporter set accounts_delivery = True when "
                             "it reports deliveries itself?)")
    if account["dropped"].get("error", 0) < wrappers[0].raised:
        raise AssertionError(f"the failing batch of {wrappers[0].raised} flows was not counted "
                             f"as dropped with reason error: {account}")
    expected = wrappers[0].flows_after
    if not _wait(lambda: delivered() - before >= expected, timeout):
        raise AssertionError(f"{expected} flows were exported after the failing batch; the "
                             f"sink got {delivered() - before}")


def _bounded_memory(spec: ExporterSpec, settings: BaseModel | None,
                    stall: Callable[[], AbstractContextManager[Any]], timeout: float,
                    batches: int = 40, flows_per_batch: int = 500) -> None:
    stop = threading.Event()
    with stall():
        exporter = _build(spec, settings, stop)
        half = batches // 2
        payload = [_batch(flows_per_batch, i * flows_per_batch) for i in range(2)]
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]

            def feed(count: int) -> None:
                for i in range(count):
                    exporter.export(payload[i % 2])

            _call(lambda: feed(half), timeout * 4, "export() while the sink is stalled")
            middle = tracemalloc.get_traced_memory()[0]
            _call(lambda: feed(batches - half), timeout * 4,
                  "export() while the sink is stalled")
            end = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            stop.set()
            with contextlib.suppress(Exception):
                _call(lambda: exporter.shutdown(0.5), timeout + 5, "shutdown()")
    first, second = middle - start, end - middle
    slack = 256 * 1024
    if second > first / 2 + slack:
        raise AssertionError(
            f"memory kept growing while the sink was stalled: +{first // 1024} KiB over the "
            f"first {half} batches, +{second // 1024} KiB over the next {batches - half} "
            "(is the exporter's buffer bounded, and small enough in the settings given?)"
        )


def _settings_round_trip(spec: ExporterSpec, settings: BaseModel | None) -> None:
    if spec.settings_model is None or settings is None:
        return
    from flowkit import hookimpl
    from flowkit.pipeline import resolve_pipeline
    from flowkit.plugins import PluginManager

    class UnderTest:
        @hookimpl
        def flowkit_exporters(self) -> list[ExporterSpec]:
            return [spec]

    pm = PluginManager(load_entrypoints=False, disabled=())
    pm.register(UnderTest(), name="under-test")
    for name in ("synthetic", "python-accounter", "poll"):
        pm.register(_builtin(name), name=name)
    table = settings_table(pm)
    values = {name: value for name, value in settings.model_dump(mode="json").items()
              if name in spec.settings_model.model_fields}
    base = {"tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll",
            "export": spec.name}

    def as_text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return str(value)

    def resolved(**sources: Any) -> Any:
        config = load_config(plugin_manager=pm, **sources)
        return resolve_pipeline(config, pm).exporters[0].settings

    environ = {table[n].env: as_text(v) for n, v in values.items()}
    environ.update({k.upper(): v for k, v in base.items()})
    from_env = resolved(environ=environ)
    from_flags = resolved(environ={}, cli={**base, **{n: as_text(v) for n, v in values.items()}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flowkit.yaml"
        path.write_text(yaml.safe_dump({**base, **values}))
        from_file = resolved(environ={}, config_file=path)
    for source, got in (("environment", from_env), ("flags", from_flags), ("YAML", from_file)):
        if got != settings:
            raise AssertionError(f"settings read back from {source} differ: {got!r} != "
                                 f"{settings!r}")


def check_exporter(
    spec: ExporterSpec,
    settings: BaseModel | None = None,
    *,
    delivered: Callable[[], int],
    stall: Callable[[], AbstractContextManager[Any]] | None = None,
    timeout: float = 10.0,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Run the conformance checks (see the module docstring) on an exporter.

    :param spec: the exporter's spec, as its hook returns it.
    :param settings: an instance of ``spec.settings_model`` pointing at a sink the test runs.
    :param delivered: how many flows the sink has received so far (read from the sink itself).
    :param stall: a context manager in which the sink accepts nothing (stopped, paused, or
        unreachable); without it ``bounded_memory`` is skipped.
    :param timeout: bound of every step (a hang fails instead of blocking the test run).
    :param skip: names of checks not to run.
    :return: the checks that ran (all passed).
    :raises ConformanceError: naming every failed check and why.
    """
    failures: dict[str, str] = {}
    ran: list[str] = []
    steps: dict[str, Callable[[], None]] = {
        "flush_on_shutdown": lambda: _flush_on_shutdown(spec, settings, delivered, timeout),
        "nothing_after_shutdown": lambda: _nothing_after_shutdown(spec, settings, delivered,
                                                                  timeout),
        "raising_export": lambda: _raising_export(spec, settings, delivered, timeout),
        "settings_round_trip": lambda: _settings_round_trip(spec, settings),
    }
    if stall is not None:
        steps["bounded_memory"] = lambda: _bounded_memory(spec, settings, stall, timeout)
    for name in CHECKS:
        if name in skip or name not in steps:
            continue
        ran.append(name)
        try:
            steps[name]()
        except Exception as exc:
            failures[name] = str(exc) or type(exc).__name__
    if failures:
        raise ConformanceError(failures)
    return ran
