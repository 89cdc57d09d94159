"""The flowkit hook specifications (pluggy project ``flowkit``).

Each hook returns a list of component specs; the :class:`flowkit.plugins.PluginManager` flattens,
validates and resolves them by the names users configure. None of these hooks is
``firstresult``: every plugin contributes. Specs evolve by adding arguments only.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from flowkit.components import AccounterSpec, ExporterSpec, InformerSpec, TracerSpec

PROJECT_NAME = "flowkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def flowkit_informers() -> Sequence[InformerSpec]:
    """Provide interface informers, selected with ``LISTEN_INTERFACES``.

    :return: specs whose factory takes a :class:`~flowkit.components.ComponentContext` and returns
        an :class:`~flowkit.components.Informer`.

    Example::

        @hookimpl
        def flowkit_informers():
            return [InformerSpec(name="static", factory=lambda ctx: StaticInformer())]
    """
    raise NotImplementedError


@hookspec
def flowkit_tracers() -> Sequence[TracerSpec]:
    """Provide flow tracers, selected with ``TRACER``.

    :return: specs whose factory takes a :class:`~flowkit.components.ComponentContext` and returns
        a :class:`~flowkit.components.Tracer`.

    Example::

        @hookimpl
        def flowkit_tracers():
            return [TracerSpec(name="pcap", factory=PcapTracer, settings_model=PcapSettings)]
    """
    raise NotImplementedError


@hookspec
def flowkit_accounters() -> Sequence[AccounterSpec]:
    """Provide accounters, selected with ``ACCOUNTER``.

    :return: specs whose factory takes a :class:`~flowkit.components.ComponentContext` (with
        ``context.tracer`` set) and returns an :class:`~flowkit.components.Accounter`.

    Example::

        @hookimpl
        def flowkit_accounters():
            return [AccounterSpec(name="sampling", factory=SamplingAccounter)]
    """
    raise NotImplementedError


@hookspec
def flowkit_exporters() -> Sequence[ExporterSpec]:
    """Provide exporters, selected with ``EXPORT`` (a comma-separated list).

    :return: specs whose factory takes a :class:`~flowkit.components.ComponentContext` and returns
        an :class:`~flowkit.components.Exporter`.

    Example::

        @hookimpl
        def flowkit_exporters():
            return [ExporterSpec(name="csv", factory=CsvExporter, settings_model=CsvSettings)]
    """
    raise NotImplementedError
