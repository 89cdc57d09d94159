"""The ``stdout`` exporter: one NetObserv JSON object per flow per line, flushed per batch."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

from flowkit import hookimpl
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch

log = logging.getLogger(__name__)


class StdoutExporter:
    """Writes JSON lines to a binary stream (standard output by default).

    When the reader goes away (``flowkit-agent | head``), it asks the agent to stop and stays
    quiet: a closed pipe is the reader's way of saying it has enough.
    """

    def __init__(self, context: ComponentContext | None = None, stream: IO[bytes] | None = None):
        # The native extension is imported by the factory, not when plugins are listed.
        from flowkit.encoding import encode_json_lines

        self._encode = encode_json_lines  # C, byte-identical to orjson + flow_to_json_dict
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._context = context
        self._closed = False

    def export(self, batch: FlowBatch) -> None:
        if self._closed:
            return
        lines = self._encode(batch)
        try:
            self._stream.write(lines)
            self._stream.flush()
        except BrokenPipeError:
            self._on_broken_pipe()

    def _on_broken_pipe(self) -> None:
        self._closed = True
        # Point fd 1 at /dev/null so that interpreter exit does not complain about the pipe.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        log.info("standard output was closed by its reader; stopping")
        if self._context is not None:
            self._context.request_stop()

    def flush(self, timeout: float) -> bool:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._on_broken_pipe()
        return True

    def shutdown(self, timeout: float) -> None:
        self.flush(timeout)
        self._closed = True  # the contract: nothing is written after shutdown


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    return [
        ExporterSpec(
            name="stdout",
            factory=StdoutExporter,
            description="JSON lines on standard output (NetObserv keys), one flow per line",
        )
    ]
