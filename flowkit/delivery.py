"""The one buffering and retry rule for exporters that send to a peer that can be away.

An exporter that talks to a network sink should not write its own buffer, retry loop and drop
counters: it encodes each batch into payloads and hands them to a :class:`Sender`, and gives the
sender one function, ``send(payload, flows)``, that makes ONE attempt and says how it went
(:class:`Outcome`). The rule the sender applies, for every exporter alike:

1. ``offer`` never waits for the network. Payloads go to a memory buffer bounded in flows
   (``max_buffered_flows``); what does not fit is dropped with reason ``buffer_full`` — or, with
   a spool, written to the spool instead.
2. One sender thread delivers payloads oldest first. ``Outcome.SENT`` counts the flows as
   delivered. ``Outcome.RETRY`` (the peer is away, a timeout) keeps the payload at the head and
   waits a capped, jittered exponential backoff (:class:`RetryPolicy`) that a shutdown
   interrupts. ``Outcome.REJECTED`` (the peer refuses it for good) drops it with reason
   ``rejected``. :class:`Split` replaces the payload with smaller ones (a peer's size limit).
3. The spool seam: with a :class:`~flowkit.spool.Spool`, the first ``RETRY`` moves the memory
   buffer to the spool, and later payloads are appended there while the peer is away; the
   sender replays the spool oldest first (``peek`` -> ``begin`` -> send -> ``ack`` or
   ``release``) and goes back to memory once it is empty. A spool left by an earlier run is
   replayed first.
4. ``shutdown(timeout)`` sends what it can before the deadline; the rest is written to the spool
   (kept for the next start) or dropped with reason ``shutdown``.

Every drop and delivery is reported through the two callbacks (``on_drop(reason, flows)``,
``on_delivered(flows)``), which exporters wire to the agent's flow accounting, so that the one
drop metric family, ``dropped_flows{exporter,reason}``, covers every exporter.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowkit.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from flowkit.spool import Spool, SpoolRecord

__all__ = ["DROP_REASONS", "Outcome", "RetryPolicy", "Sender", "Split"]

log = logging.getLogger(__name__)

DROP_REASONS: dict[str, str] = {
    "queue_full": "the agent's queue for the exporter (BUFFERS_LENGTH batches) was full",
    "buffer_full": "the exporter's buffer (e.g. GRPC_BUFFER_MAX_FLOWS) was full, no spool",
    "rejected": "the peer refused the flows for good (e.g. INVALID_ARGUMENT, a bad record)",
    "error": "export() raised, or the sink failed in a way that cannot be retried (a refused "
    "datagram, a failed file write)",
    "closed": "the sink went away for good (standard output's reader closed the pipe)",
    "shutdown": "still undelivered when the stop deadline (SHUTDOWN_TIMEOUT) passed",
    "timeout": "the sink's own delivery deadline passed (e.g. KAFKA_MESSAGE_TIMEOUT)",
    "encode": "a flow could not be encoded for the sink",
    "spool_full": "the disk spool exceeded its budget and dropped its oldest segment",
    "spool_corrupt": "a spool record failed its checksum when read back",
    "spool_error": "writing to the disk spool failed (e.g. the disk is full)",
    "spool_torn": "a record an earlier run left in the spool was cut short or corrupt at start",
}
"""Every ``reason`` label of ``dropped_flows``, with what it means."""


class Outcome(enum.Enum):
    """What one delivery attempt did."""

    SENT = "sent"
    """Delivered: the peer has the flows."""
    RETRY = "retry"
    """Not delivered, worth retrying (the peer is away or overloaded)."""
    REJECTED = "rejected"
    """Not delivered and never will be (the peer refused it): drop it."""


@dataclass(frozen=True)
class Split:
    """Not delivered: send these smaller payloads instead (``(payload, flows)`` pairs)."""

    parts: list[tuple[bytes, int]]


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with "equal jitter": attempt ``n`` waits between half and
    all of ``min(maximum, initial * 2**(n-1))`` seconds."""

    initial: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        step = self.initial * 2.0 ** min(max(attempt, 1) - 1, 32)
        ceiling = min(self.maximum, step)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic


SendFunction = Callable[[bytes, int], "Outcome | Split"]


class _Pending:
    __slots__ = ("data", "flows")

    def __init__(self, data: bytes, flows: int) -> None:
        self.data = data
        self.flows = flows


