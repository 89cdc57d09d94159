"""A plugin that clashes with flowkit's own ``stdout`` exporter, on request only.

The test suite installs it next to flowkit to check that a duplicate component name is reported
with both distributions named. So that installing it does not break every other test (or a
developer's agent), it provides its exporter only while ``FLOWKIT_TEST_DUPLICATE=1`` is set in
the environment; otherwise its hook returns nothing.
"""

from __future__ import annotations

import os

from flowkit import hookimpl
from flowkit.components import ComponentContext, ExporterSpec

ENABLE_ENV = "FLOWKIT_TEST_DUPLICATE"


class _NullExporter:
    def export(self, batch: object) -> None:
        """Discard the batch."""

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        """Nothing to release."""


def _make(context: ComponentContext) -> _NullExporter:
    return _NullExporter()


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    if os.environ.get(ENABLE_ENV) != "1":
        return []
    return [ExporterSpec(name="stdout", factory=_make, description="Test plugin: a clash")]
