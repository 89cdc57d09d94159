"""A third-party exporter (distribution ``acme-sink``) that makes, on request, the mistakes
plugin authors make, so that the tests can check what flowkit says about each.

``ACME_SINK_MODE`` (read when the module is imported) picks the behaviour:

- unset: a working exporter ``acme`` writing JSON lines to ``ACME_PATH``; its factory raises
  ``ValueError`` when the directory of ``ACME_PATH`` does not exist (a bad setting) and
  ``RuntimeError`` when ``ACME_FAIL_START=1`` (a runtime failure);
- ``misspelled``: the hook is spelled ``flowkit_exporter``;
- ``single``: the hook returns one spec instead of a list;
- ``missing``: the exporter requires a module that is not installed (extra ``fast``).
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from pydantic import BaseModel, Field

from flowkit import hookimpl
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch

MODE = os.environ.get("ACME_SINK_MODE", "")


class AcmeSettings(BaseModel):
    acme_path: str = Field(description="File the acme exporter appends flows to.")


class AcmeExporter:
    def __init__(self, context: ComponentContext) -> None:
        path = Path(context.settings.acme_path)
        if not path.parent.is_dir():
            raise ValueError(f"ACME_PATH: directory {path.parent} does not exist")
        if os.environ.get("ACME_FAIL_START") == "1":
            raise RuntimeError("acme handshake refused")
        self.file = path.open("ab")

    def export(self, batch: FlowBatch) -> None:
        self.file.write(b"".join(orjson.dumps(d) + b"\n" for d in batch.to_dicts()))

    def flush(self, timeout: float) -> bool:
        self.file.flush()
        return True

    def shutdown(self, timeout: float) -> None:
        self.file.close()


def _spec() -> ExporterSpec:
    if MODE == "missing":
        return ExporterSpec(name="acme", factory=AcmeExporter, settings_model=AcmeSettings,
                            requires=("acme_sink_fast_encoder",), extra="fast",
                            description="Test plugin: needs an extra")
    return ExporterSpec(name="acme", factory=AcmeExporter, settings_model=AcmeSettings,
                        description="Test plugin: JSON lines appended to ACME_PATH")


if MODE == "misspelled":

    @hookimpl
    def flowkit_exporter() -> list[ExporterSpec]:
        return [_spec()]

elif MODE == "single":

    @hookimpl
    def flowkit_exporters() -> ExporterSpec:  # type: ignore[misc]
        return _spec()

else:

    @hookimpl
    def flowkit_exporters() -> list[ExporterSpec]:
        return [_spec()]
