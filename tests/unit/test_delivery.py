"""The one buffering and retry rule (flowkit.delivery.Sender), with a scripted peer."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from flowkit.delivery import DROP_REASONS, Outcome, RetryPolicy, Sender, Split
from flowkit.spool import Spool, SpoolConfig

FAST = RetryPolicy(0.01, 0.02)


class Peer:
    """Answers each attempt from a script (then SENT), recording what it accepted."""

    def __init__(self, *script: Outcome | Split) -> None:
        self.script = list(script)
        self.accepted: list[bytes] = []
        self.attempts = 0
        self.lock = threading.Lock()

    def send(self, data: bytes, flows: int) -> Outcome | Split:
        with self.lock:
            self.attempts += 1
            outcome = self.script.pop(0) if self.script else Outcome.SENT
            if outcome is Outcome.SENT:
                self.accepted.append(data)
            return outcome


def sender(peer: Peer, **kwargs: object) -> tuple[Sender, Counter[str], list[int]]:
    drops: Counter[str] = Counter()
    delivered: list[int] = []
    options: dict[str, object] = {"max_buffered_flows": 100, "retry": FAST}
    options.update(kwargs)
    s = Sender("test", peer.send, on_drop=lambda r, n: drops.update({r: n}),
               on_delivered=delivered.append, **options)  # type: ignore[arg-type]
    return s, drops, delivered


def test_transient_failures_are_retried_in_order_until_delivered() -> None:
    peer = Peer(Outcome.RETRY, Outcome.RETRY)
    s, drops, delivered = sender(peer)
    s.offer([(b"a", 1), (b"b", 2), (b"c", 3)])
    assert s.flush(5)
    s.shutdown(1)
    assert peer.accepted == [b"a", b"b", b"c"]
    assert peer.attempts == 5
    assert sum(delivered) == 6
    assert drops == Counter()


def test_a_full_buffer_drops_and_counts_what_does_not_fit() -> None:
    gate = threading.Event()

    def blocked(data: bytes, flows: int) -> Outcome:
        gate.wait(5)
        return Outcome.SENT

    drops: Counter[str] = Counter()
    s = Sender("test", blocked, max_buffered_flows=10, retry=FAST,
               on_drop=lambda r, n: drops.update({r: n}))
    s.offer([(b"a", 6)])
    s.offer([(b"b", 4), (b"c", 5)])
    assert drops == Counter({"buffer_full": 5})
    gate.set()
    assert s.flush(5)
    s.shutdown(1)


def test_a_rejected_payload_is_dropped_with_its_reason_and_the_rest_goes_on() -> None:
    peer = Peer(Outcome.REJECTED)
    s, drops, delivered = sender(peer)
    s.offer([(b"bad", 3), (b"good", 4)])
    assert s.flush(5)
    s.shutdown(1)
    assert peer.accepted == [b"good"]
    assert drops == Counter({"rejected": 3})
    assert delivered == [4]


def test_a_split_payload_is_replaced_by_its_parts_in_place() -> None:
    peer = Peer(Split([(b"a1", 1), (b"a2", 1)]))
    s, _, delivered = sender(peer)
    s.offer([(b"a", 2), (b"b", 1)])
    assert s.flush(5)
    s.shutdown(1)
    assert peer.accepted == [b"a1", b"a2", b"b"]
    assert delivered == [1, 1, 1]


def test_shutdown_interrupts_the_backoff_and_counts_the_rest_as_shutdown() -> None:
    peer = Peer(*[Outcome.RETRY] * 1000)
    s, drops, _ = sender(peer, retry=RetryPolicy(60, 60))
    s.offer([(b"a", 5), (b"b", 7)])
    start = time.monotonic()
    assert s.shutdown(0.5) == 12
    assert time.monotonic() - start < 5
    assert drops == Counter({"shutdown": 12})
    s.offer([(b"late", 2)])
    assert drops == Counter({"shutdown": 14})


def test_an_exception_in_send_is_a_retry_not_a_crash() -> None:
    calls = []

    def flaky(data: bytes, flows: int) -> Outcome:
        calls.append(data)
        if len(calls) == 1:
            raise ConnectionError("peer reset")
        return Outcome.SENT

    s = Sender("test", flaky, max_buffered_flows=10, retry=FAST)
    s.offer([(b"a", 1)])
    assert s.flush(5)
    s.shutdown(1)
    assert calls == [b"a", b"a"]


def test_with_a_spool_an_outage_keeps_everything_and_order(tmp_path: Path) -> None:
    spool = Spool(SpoolConfig(tmp_path, 1 << 20, 1 << 16, "never"))
    down = threading.Event()
    down.set()
    accepted: list[bytes] = []

    def send(data: bytes, flows: int) -> Outcome:
        if down.is_set():
            return Outcome.RETRY
        accepted.append(data)
        return Outcome.SENT

    drops: Counter[str] = Counter()
    s = Sender("test", send, max_buffered_flows=2, retry=FAST, spool=spool,
               on_drop=lambda r, n: drops.update({r: n}))
    payloads = [(bytes([i]), 1) for i in range(10)]
    for payload in payloads:
        s.offer([payload])
    deadline = time.monotonic() + 5
    while s.buffered_flows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.spooled_flows() + s.buffered_flows == 10
    down.clear()
    assert s.flush(5)
    s.shutdown(1)
    assert accepted == [p for p, _ in payloads]
    assert drops == Counter()


def test_retry_policy_is_capped_jittered_exponential() -> None:
    policy = RetryPolicy(1, 8)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (60, 8.0)]:
        waits = {policy.delay(attempt) for _ in range(100)}
        assert all(step / 2 <= w <= step for w in waits)
        assert len(waits) > 1


def test_every_drop_reason_is_described() -> None:
    assert {"queue_full", "buffer_full", "rejected", "shutdown", "error",
            "spool_full"} <= set(DROP_REASONS)
    assert all(DROP_REASONS.values())


@pytest.mark.parametrize("outcome", [Outcome.SENT, Outcome.REJECTED])
def test_outcomes_other_than_retry_never_back_off(outcome: Outcome) -> None:
    peer = Peer(*[outcome] * 50)
    s, _, _ = sender(peer, retry=RetryPolicy(60, 60))
    s.offer([(bytes([i]), 1) for i in range(50)])
    assert s.flush(5)
    s.shutdown(1)
