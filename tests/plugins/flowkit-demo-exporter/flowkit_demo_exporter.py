"""A third-party flowkit exporter, as a plugin author would write it.

It registers the exporter ``demo`` through the ``flowkit`` entry-point group and has one setting
of its own, ``demo_output`` (environment ``DEMO_OUTPUT``, flag ``--demo-output``, YAML key
``demo_output``): the file every flow is appended to, as one JSON object per line.
"""

from __future__ import annotations

import json
from typing import IO

from pydantic import BaseModel, Field

from flowkit import hookimpl
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch


class DemoSettings(BaseModel):
    """Settings of the ``demo`` exporter."""

    demo_output: str = Field(min_length=1, description="File the demo exporter appends flows to.")


class DemoExporter:
    """Appends every flow to ``DEMO_OUTPUT`` as a JSON line, flushed after each batch."""

    def __init__(self, settings: DemoSettings) -> None:
        self._file: IO[str] = open(settings.demo_output, "a")

    def export(self, batch: FlowBatch) -> None:
        for flow in batch.to_dicts():
            self._file.write(json.dumps(flow) + "\n")
        self._file.flush()

    def flush(self, timeout: float) -> bool:
        self._file.flush()
        return True

    def shutdown(self, timeout: float) -> None:
        self._file.close()


def _make(context: ComponentContext) -> DemoExporter:
    return DemoExporter(context.settings)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    return [
        ExporterSpec(
            name="demo",
            factory=_make,
            settings_model=DemoSettings,
            description="Test plugin: JSON lines appended to DEMO_OUTPUT",
        )
    ]
