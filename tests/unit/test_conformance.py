"""The exporter conformance kit (flowkit.testing.check_exporter): built-in exporters pass it,
and each deliberately broken exporter is caught by the check meant for it."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field, field_validator

from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch
from flowkit.settings_types import CommaList
from flowkit.testing import ConformanceError, check_exporter
from flowkit_plugins.stdout_exporter import StdoutExporter


class Sink:
    """A thread-safe in-memory sink that can stall (accept nothing)."""

    def __init__(self) -> None:
        self.flows = 0
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            self.flows += n

    def delivered(self) -> int:
        with self.lock:
            return self.flows

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.open.clear()
        try:
            yield
        finally:
            self.open.set()


class LinesStream(io.RawIOBase):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sink.take(bytes(data).count(b"\n"))
        return len(data)


def test_the_stdout_exporter_passes() -> None:
    sink = Sink()
    spec = ExporterSpec(name="stdout",
                        factory=lambda ctx: StdoutExporter(ctx, stream=LinesStream(sink)))
    ran = check_exporter(spec, delivered=sink.delivered)
    assert ran == ["flush_on_shutdown", "nothing_after_shutdown", "raising_export",
                   "settings_round_trip"]


class BufferSettings(BaseModel):
    buf_max_flows: int = Field(default=1000, ge=1, description="Most flows buffered.")
    buf_tags: CommaList = Field(default_factory=list, description="Tags.")


class BufferingExporter:
    """A correct exporter: a bounded buffer a thread sends from once it holds 500 flows or
    when asked to flush; shutdown flushes."""

    def __init__(self, context: ComponentContext, sink: Sink, *, bounded: bool = True,
                 flush_on_shutdown: bool = True) -> None:
        self.sink, self.bounded = sink, bounded
        self.flush_on_shutdown = flush_on_shutdown
        self.limit = context.settings.buf_max_flows if context.settings else 1000
        self.buffer: list[FlowBatch] = []
        self.flushing = False
        self.closed = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def export(self, batch: FlowBatch) -> None:
        if self.closed:
            return
        with self.lock:
            held = sum(len(b) for b in self.buffer)
            if self.bounded and held + len(batch) > self.limit:
                return  # dropped (a real exporter counts it)
            self.buffer.append(batch.copy())
            self.lock.notify_all()

    def _drain(self) -> None:
        while True:
            with self.lock:
                while not self.buffer or (
                    not self.flushing and sum(len(b) for b in self.buffer) < 500
                ):
                    self.lock.wait(0.05)
                if not self.sink.open.is_set():
                    self.lock.wait(0.05)
                    continue
                batch = self.buffer.pop(0)
            self.sink.take(len(batch))

    def flush(self, timeout: float) -> bool:
        pause = threading.Event()
        with self.lock:
            self.flushing = True
        try:
            for _ in range(int(timeout * 20)):
                with self.lock:
                    if not self.buffer:
                        return True
                pause.wait(0.05)
            return False
        finally:
            with self.lock:
                self.flushing = False

    def shutdown(self, timeout: float) -> None:
        if self.flush_on_shutdown:
            self.flush(timeout)
        else:
            with self.lock:
                self.buffer.clear()
        self.closed = True


def spec_for(sink: Sink, **behaviour: Any) -> ExporterSpec:
    return ExporterSpec(name="buffering", settings_model=BufferSettings,
                        factory=lambda ctx: BufferingExporter(ctx, sink, **behaviour))


def test_a_correct_buffering_exporter_passes_every_check() -> None:
    sink = Sink()
    settings = BufferSettings(buf_max_flows=2000, buf_tags=["a", "b"])
    ran = check_exporter(spec_for(sink), settings, delivered=sink.delivered,
                         stall=sink.stalled)
    assert set(ran) == {"flush_on_shutdown", "nothing_after_shutdown", "raising_export",
                        "bounded_memory", "settings_round_trip"}


@pytest.mark.parametrize(
    ("behaviour", "check", "why"),
    [
        ({"flush_on_shutdown": False}, "flush_on_shutdown", "then shutdown(); the sink got 0"),
        ({"bounded": False}, "bounded_memory", "memory kept growing"),
    ],
)
def test_a_broken_exporter_is_caught_by_its_check(
    behaviour: dict[str, bool], check: str, why: str
) -> None:
    sink = Sink()
    with pytest.raises(ConformanceError) as caught:
        check_exporter(spec_for(sink, **behaviour), BufferSettings(buf_max_flows=2000),
                       delivered=sink.delivered, stall=sink.stalled, timeout=3)
    assert list(caught.value.failures) == [check]
    assert why in caught.value.failures[check]


def test_an_exporter_still_sending_after_shutdown_is_caught() -> None:
    sink = Sink()

    class Direct:
        """Sends in export(), even after shutdown (stdout did, before the kit found it)."""

        def export(self, batch: FlowBatch) -> None:
            sink.take(len(batch))

        def flush(self, timeout: float) -> bool:
            return True

        def shutdown(self, timeout: float) -> None:
            """Forgets to refuse later exports."""

    spec = ExporterSpec(name="direct", factory=lambda ctx: Direct())
    with pytest.raises(ConformanceError) as caught:
        check_exporter(spec, delivered=sink.delivered, timeout=3)
    assert list(caught.value.failures) == ["nothing_after_shutdown"]
    assert "5 flows reached the sink after shutdown()" in caught.value.failures[
        "nothing_after_shutdown"]


class LossySettings(BaseModel):
    lossy_ratio: float = Field(default=0.5, description="A value that does not survive text.")

    @field_validator("lossy_ratio", mode="before")
    @classmethod
    def _halve_strings(cls, value: Any) -> Any:
        return float(value) / 2 if isinstance(value, str) else value


def test_settings_that_do_not_read_back_from_text_are_caught() -> None:
    sink = Sink()
    spec = ExporterSpec(name="lossy", settings_model=LossySettings,
                        factory=lambda ctx: BufferingExporter(ctx, sink))
    with pytest.raises(ConformanceError) as caught:
        check_exporter(spec, LossySettings(lossy_ratio=0.8), delivered=sink.delivered,
                       skip=("flush_on_shutdown", "nothing_after_shutdown", "raising_export"))
    assert "settings read back from environment differ" in caught.value.failures[
        "settings_round_trip"]


def test_an_exporter_whose_export_always_raises_fails_the_agent_check() -> None:
    sink = Sink()

    class Raising(BufferingExporter):
        def export(self, batch: FlowBatch) -> None:
            raise OSError("sink gone")

    spec = ExporterSpec(name="raising", factory=lambda ctx: Raising(ctx, sink))
    with pytest.raises(ConformanceError) as caught:
        check_exporter(spec, delivered=sink.delivered, timeout=2,
                       skip=("settings_round_trip",))
    assert "raising_export" in caught.value.failures


def test_an_exporter_that_reports_deliveries_without_saying_so_is_caught() -> None:
    """It calls ``context.account.delivered`` but lacks ``accounts_delivery = True``: the agent
    counts every batch twice, and the books no longer balance."""
    sink = Sink()

    class CountsItself:
        def __init__(self, context: ComponentContext) -> None:
            self.account = context.account
            self.closed = False

        def export(self, batch: FlowBatch) -> None:
            if self.closed:
                return
            sink.take(len(batch))
            if self.account is not None:
                self.account.delivered(len(batch))

        def flush(self, timeout: float) -> bool:
            return True

        def shutdown(self, timeout: float) -> None:
            self.closed = True

    spec = ExporterSpec(name="counts-itself", factory=CountsItself)
    with pytest.raises(ConformanceError) as caught:
        check_exporter(spec, delivered=sink.delivered, timeout=3, skip=("settings_round_trip",))
    assert set(caught.value.failures) == {"raising_export"}
    assert "books do not balance" in caught.value.failures["raising_export"]

    CountsItself.accounts_delivery = True  # type: ignore[attr-defined]
    assert "raising_export" in check_exporter(spec, delivered=sink.delivered, timeout=3,
                                              skip=("settings_round_trip",))
