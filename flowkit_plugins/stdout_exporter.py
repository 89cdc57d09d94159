"""The ``stdout`` exporter: one NetObserv JSON object per flow per line, written per batch.

Write errors (docs/exporters.md, "stdout"):

- ``EPIPE``: the reader went away (``flowkit-agent | head``). The agent stops quietly, exit 0.
- ``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EIO``, ``EBADF`` (a full disk, a closed or broken
  descriptor): no later write can succeed; one error line, the agent stops, exit 1.
- Anything else: the batch is dropped and counted (``reason="error"``), logged at most every
  30 s, and the next batch is tried.

Flows are counted as exported once the kernel accepted the whole batch; flows that were not
written are counted as dropped with a reason.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import sys
from collections.abc import Iterator
from typing import IO

from flowkit import hookimpl
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterFailed, ExporterSpec
from flowkit.model import FlowBatch
from flowkit.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF})
"""Write errors after which standard output can never take flows again."""


_CHUNK_BYTES = select.PIPE_BUF


def _line_chunks(data: bytes) -> Iterator[tuple[bytes, int]]:
    """``data`` (JSON lines) cut into chunks of whole lines of at most PIPE_BUF bytes (a longer
    line is a chunk of its own), with the number of lines in each."""
    start, end = 0, len(data)
    while start < end:
        stop = data.rfind(b"\n", start, start + _CHUNK_BYTES) + 1
        if stop <= start:  # one line longer than PIPE_BUF
            stop = data.find(b"\n", start) + 1 or end
        yield data[start:stop], data.count(b"\n", start, stop)
        start = stop


class StdoutExporter:
    """Writes JSON lines to a file descriptor (standard output by default).

    Writes go straight to the descriptor with ``os.write`` (no Python buffer), so a reader that
    stops reading blocks only this exporter's thread, and the interpreter never has a pending
    buffer to flush at exit.
    """

    accounts_delivery = True

    def __init__(self, context: ComponentContext | None = None, stream: IO[bytes] | None = None):
        # The native extension is imported by the factory, not when plugins are listed.
        from flowkit.encoding import encode_json_lines

        self._encode = encode_json_lines  # C, byte-identical to orjson + flow_to_json_dict
        self._stream = stream
        self._fd: int | None = None
        self._context = context
        account = context.account if context is not None else None
        self._account = account if account is not None else ExporterAccount("stdout")
        self._closed: ExporterFailed | None = None
        self._problems = RateLimitedLog(log)
        self._descriptor()  # standard output closed at start: fail now, with one line

    def _descriptor(self) -> int | None:
        """File descriptor to write to; None for a given stream without one (an in-memory
        stream in a test), which is then written through its ``write``."""
        if self._fd is None:
            stream = self._stream
            if stream is None:
                if sys.stdout is None:
                    raise ExporterFailed("standard output is closed", reason="closed")
                try:
                    self._fd = sys.stdout.buffer.fileno()
                except (OSError, ValueError, AttributeError) as exc:
                    raise ExporterFailed(f"standard output is not usable: {exc}",
                                         reason="closed") from None
            else:
                try:
                    self._fd = stream.fileno()
                except (OSError, ValueError, AttributeError):
                    return None
        return self._fd

    def export(self, batch: FlowBatch) -> None:
        flows = len(batch)
        if self._closed is not None:
            self._account.dropped(flows, self._closed.reason)
            return
        data = self._encode(batch)
        written_lines = 0
        try:
            fd = self._descriptor()
            # Chunks of whole lines of at most PIPE_BUF bytes: the kernel writes each one to a
            # pipe entirely or not at all, so a flow counts as exported exactly when its line
            # is out, even if the reader stops reading and the agent gives up at the deadline.
            for chunk, lines in _line_chunks(data):
                if fd is None:
                    assert self._stream is not None
                    self._stream.write(chunk)
                    self._stream.flush()
                else:
                    view = memoryview(chunk)
                    while view:
                        done = os.write(fd, view)
                        view = view[done:]
                self._account.delivered(lines)
                written_lines += lines
        except ExporterFailed as exc:
            self._fail(flows - written_lines, exc)
        except BrokenPipeError:
            self._on_broken_pipe(flows - written_lines)
        except OSError as exc:
            left = flows - written_lines
            if exc.errno in FATAL_ERRNOS:
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self._fail(left, ExporterFailed(
                    f"cannot write to standard output: {exc.strerror} ({name})", reason="error"))
            self._account.dropped(left, "error")
            self._problems.emit("write", logging.ERROR,
                                "stdout: cannot write %d flows: %s", left, exc.strerror)
        else:
            self._problems.recovered("write", logging.INFO, "stdout: writing again")

    def _fail(self, flows: int, exc: ExporterFailed) -> None:
        self._closed = exc
        self._account.dropped(flows, exc.reason)
        raise exc

    def _on_broken_pipe(self, flows: int) -> None:
        # Point the descriptor at /dev/null so that interpreter exit does not complain.
        try:
            fd = self._descriptor()
            if fd is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
        except (OSError, ValueError, ExporterFailed):
            pass
        self._fail(flows, ExporterFailed("standard output was closed by its reader",
                                         reason="closed", exit_status=0))

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        # The contract: nothing is written after shutdown (later batches count as dropped).
        if self._closed is None:
            self._closed = ExporterFailed("the exporter is shut down", reason="shutdown",
                                          exit_status=0)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    return [
        ExporterSpec(
            name="stdout",
            factory=StdoutExporter,
            description="JSON lines on standard output (NetObserv keys), one flow per line",
        )
    ]
