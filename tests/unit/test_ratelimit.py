"""RateLimitedLog: one line when a problem starts, repeats held back, one line when it ends."""

from __future__ import annotations

import logging

import pytest

from flowkit.ratelimit import RateLimitedLog


def test_a_problem_after_recovery_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("fk.ratelimit.a"), interval=3600)
    with caplog.at_level(logging.INFO, logger="fk.ratelimit.a"):
        limited.emit("send", logging.ERROR, "down %d", 1)
        limited.emit("send", logging.ERROR, "down %d", 2)
        assert limited.recovered("send", logging.INFO, "back")
        limited.emit("send", logging.ERROR, "down %d", 3)

    assert [r.getMessage() for r in caplog.records] == ["down 1", "back", "down 3"]


def test_recovery_without_a_problem_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("fk.ratelimit.b"))
    with caplog.at_level(logging.INFO, logger="fk.ratelimit.b"):
        assert not limited.recovered("send", logging.INFO, "back")

    assert caplog.records == []


def test_held_back_lines_are_counted_in_the_next_one(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("fk.ratelimit.c"), interval=3600)
    with caplog.at_level(logging.INFO, logger="fk.ratelimit.c"):
        limited.emit("full", logging.WARNING, "queue full")
        limited.emit("full", logging.WARNING, "queue full")
        limited.emit("full", logging.WARNING, "queue full")
        limited._interval = 0
        limited.emit("full", logging.WARNING, "queue full")

    assert [r.getMessage() for r in caplog.records] == [
        "queue full",
        "queue full (2 similar messages suppressed)",
    ]
