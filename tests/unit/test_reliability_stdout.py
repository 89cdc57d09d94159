"""The stdout exporter on real descriptors: which write errors are fatal and which are counted.

docs/exporters.md, "stdout": EPIPE ends the agent quietly, ENOSPC/EIO/EBADF... end it with one
line; anything else drops the batch with reason ``error``, is logged (rate-limited), and the next
batch is tried. Each case uses a real pipe or file, never a fake stream.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator

import pytest

from flowkit.accounts import ExporterAccount
from flowkit.components import ExporterFailed
from flowkit.testing import synthetic_flows
from flowkit_plugins.stdout_exporter import FATAL_ERRNOS, StdoutExporter


class _Fd:
    """A raw descriptor as the stream the exporter writes to."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes) -> None:  # pragma: no cover - the exporter uses os.write
        os.write(self.fd, data)

    def flush(self) -> None:  # pragma: no cover
        pass


def _exporter(fd: int) -> tuple[StdoutExporter, ExporterAccount]:
    exporter = StdoutExporter(stream=_Fd(fd))  # type: ignore[arg-type]
    return exporter, exporter._account


@pytest.fixture
def full_nonblocking_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose write end is non-blocking and full: a write fails with EAGAIN."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETFL, fcntl.fcntl(write_fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        while True:
            os.write(write_fd, b"x" * 65536)
    except BlockingIOError:
        pass
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


def _drain(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        while os.read(fd, 1 << 20):
            pass
    except BlockingIOError:
        pass


def test_a_passing_error_drops_the_batch_with_a_count_and_the_next_batch_is_written(
    full_nonblocking_pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    assert errno.EAGAIN not in FATAL_ERRNOS
    read_fd, write_fd = full_nonblocking_pipe
    exporter, account = _exporter(write_fd)
    with caplog.at_level(logging.INFO, logger="flowkit_plugins.stdout_exporter"):
        exporter.export(synthetic_flows(n_flows=5))  # EAGAIN: not fatal
        exporter.export(synthetic_flows(n_flows=3))  # again: counted, not logged again
        _drain(read_fd)
        exporter.export(synthetic_flows(n_flows=4))
    assert account.exported == 4
    assert account.dropped_by_reason() == {"error": 8}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited
    assert "cannot write 5 flows" in errors[0].getMessage()
    assert any("writing again" in r.getMessage() for r in caplog.records)


def test_a_full_disk_is_fatal_and_every_later_flow_is_counted() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        exporter, account = _exporter(fd)
        with pytest.raises(ExporterFailed, match=r"No space left on device \(ENOSPC\)"):
            exporter.export(synthetic_flows(n_flows=5))
        exporter.export(synthetic_flows(n_flows=2))  # after the failure: counted, not written
    finally:
        os.close(fd)
    assert account.exported == 0
    assert account.dropped_by_reason() == {"error": 7}


def test_a_closed_reader_is_a_quiet_stop() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        exporter, account = _exporter(write_fd)
        with pytest.raises(ExporterFailed) as failed:
            exporter.export(synthetic_flows(n_flows=3))
    finally:
        os.close(write_fd)
    assert failed.value.exit_status == 0
    assert account.dropped_by_reason() == {"closed": 3}
