"""Offline replay: a pcap or pcapng capture through flowkit's eBPF flow program.

``flowkit.replay(path)`` yields the flows of a capture as :class:`~flowkit.model.FlowBatch`
objects, exactly as a live agent would have counted the same frames (the ``replay`` tracer runs
every frame through the same eBPF program with BPF_PROG_TEST_RUN, see
``flowkit_plugins/replay_tracer.py``); flow times are the capture's timestamps.
``flowkit-agent replay FILE`` does the same with the configured exporters.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowkit.model import FlowBatch
from flowkit.pcapfile import CaptureError
from flowkit.plugins import PluginManager

__all__ = ["CaptureError", "replay"]

log = logging.getLogger(__name__)

REPLAY_DEFAULTS = {"tracer": "replay", "listen_interfaces": "none",
                   "cache_active_timeout": "1h", "cache_max_flows": 100_000}
"""Settings :func:`replay` and ``flowkit-agent replay`` use unless told otherwise: one eviction
at the end of the file (replays are timed by the wall clock; CACHE_ACTIVE_TIMEOUT is at most 1h;
a capture with fewer than CACHE_MAX_FLOWS flows gives one record per
flow), no interface informer."""


def replay(path: str | Path, *, plugin_manager: PluginManager | None = None,
           **settings: Any) -> Iterator[FlowBatch]:
    """Yield the flows of the capture at ``path`` (pcap or pcapng).

    Settings are given by name, as for :func:`flowkit.capture` (``cache_max_flows=...``,
    ``replay_direction="egress"``, ``sampling=...``). Each batch owns its memory. A malformed or
    truncated capture raises :class:`~flowkit.pcapfile.CaptureError` (naming the frame) after
    the flows of the frames before it were yielded.
    """
    from flowkit.agent import Agent
    from flowkit.config import AgentConfig
    from flowkit.pipeline import resolve_pipeline

    pm = plugin_manager or PluginManager()
    for key, value in REPLAY_DEFAULTS.items():
        settings.setdefault(key, value)
    settings["replay_file"] = str(path)
    settings.setdefault("export", "stdout")
    config = AgentConfig.load(cli=settings, environ={}, plugin_manager=pm)
    agent = Agent(dataclasses.replace(resolve_pipeline(config, pm), exporters=()))
    # Unbounded: the replay runs as fast as the program does, the caller reads at its pace.
    batches: queue.SimpleQueue[FlowBatch] = queue.SimpleQueue()
    agent.add_batch_listener(lambda batch: batches.put(batch.copy()))
    agent.start()
    try:
        while not agent.stop_requested.wait(0.05) or not batches.empty():
            try:
                yield batches.get(timeout=0.05)
            except queue.Empty:
                continue
        agent.shutdown()
        while not batches.empty():
            yield batches.get_nowait()
    finally:
        agent.shutdown()
    error = getattr(agent.tracer, "error", None)
    if error is not None:
        raise error
