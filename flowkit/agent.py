"""The agent: informer -> tracer -> accounter -> exporters, with bounded queues between them.

Threads: one for the informer (attach/detach as interfaces come and go), one for accounting
(poll the tracer, evict every CACHE_ACTIVE_TIMEOUT) and one per exporter behind a queue of
BUFFERS_LENGTH batches. A full exporter queue drops the batch and counts it; it never blocks the
accounting thread or the other exporters.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from flowkit import privileges
from flowkit.accounts import ExporterAccount
from flowkit.components import (
    Accounter,
    ComponentContext,
    ComponentStartError,
    Exporter,
    ExporterFailed,
    Informer,
    Interface,
    PluginError,
    Tracer,
)
from flowkit.config import AgentConfig
from flowkit.dedup import FirstComeDeduper
from flowkit.interfaces import InterfaceFilter
from flowkit.metrics import Metrics
from flowkit.model import FlowBatch
from flowkit.pipeline import Pipeline, PipelineComponent, resolve_pipeline
from flowkit.plugins import PluginManager
from flowkit.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

_POLL_SLICE = 0.2  # seconds: how long the accounting thread waits for events at most
ATTACH_RETRY_INITIAL = 1.0  # seconds before the first retry of a failed attach; doubles
ATTACH_RETRY_MAX = 30.0  # longest wait between two attach attempts
NO_INTERFACE_GRACE = 3.0  # seconds after start before "no interface matches" is logged


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _SharedBatch:
    """A batch handed to several exporters; released when the last one is done."""

    __slots__ = ("_lock", "_remaining", "batch")

    def __init__(self, batch: FlowBatch, consumers: int) -> None:
        self.batch = batch
        self._remaining = consumers
        self._lock = threading.Lock()
        if consumers == 0:
            batch.release()

    def done(self) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self.batch.release()


class ExporterWorker:
    """Runs one exporter on its own thread behind a bounded queue, and keeps its books.

    Every flow offered to the worker ends up in its :class:`~flowkit.accounts.ExporterAccount`
    exactly once: delivered, or dropped with a reason (``queue_full`` when the queue had no
    room, ``error`` when ``export`` raised, ``shutdown`` when the stop deadline passed first).
    Exporters with ``accounts_delivery = True`` report delivery and their own drops themselves.
    """

    _STOP = object()

    def __init__(
        self,
        name: str,
        exporter: Exporter,
        capacity: int,
        metrics: Metrics,
        account: ExporterAccount | None = None,
        on_failure: Any = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.exporter = exporter
        # The exporter's context.stop_event: set by the export thread once it has handed the
        # exporter every queued batch, or by stop() when the deadline passes first.
        self.stop_event = stop_event or threading.Event()
        self.account = account if account is not None else ExporterAccount(name, metrics)
        self.self_accounting = bool(getattr(exporter, "accounts_delivery", False))
        self.offered = 0
        self._on_failure = on_failure
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name=f"flowkit-export-{name}",
                                        daemon=True)
        self._state = threading.Lock()
        self._current: _SharedBatch | None = None
        self._abandoned = False
        self._closing = False
        self._failed: ExporterFailed | None = None
        self._dropped_batches = metrics.counter(
            "dropped_batches", "Batches an exporter queue had no room for", ["exporter"]
        ).labels(exporter=name)
        self._errors = metrics.counter(
            "errors", "Errors by component and kind", ["component", "error"]
        ).labels(component=f"exporter/{name}", error="export")
        self._error_log = RateLimitedLog(log)
        self._queue_size = metrics.gauge(
            "buffer_size", "Batches waiting in a queue", ["name"]
        ).labels(name=f"exporter/{name}")

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        """Whether the worker thread was started."""
        return self._thread.ident is not None

    def offer(self, shared: _SharedBatch) -> bool:
        """Queue a batch without blocking; drop and count it when the queue is full."""
        flows = len(shared.batch)
        self.offered += flows
        try:
            self._queue.put_nowait(shared)
        except queue.Full:
            self._dropped_batches.inc()
            self.account.dropped(flows, "queue_full")
            shared.done()
            self._error_log.emit("queue_full", logging.WARNING,
                                 "exporter %s is too slow: dropped a batch of %d flows",
                                 self.name, flows)
            return False
        self._queue_size.set(self._queue.qsize())
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                self.stop_event.set()
                return
            shared: _SharedBatch = item
            flows = len(shared.batch)
            with self._state:
                if self._abandoned:
                    self.account.dropped(flows, "shutdown")
                    shared.done()
                    return
                self._current = shared
            failed = self._failed
            try:
                if failed is not None:
                    self.account.dropped(flows, failed.reason)
                else:
                    self._export(shared.batch)
            finally:
                with self._state:
                    self._current = None
                    abandoned = self._abandoned
                shared.done()
                self._queue_size.set(self._queue.qsize())
            if abandoned:
                return

    def _export(self, batch: FlowBatch) -> None:
        flows = len(batch)
        try:
            self.exporter.export(batch)
        except ExporterFailed as exc:
            self._failed = exc
            self._count_failed(flows, exc.reason)
            if exc.exit_status:
                log.error("exporter %s failed: %s; stopping", self.name, exc)
            else:
                log.info("exporter %s: %s; stopping", self.name, exc)
            if self._on_failure is not None:
                self._on_failure(self.name, exc)
            return
        except Exception as exc:
            self._errors.inc()
            # Even an exporter that keeps its own books did not count a batch whose export
            # raised (the contract in docs/plugins.md): the agent counts it.
            self._count_failed(flows, "error", always=True)
            # One line, at most every 30 s with the count held back; the traceback goes to
            # the debug log (an exporter failing twice a second must not flood the log).
            self._error_log.emit(
                "export", logging.ERROR, "exporter %s failed on a batch of %d flows "
                "(dropped; counted in errors_total{component=\"exporter/%s\"}): %s: %s",
                self.name, flows, self.name, type(exc).__name__, exc,
            )
            log.debug("exporter %s failed", self.name, exc_info=True)
            return
        self._error_log.recovered("export", logging.INFO, "exporter %s exports again", self.name)
        if not self.self_accounting:
            with self._state:
                if self._abandoned:
                    return  # already counted as dropped at the deadline
            self.account.delivered(flows)

    def _count_failed(self, flows: int, reason: str, always: bool = False) -> None:
        if self.self_accounting and not always:
            return  # ExporterFailed: the exporter counted what it could not deliver
        with self._state:
            if self._abandoned:
                return
        self.account.dropped(flows, reason)

    def close_queue(self) -> None:
        """No more batches: the worker thread returns once it has exported what is queued
        (never blocks; a full queue is drained first by the worker)."""
        if self._thread.ident is None or self._closing:
            return
        self._closing = True
        threading.Thread(target=self._queue.put, args=(self._STOP,), daemon=True,
                         name=f"flowkit-stop-{self.name}").start()

    def stop(self, deadline: float) -> None:
        """Wait (until ``deadline``) for the queued batches to be exported, then flush and shut
        the exporter down with what is left of the deadline.

        ``flush`` and ``shutdown`` are never called while ``export`` runs: an exporter still
        inside ``export`` at the deadline is left alone (and reported). Batches still queued
        or inside ``export`` at the deadline are counted as dropped with
        ``reason="shutdown"``.
        """
        if self.started:
            self.close_queue()
            # An idle worker takes the stop marker at once: a tenth of a second even when the
            # deadline has passed, so that only a really stuck export counts as stuck.
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self.stop_event.set()  # the queue is done or the deadline passed: stop retrying
        stuck = self._thread.is_alive()
        with self._state:
            self._abandoned = True
            current = self._current
            if current is not None and not self.self_accounting:
                self.account.dropped(len(current.batch), "shutdown")
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not self._STOP:
                left += len(item.batch)
                item.done()
        if left:
            self.account.dropped(left, "shutdown")
        if stuck or left:
            log.warning("exporter %s did not finish by the stop deadline (SHUTDOWN_TIMEOUT): "
                        "%d queued flows dropped%s", self.name, left,
                        "; still exporting, so not flushed or shut down" if stuck else "")
        if stuck:
            return  # flush/shutdown would run concurrently with the stuck export
        remaining = max(0.1, deadline - time.monotonic())
        try:
            if not self.exporter.flush(remaining):
                log.warning("exporter %s could not flush everything in time", self.name)
        except Exception as exc:
            log.error("exporter %s failed to flush: %s: %s", self.name, type(exc).__name__, exc)
        try:
            self.exporter.shutdown(max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            log.error("exporter %s failed to shut down: %s: %s", self.name,
                      type(exc).__name__, exc)

    def books(self, evicted: int) -> dict[str, Any]:
        """The final account: what was exported and dropped of the ``evicted`` flows.

        An exporter with a disk spool may also report ``recovered_flows()`` (flows an earlier
        run left in its spool, delivered or dropped in this run) and ``spooled_flows()`` (flows
        kept on disk for the next run); then ``evicted + recovered == exported + dropped +
        spooled``. Flows in none of these by now (an exporter's buffer that was not emptied)
        are counted as dropped with ``reason="shutdown"``, so the books always balance.
        """
        recovered = _count(self.exporter, "recovered_flows")
        spooled = _count(self.exporter, "spooled_flows")
        unaccounted = (evicted + recovered - spooled - self.account.exported
                       - self.account.dropped_total)
        if unaccounted > 0:
            log.warning("exporter %s: %d flows were still undelivered at shutdown",
                        self.name, unaccounted)
            self.account.dropped(unaccounted, "shutdown")
        elif unaccounted < 0:
            log.error("exporter %s counted %d flows more than it was given", self.name,
                      -unaccounted)
        books: dict[str, Any] = {
            "exported": self.account.exported, "dropped": self.account.dropped_by_reason()
        }
        if recovered or spooled:
            books["recovered"] = recovered
            books["spooled"] = spooled
        return books


def _count(exporter: Any, method: str) -> int:
    read = getattr(exporter, method, None)
    if not callable(read):
        return 0
    try:
        return int(read())
    except Exception as exc:
        log.warning("%s() of %s failed: %r", method, type(exporter).__name__, exc)
        return 0


def stop_workers(workers: list[ExporterWorker], deadline: float) -> None:
    """Stop every worker in parallel: each gets the whole time left until ``deadline``, so a
    slow exporter does not eat the others' share."""
    for worker in workers:
        worker.close_queue()
    threads = [threading.Thread(target=worker.stop, args=(deadline,), daemon=True,
                                name=f"flowkit-stopping-{worker.name}") for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 1.0)


class Agent:
    """Runs a :class:`~flowkit.pipeline.Pipeline` (or the one an
    :class:`~flowkit.config.AgentConfig` selects from the installed plugins).

    Use :meth:`run` to block until :meth:`stop` is called (from another thread or a signal
    handler), or :meth:`start` / :meth:`stop` / :meth:`join` for finer control::

        agent = flowkit.Agent(AgentConfig.load())
        agent.start()
        ...
        agent.stop(); agent.join()
    """

    def __init__(
        self,
        config: Pipeline | AgentConfig | None = None,
        *,
        plugin_manager: PluginManager | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if isinstance(config, Pipeline):
            self.pipeline = config
        else:
            pm = plugin_manager or PluginManager()
            self.pipeline = resolve_pipeline(
                config or AgentConfig.load(plugin_manager=pm), pm
            )
        self.config = self.pipeline.config
        self.metrics = metrics or Metrics(self.config.metrics_prefix)
        self.stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._informer_stop = threading.Event()
        self._watchdog_wake = threading.Event()
        self._accounting_stop = threading.Event()
        self._filter = InterfaceFilter(
            self.config.interfaces, self.config.exclude_interfaces, self.config.interface_ips
        )
        self._interfaces: dict[int, Interface] = {}
        self._attached: dict[int, Interface] = {}
        self._wanted: dict[int, Interface] = {}
        self._retries: dict[int, tuple[int, float]] = {}  # index -> (attempts, next try)
        self._attach_log = RateLimitedLog(log)
        self._names: dict[int, str] = {}
        self._retired: dict[int, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._workers: list[ExporterWorker] = []
        self.tracer: Tracer | None = None
        self.accounter: Accounter | None = None
        self.informer: Informer | None = None
        self._batch_listeners: list[Any] = []
        self._evictions = self.metrics.counter("evictions", "Flow evictions", ["source"])
        self.metrics.gauge_callback(
            "interfaces_wanted", "Interfaces present that INTERFACES/EXCLUDE_INTERFACES select",
            lambda: float(len(self._wanted)),
        )
        self.metrics.gauge_callback(
            "interfaces_traced", "Interfaces the tracer is attached to",
            lambda: float(len(self._attached)),
        )
        self._evicted_flows = self.metrics.counter(
            "evicted_flows", "Flows evicted from the accounter", ["source"]
        )
        self._attach_errors = self.metrics.counter(
            "errors", "Errors by component and kind", ["component", "error"]
        )
        self._deduper: FirstComeDeduper | None = None
        if self.config.deduper == "firstCome":
            self._deduper = FirstComeDeduper(
                self.config.deduper_fc_expiry or 2 * self.config.cache_active_timeout,
                max_remembered=4 * self.config.cache_max_flows,
            )
        self._deduplicated = self.metrics.counter(
            "deduplicated_flows",
            "Flows not exported because another interface reported the same conversation "
            "(DEDUPER=firstCome); listed in that flow's Interfaces",
        )
        self._started = False
        self.failure: str | None = None
        """Why the agent stopped by itself (an exporter whose sink failed for good), if it did."""
        self.exit_status = 0
        """0, or the status an exporter failure asks ``flowkit-agent`` to exit with."""
        self._evicted_total = 0
        self._shutdown_lock = threading.Lock()
        self._shutdown_owner: threading.Thread | None = None

    # -- construction -----------------------------------------------------------------------
    def _context(self, component: PipelineComponent, stop_event: threading.Event | None = None,
                 **extra: Any) -> ComponentContext:
        return ComponentContext(
            config=self.config,
            settings=component.settings,
            metrics=self.metrics,
            stop_event=stop_event or self.stop_requested,
            stopper=self.stop,
            **extra,
        )

    def _build(self, component: PipelineComponent, **extra: Any) -> Any:
        """Call ``component``'s factory; a failure becomes one
        :class:`~flowkit.components.ComponentStartError` naming it and its distribution."""
        try:
            return component.spec.factory(self._context(component, **extra))
        except (ComponentStartError, PluginError, privileges.PrivilegeError):
            raise
        except Exception as exc:
            log.debug("%s failed to start", component.describe(), exc_info=True)
            raise ComponentStartError(component.describe(), exc) from exc

    def check_privileges(self) -> None:
        """Raise :class:`~flowkit.privileges.PrivilegeError` if a component lacks capabilities."""
        for component in self.pipeline.components():
            if component.spec.capabilities:
                privileges.require(f"the {component.name} {component.kind}",
                                   component.spec.capabilities)

    def start(self) -> None:
        """Build every component and start the threads. Raises if anything cannot start.

        A failure unwinds whatever had been built (exporters are shut down, the tracer and the
        other components closed) before the exception propagates; the agent is then stopped.
        """
        if self._started:
            raise RuntimeError("an Agent can be started once")
        self._started = True
        try:
            self._start()
        except BaseException:
            self._unwind()
            raise

    def _start(self) -> None:
        self.check_privileges()
        pipeline = self.pipeline
        cfg = self.config
        # The tracer is built first (building creates nothing in the kernel) so that it can
        # refuse sizes the host cannot afford before anything else exists.
        self.tracer = self._build(pipeline.tracer)
        preflight = getattr(self.tracer, "preflight", None)
        if callable(preflight):
            preflight()
        if any(c.spec.capabilities for c in pipeline.components()):
            privileges.raise_memlock_limit()
        for component in pipeline.exporters:
            account = ExporterAccount(component.name, self.metrics)
            # Each exporter has its own stop_event (the stop contract, docs/plugins.md).
            exporter_stop = threading.Event()
            exporter = self._build(component, account=account, stop_event=exporter_stop)
            self._workers.append(
                ExporterWorker(component.name, exporter, cfg.buffers_length, self.metrics,
                               account, on_failure=self._on_exporter_failure,
                               stop_event=exporter_stop)
            )
        self.tracer.start()
        self.accounter = self._build(pipeline.accounter, tracer=self.tracer)
        self.informer = self._build(pipeline.informer)
        self._names.update(self.tracer.interface_names())
        for worker in self._workers:
            worker.start()
        self._spawn("flowkit-informer", self._informer_loop)
        self._spawn("flowkit-watchdog", self._watchdog_loop)
        self._spawn("flowkit-accounting", self._accounting_loop)
        log.info(
            "flowkit agent started: tracer=%s accounter=%s informer=%s exporters=%s",
            pipeline.tracer.name, pipeline.accounter.name, pipeline.informer.name,
            ",".join(c.name for c in pipeline.exporters),
        )

    def _detach_all(self, level: int) -> None:
        """Detach the tracer from every traced interface; a failure is logged at ``level``."""
        with self._lock:
            attached = list(self._attached.values())
            self._attached.clear()
        for iface in attached:
            try:
                assert self.tracer is not None
                self.tracer.detach(iface)
            except Exception as exc:
                log.log(level, "detaching from %s failed: %s", iface.name, exc)

    def _unwind(self) -> None:
        """Undo a failed start: stop threads, shut exporters down, close the components."""
        self.stop_requested.set()
        self._stop_informer()
        self._stop_accounting()
        for thread in self._threads:
            thread.join(2.0)
        self._detach_all(logging.DEBUG)
        # Exporters built but never started get their shutdown() (nothing to flush yet).
        for worker in self._workers:
            try:
                worker.exporter.shutdown(1.0)
            except Exception as exc:
                log.error("exporter %s failed to shut down: %s: %s", worker.name,
                          type(exc).__name__, exc)
        self._close_components()
        self._stopped.set()

    def _on_exporter_failure(self, name: str, exc: ExporterFailed) -> None:
        if exc.exit_status and self.failure is None:
            self.failure = f"exporter {name}: {exc}"
            self.exit_status = exc.exit_status
        self.stop()

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("%s failed; stopping the agent", threading.current_thread().name)
                self.stop()

        return run

    # -- informer ---------------------------------------------------------------------------
    def _informer_loop(self) -> None:
        assert self.informer is not None
        for event in self.informer.events(self._informer_stop):
            if self._informer_stop.is_set():
                break
            iface = event.interface
            if event.type == "added":
                self._on_added(iface)
            else:
                self._on_deleted(iface)

    def _on_added(self, iface: Interface) -> None:
        with self._lock:
            self._interfaces[iface.key] = iface
            self._names[iface.key] = iface.qualified_name
            if iface.key in self._attached or not self._filter.allows(iface):
                return
            self._wanted[iface.key] = iface
            self._retries.pop(iface.key, None)
            self._try_attach(iface)

    def _try_attach(self, iface: Interface) -> None:
        """Attach (caller holds the lock); on failure, schedule a retry with backoff."""
        assert self.tracer is not None
        attempt = self._retries.get(iface.key, (0, 0.0))[0] + 1
        try:
            self.tracer.attach(iface)
        except Exception as exc:
            self._attach_errors.labels(component="tracer", error="attach").inc()
            delay = min(ATTACH_RETRY_MAX, ATTACH_RETRY_INITIAL * 2.0 ** min(attempt - 1, 16))
            delay = delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 (jitter)
            self._retries[iface.key] = (attempt, time.monotonic() + delay)
            self._wake_watchdog()  # it sleeps until the earliest retry it knew of
            self._attach_log.emit(
                f"attach-{iface.key}", logging.WARNING,
                "cannot trace interface %s (index %d): %s; retrying (attempt %d, next in %.1fs)",
                iface.qualified_name, iface.index, _first_line(exc), attempt, delay,
            )
            return
        self._retries.pop(iface.key, None)
        self._attached[iface.key] = iface
        self._attach_log.recovered(f"attach-{iface.key}", logging.DEBUG, "")
        if attempt > 1:
            log.info("tracing interface %s (index %d) after %d attempts", iface.qualified_name,
                     iface.index, attempt)
        else:
            log.info("tracing interface %s (index %d)", iface.qualified_name, iface.index)

    def _on_deleted(self, iface: Interface) -> None:
        assert self.tracer is not None
        with self._lock:
            self._interfaces.pop(iface.key, None)
            if iface.netns:
                # Flows of the interface may still be evicted: keep its name for two periods
                # (the agent's own interfaces keep theirs; here every new namespace adds keys).
                self._retired[iface.key] = time.monotonic()
            self._wanted.pop(iface.key, None)
            self._retries.pop(iface.key, None)
            if not self._wanted:
                self._wake_watchdog()  # "no interface matches" may be due
            attached = self._attached.pop(iface.key, None)
            if attached is None:
                return
            try:
                self.tracer.detach(attached)
            except Exception as exc:
                self._attach_errors.labels(component="tracer", error="detach").inc()
                log.warning("detaching from %s failed: %s", attached.name, exc)
        log.info("stopped tracing interface %s (index %d)", iface.qualified_name, iface.index)

    def _watchdog_loop(self) -> None:
        """Retry failed attaches when due; log the interfaces wanted vs traced periodically.

        Sleeps until the next of these is due; a newly scheduled retry, a deleted interface
        and the stop wake it (:attr:`_watchdog_wake`).
        """
        started = time.monotonic()
        warned_empty = False
        period = self.config.status_log_period
        next_status = started + period if period else float("inf")
        timeout: float | None = NO_INTERFACE_GRACE
        while True:
            self._watchdog_wake.wait(timeout)
            # Cleared before the state is read: a wake that comes later is not lost.
            self._watchdog_wake.clear()
            if self._informer_stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                due = [self._wanted[i] for i, (_, at) in self._retries.items()
                       if at <= now and i in self._wanted]
                for iface in due:
                    self._try_attach(iface)
                nothing_wanted = not self._wanted
                next_retry = min((at for i, (_, at) in self._retries.items()
                                  if i in self._wanted), default=float("inf"))
            grace_over = now - started >= NO_INTERFACE_GRACE
            if not warned_empty and nothing_wanted and grace_over:
                warned_empty = True
                log.warning(
                    "no interface matches INTERFACES=%s EXCLUDE_INTERFACES=%s%s: nothing is "
                    "traced until one appears",
                    ",".join(self.config.interfaces) or "(all)",
                    ",".join(self.config.exclude_interfaces),
                    f" INTERFACE_IPS={','.join(self.config.interface_ips)}"
                    if self.config.interface_ips else "",
                )
            if now >= next_status:
                next_status = now + period
                self._log_status()
            wake_at = min(next_retry, next_status,
                          float("inf") if warned_empty or grace_over
                          else started + NO_INTERFACE_GRACE)
            timeout = None if wake_at == float("inf") else max(0.0, wake_at - time.monotonic())

    def _wake_watchdog(self) -> None:
        self._watchdog_wake.set()

    def _stop_informer(self) -> None:
        """Stop the informer and watchdog threads; end their waits at once."""
        self._informer_stop.set()
        self._wake_watchdog()
        wake = getattr(self.informer, "wake", None)
        if callable(wake):
            try:
                wake()
            except Exception as exc:  # it then sees the stop within its own timeout
                log.warning("waking the informer failed: %s", exc)

    def _log_status(self) -> None:
        state = self.interfaces_state()
        untraced = state["untraced"]
        log.log(
            logging.WARNING if untraced else logging.INFO,
            "status: tracing %d of %d wanted interfaces%s; %d flows evicted",
            len(state["traced"]), len(state["wanted"]),
            f" (not traced: {', '.join(untraced)})" if untraced else "",
            self._evicted_total,
            extra={"interfaces": state},
        )

    def interfaces_state(self) -> dict[str, list[str]]:
        """Names of the interfaces wanted (present and selected), traced, and wanted but not
        traced (their attach failed and is being retried)."""
        with self._lock:
            wanted = sorted(i.qualified_name for i in self._wanted.values())
            traced = sorted(i.qualified_name for i in self._attached.values())
        return {"wanted": wanted, "traced": traced,
                "untraced": sorted(set(wanted) - set(traced))}

    def health(self) -> dict[str, Any]:
        """What ``/health`` serves: ``status`` is ``ok`` when every wanted interface is traced
        and no exporter failed for good, ``degraded`` otherwise, ``stopping`` once stopping."""
        state = self.interfaces_state()
        if self.stop_requested.is_set():
            status = "stopping"
        elif state["untraced"] or self.failure:
            status = "degraded"
        else:
            status = "ok"
        out: dict[str, Any] = {"status": status, "interfaces": state,
                               "flows": {"evicted": self._evicted_total}}
        if self.failure:
            out["failure"] = self.failure
        return out

    @property
    def attached_interfaces(self) -> list[Interface]:
        """Interfaces currently traced."""
        with self._lock:
            return list(self._attached.values())

    # -- accounting -------------------------------------------------------------------------
    def _accounting_loop(self) -> None:
        assert self.accounter is not None
        period = self.config.cache_active_timeout
        next_evict = time.monotonic() + period
        # An accounter that the stop can wake waits in one poll until the next eviction is due;
        # any other one polls in slices so that the stop is seen within _POLL_SLICE.
        wakeable = bool(getattr(self.accounter, "wakeable", False))
        while not self._accounting_stop.is_set():
            wait = max(0.0, next_evict - time.monotonic())
            batch = self.accounter.poll(wait if wakeable else min(_POLL_SLICE, wait))
            if batch is not None:
                self._dispatch(batch, "full")
            if time.monotonic() >= next_evict:
                self._dispatch(self.accounter.evict(), "timer")
                next_evict += period
                if next_evict < time.monotonic():  # we fell behind: do not evict in a burst
                    next_evict = time.monotonic() + period
        # Final drain: interfaces are detached by now, so this batch holds everything left.
        batch = self.accounter.poll(0)
        if batch is not None:
            self._dispatch(batch, "full")
        self._dispatch(self.accounter.evict(), "stop")

    def _stop_accounting(self) -> None:
        """Ask the accounting thread to finish (final drain included) and end its wait."""
        self._accounting_stop.set()
        wake = getattr(self.accounter, "wake", None)
        if callable(wake):
            try:
                wake()
            except Exception as exc:  # the thread then sees the stop at its next timeout
                log.warning("waking the accounter failed: %s", exc)

    def _dispatch(self, batch: FlowBatch, source: str) -> None:
        self._evictions.labels(source=source).inc()
        if self._deduper is not None and len(batch):
            batch = self._deduplicate(batch)
        n = len(batch)
        if n == 0:
            batch.release()
            return
        self._evicted_flows.labels(source=source).inc(n)
        self._evicted_total += n
        with self._lock:
            batch.interfaces = dict(self._names)
            if self._retired:
                self._forget_retired_names()
        batch.agent_ip = self.config.agent_ip
        for listener in self._batch_listeners:
            listener(batch)
        shared = _SharedBatch(batch, len(self._workers))
        for worker in self._workers:
            worker.offer(shared)

    def _deduplicate(self, batch: FlowBatch) -> FlowBatch:
        """DEDUPER=firstCome: a batch without the flows another interface reported."""
        assert self._deduper is not None
        try:
            folded = self._deduper.apply(batch.array)
        finally:
            before = len(batch)
            batch.release()
        self._deduplicated.inc(before - len(folded))
        return FlowBatch(folded)

    def _forget_retired_names(self) -> None:
        horizon = time.monotonic() - 2 * self.config.cache_active_timeout
        for key, since in list(self._retired.items()):
            if since < horizon:
                del self._retired[key]
                if key not in self._attached:
                    self._names.pop(key, None)

    def add_batch_listener(self, listener: Any) -> None:
        """Call ``listener(batch)`` synchronously for every batch (before exporters see it)."""
        self._batch_listeners.append(listener)

    # -- stopping ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Request an orderly stop (thread- and signal-safe); :meth:`join` waits for it."""
        self.stop_requested.set()

    def run(self) -> None:
        """Start, block until :meth:`stop` is called, then shut down in order."""
        self.start()
        try:
            while not self.stop_requested.wait(0.5):
                pass
        finally:
            self.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the agent has stopped; True when it has.

        After :meth:`stop`, the caller's thread performs the orderly shutdown itself unless
        :meth:`run` (or another thread) is already doing it.
        """
        if self._started and self.stop_requested.wait(timeout) and not self._stopped.is_set():
            with self._shutdown_lock:
                if self._shutdown_owner is None:
                    self._shutdown_owner = threading.current_thread()
            if self._shutdown_owner is threading.current_thread():
                self.shutdown()
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        """Detach, drain the last flows, flush exporters and release everything.

        Bounded by SHUTDOWN_TIMEOUT for the exporters. Idempotent.
        """
        with self._shutdown_lock:
            if self._shutdown_owner not in (None, threading.current_thread()):
                owner_running = True
            else:
                self._shutdown_owner = threading.current_thread()
                owner_running = False
        if owner_running or self._stopped.is_set():
            self._stopped.wait(self.config.shutdown_timeout + 5.0)
            return
        self.stop_requested.set()
        deadline = time.monotonic() + self.config.shutdown_timeout
        self._stop_informer()
        for thread in self._threads:
            if thread.name in ("flowkit-informer", "flowkit-watchdog"):
                thread.join(2.0)
        self._detach_all(logging.WARNING)
        self._stop_accounting()
        for thread in self._threads:
            if thread.name == "flowkit-accounting":
                thread.join(max(1.0, deadline - time.monotonic()))
        # The last batch is queued: from now on exporters have SHUTDOWN_TIMEOUT, all of them
        # at once, to deliver it; each one's stop_event is set once its queue is exported (the
        # stop contract, docs/plugins.md).
        stop_workers(self._workers, time.monotonic() + self.config.shutdown_timeout)
        self._close_components()
        summary = self.summary()
        counters = {k: int(v) for k, v in self.stats().items()}
        # The message holds every counter's total and the books ("flows"); JSON log lines also
        # carry both as structured fields.
        log.info("flowkit agent stopped: %s", orjson.dumps({**counters, "flows": summary}).decode(),
                 extra={"flows": summary, "counters": counters})
        self._stopped.set()

    def _close_components(self) -> None:
        for component in (self.informer, self.accounter, self.tracer):
            if component is None:
                continue
            try:
                component.close()
            except Exception as exc:
                log.warning("closing %s failed: %r", type(component).__name__, exc)

    def summary(self) -> dict[str, Any]:
        """The books of the run, as integers: ``evicted`` and, per exporter, what was exported
        and dropped by reason. For every exporter ``evicted == exported + sum(dropped)``."""
        evicted = self._evicted_total
        return {
            "evicted": evicted,
            "exporters": {w.name: w.books(evicted) for w in self._workers},
        }

    def stats(self) -> dict[str, float]:
        """Totals so far: evicted, exported and dropped flows (summed over exporters)."""
        out: dict[str, float] = {}
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = sample.name.removeprefix(self.metrics.prefix).removesuffix("_total")
                    out[key] = out.get(key, 0.0) + sample.value
        return out


def capture(
    duration: float | None = None, *, plugin_manager: PluginManager | None = None, **settings: Any
) -> Iterator[FlowBatch]:
    """Run an agent in the background and yield its batches (for notebooks and scripts).

    Settings are given by name (``capture(interfaces="eth0", cache_active_timeout="1s")``);
    exporters default to none beyond this iterator. Each yielded batch owns its memory. Stops
    after ``duration`` seconds (None: when the caller stops iterating).
    """
    pm = plugin_manager or PluginManager()
    settings.setdefault("export", "stdout")
    config = AgentConfig.load(cli=settings, environ={}, plugin_manager=pm)
    pipeline = dataclasses.replace(resolve_pipeline(config, pm), exporters=())
    agent = Agent(pipeline)
    batches: queue.Queue[FlowBatch | None] = queue.Queue(maxsize=max(1, config.buffers_length))

    def listener(batch: FlowBatch) -> None:
        try:
            batches.put_nowait(batch.copy())
        except queue.Full:
            log.warning("capture(): the caller is not keeping up, a batch was dropped")

    agent.add_batch_listener(listener)
    agent.start()
    end = None if duration is None else time.monotonic() + duration
    try:
        while True:
            timeout = 0.5 if end is None else min(0.5, end - time.monotonic())
            if timeout <= 0:
                break
            try:
                batch = batches.get(timeout=timeout)
            except queue.Empty:
                continue
            if batch is not None:
                yield batch
        # Duration over: stop (final drain included), then hand out what is left.
        agent.shutdown()
        while not batches.empty():
            leftover = batches.get_nowait()
            if leftover is not None:
                yield leftover
    finally:
        agent.shutdown()