class Sender:
    """Buffers payloads and delivers them from a background thread (see the module docstring).

    :param name: the exporter's name (thread name, log lines).
    :param send: one delivery attempt of one payload; must not raise (an exception counts as
        ``RETRY`` and is logged, rate-limited).
    :param max_buffered_flows: bound of the memory buffer, in flows.
    :param retry: the backoff between attempts.
    :param spool: optional disk spool (see rule 3).
    :param on_drop: called with ``(reason, flows)`` for every drop.
    :param on_delivered: called with the flows of every delivered payload.
    :param target: the peer, for log lines (``collector 127.0.0.1:9999``).
    :param buffer_setting: the setting that bounds the buffer, for log lines.
    """

    def __init__(
        self,
        name: str,
        send: SendFunction,
        *,
        max_buffered_flows: int,
        retry: RetryPolicy,
        spool: Spool | None = None,
        on_drop: Callable[[str, int], None] = lambda reason, flows: None,
        on_delivered: Callable[[int], None] = lambda flows: None,
        target: str = "the peer",
        buffer_setting: str = "the buffer size",
    ) -> None:
        self.name = name
        self._send_function = send
        self.max_buffered_flows = max_buffered_flows
        self.retry = retry
        self._spool = spool
        self._on_drop = on_drop
        self._on_delivered = on_delivered
        self._target = target
        self._buffer_setting = buffer_setting
        self._lock = threading.Condition()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._buffered_flows = 0
        # True while the spool holds payloads that must go before anything new.
        self._spooling = spool is not None and not spool.empty()
        self._in_flight = False
        self._sending: _Pending | None = None  # the memory payload being sent
        self._head_spilled: _Pending | None = None  # ... when an offer moved it to the spool
        self._closing = threading.Event()  # no more offers; stop once everything is out
        self._abort = threading.Event()  # stop now, even with flows left
        self._problems = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name=f"flowkit-{name}-sender",
                                        daemon=True)
        self._thread.start()

    # -- what exporters call ----------------------------------------------------------------
    @property
    def buffered_flows(self) -> int:
        """Flows waiting in memory."""
        return self._buffered_flows

    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return 0 if self._spool is None else self._spool.flows

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without one)."""
        return 0 if self._spool is None else self._spool.recovered_flows

    def offer(self, payloads: Iterable[tuple[bytes, int]]) -> None:
        """Queue payloads (in order) for delivery; never waits for the peer."""
        items = [_Pending(data, flows) for data, flows in payloads if flows > 0]
        if not items:
            return
        if self._closing.is_set():
            self._on_drop("shutdown", sum(item.flows for item in items))
            return
        dropped = 0
        with self._lock:
            room = self.max_buffered_flows - self._buffered_flows
            total = sum(item.flows for item in items)
            if self._spool is not None and (self._spooling or room < total):
                # All of it, so that memory never holds anything newer than the spool.
                for item in items:
                    self._append_to_spool(item, "buffer full" if room < total else "")
            else:
                for item in items:
                    if room < item.flows:
                        dropped += item.flows
                        continue
                    self._pending.append(item)
                    self._buffered_flows += item.flows
                    room -= item.flows
            self._lock.notify_all()
        if dropped:
            self._on_drop("buffer_full", dropped)
            self._problems.emit(
                "overflow", logging.ERROR,
                "%s exporter buffer is full (%s=%d): dropped %d flows",
                self.name, self._buffer_setting, self.max_buffered_flows, dropped,
            )
        else:
            self._problems.recovered(
                "overflow", logging.INFO, "%s exporter buffer has room again", self.name
            )

    def flush(self, timeout: float) -> bool:
        """Wait until everything buffered (and spooled) was delivered or dropped; False on
        timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._in_flight or self._spool_waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._abort.is_set():
                    return False
                self._lock.wait(min(remaining, 0.5))
        return True

    def shutdown(self, timeout: float) -> int:
        """Deliver what can be delivered within ``timeout``, keep the rest in the spool or drop
        it (reason ``shutdown``), stop the thread. Returns the flows dropped."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        self.flush(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            if self._spool is not None and not self._in_flight:
                self._spill("stopping")
            left = self._buffered_flows
            self._pending.clear()
            self._buffered_flows = 0
        if self._spool is not None:
            kept = self._spool.flows
            self._spool.close()
            if kept:
                log.warning(
                    "%s exporter stopped with %d flows kept in the spool %s; they are sent at "
                    "the next start", self.name, kept, self._spool.directory,
                )
        if left:
            self._on_drop("shutdown", left)
            log.warning("%s exporter stopped with %d flows not delivered to %s", self.name,
                        left, self._target)
        return left

    # -- spool ------------------------------------------------------------------------------
    def _spool_waiting(self) -> bool:
        return self._spooling and self._spool is not None and not self._spool.empty()

    def _start_spooling(self, why: str) -> None:
        if not self._spooling:
            self._spooling = True
            assert self._spool is not None
            log.warning("%s exporter: %s; writing flows to the spool %s until %s takes them",
                        self.name, why, self._spool.directory, self._target)

    def _append_to_spool(self, item: _Pending, why: str) -> None:
        """Caller holds the lock. The memory buffer is older: it goes to the spool first."""
        assert self._spool is not None
        self._spill(why or f"{self._target} is unreachable", from_offer=True)
        self._start_spooling(why or f"{self._target} is unreachable")
        self._spool.append(item.data, item.flows)

    def _spill(self, why: str, from_offer: bool = False) -> None:
        """Move the memory buffer into the spool, oldest first (caller holds the lock).

        From an offer, the payload being sent may move too: the sender then acknowledges it in
        the spool (where it is first) when the attempt ends for good, or leaves it there to be
        replayed when it is to be retried.
        """
        if self._spool is None or not self._pending:
            return
        if from_offer and self._in_flight and self._sending is self._pending[0]:
            self._head_spilled = self._sending
        self._start_spooling(why)
        while self._pending:
            item = self._pending.popleft()
            self._buffered_flows -= item.flows
            self._spool.append(item.data, item.flows)

    # -- the sender thread ------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._abort.is_set():
            record: SpoolRecord | None = None
            item: _Pending | None = None
            with self._lock:
                while not self._abort.is_set():
                    if self._pending:
                        break
                    if self._spooling and self._spool is not None:
                        record = self._spool.peek()
                        if record is not None:
                            break
                        self._spooling = False  # replayed everything: back to memory
                        log.info("%s exporter: spool replayed, sending from memory again",
                                 self.name)
                        self._lock.notify_all()
                    if self._closing.is_set():
                        return
                    self._lock.wait(0.5)
                if self._abort.is_set():
                    return
                if record is None:
                    item = self._pending[0]
                self._sending = item
                self._in_flight = True
            try:
                if record is not None:
                    outcome = self._send_spooled(record)
                else:
                    assert item is not None
                    outcome = self._send_head(item)
                    if outcome is Outcome.RETRY and self._spool is not None:
                        with self._lock:
                            self._spill(f"{self._target} is unreachable")
            finally:
                with self._lock:
                    self._sending = None
                    self._in_flight = False
                    self._lock.notify_all()
            if outcome is Outcome.RETRY:
                attempt += 1
                self._abort.wait(self.retry.delay(attempt))
            else:
                attempt = 0

    def _attempt(self, data: bytes, flows: int) -> Outcome | Split:
        try:
            return self._send_function(data, flows)
        except Exception as exc:
            self._problems.emit("send", logging.ERROR, "%s exporter: sending to %s failed: %s",
                                self.name, self._target, exc)
            return Outcome.RETRY

    def _send_head(self, item: _Pending) -> Outcome:
        outcome = self._attempt(item.data, item.flows)
        with self._lock:
            spilled = self._head_spilled is item
            self._head_spilled = None
        if spilled:
            return self._finish_spilled(item, outcome)
        if isinstance(outcome, Split):
            with self._lock:
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
                    for data, flows in reversed(outcome.parts):
                        self._pending.appendleft(_Pending(data, flows))
            return Outcome.SENT  # nothing lost: no backoff, send the parts at once
        if outcome is Outcome.RETRY:
            return outcome
        with self._lock:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
                self._buffered_flows -= item.flows
            self._lock.notify_all()
        self._report(outcome, item.flows)
        return outcome

    def _finish_spilled(self, item: _Pending, outcome: Outcome | Split) -> Outcome:
        """``item`` moved to the spool (first in it) while being sent."""
        assert self._spool is not None
        if outcome is Outcome.RETRY:
            return outcome  # replayed from the spool
        record = self._spool.peek()
        if record is not None and record.payload == item.data:
            self._spool.ack(record)
        if isinstance(outcome, Split):
            with self._lock:
                for data, flows in reversed(outcome.parts):
                    self._pending.appendleft(_Pending(data, flows))
                    self._buffered_flows += flows
            return Outcome.SENT
        self._report(outcome, item.flows)
        return outcome

    def _send_spooled(self, record: SpoolRecord) -> Outcome:
        assert self._spool is not None
        spool = self._spool
        spool.begin(record)
        outcome = self._attempt(record.payload, record.flows)
        if outcome is Outcome.RETRY:
            spool.release(record)
            return outcome
        if isinstance(outcome, Split):
            # The parts go first, through memory (they are older than the rest of the spool).
            with self._lock:
                for data, flows in reversed(outcome.parts):
                    self._pending.appendleft(_Pending(data, flows))
                    self._buffered_flows += flows
            spool.ack(record)
            return Outcome.SENT
        spool.ack(record)
        self._report(outcome, record.flows)
        return outcome

    def _report(self, outcome: Outcome, flows: int) -> None:
        if outcome is Outcome.SENT:
            self._on_delivered(flows)
            self._problems.recovered("send", logging.INFO, "%s exporter: %s is reachable again",
                                     self.name, self._target)
        else:
            self._on_drop("rejected", flows)
