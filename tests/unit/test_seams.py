"""The core's seams as issue 9 left them: complete component protocols (the libbpf log hook
not installed at import is tests/unit/test_native_facade.py's)."""

from __future__ import annotations

import inspect
import typing

import pytest

from flowkit.components import Accounter, Tracer
from flowkit_plugins.ebpf_tracer import EbpfTracer
from flowkit_plugins.native_accounter import NativeAccounter
from flowkit_plugins.python_accounter import PythonAccounter
from flowkit_plugins.replay_tracer import ReplayTracer
from flowkit_plugins.synthetic_tracer import SyntheticTracer


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")
            and (callable(vars(protocol)[name]) or isinstance(vars(protocol)[name], property))}


@pytest.mark.parametrize("tracer", [EbpfTracer, ReplayTracer, SyntheticTracer])
def test_every_built_in_tracer_implements_the_whole_tracer_protocol(tracer: type) -> None:
    members = _members(Tracer)
    assert {"interface_names", "kernel_maps"} <= members  # part of the contract, not extras
    assert members <= set(dir(tracer)), members - set(dir(tracer))
    assert isinstance(vars(tracer)["kernel_maps"], property)


@pytest.mark.parametrize("accounter", [NativeAccounter, PythonAccounter])
def test_both_accounters_implement_the_protocol_with_one_add_records_type(
    accounter: type,
) -> None:
    assert _members(Accounter) <= set(dir(accounter))
    hints = typing.get_type_hints(accounter.add_records)
    assert hints["return"] == typing.get_type_hints(NativeAccounter.add_records)["return"]
    assert list(inspect.signature(accounter.add_records).parameters) == ["self", "records"]

