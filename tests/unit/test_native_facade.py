"""The C boundary is typed (STYLE.md §11, §25): the stub follows the cdef, and only the facade
(``flowkit/native/``) touches cffi's ``ffi``/``lib``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from flowkit.native._lib import ffi, lib

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_native_stub",
                                                  ROOT / "scripts" / "gen-native-stub.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_native_stub_matches_the_cdef() -> None:
    assert (ROOT / "flowkit" / "_native.pyi").read_text() == _generator().render(), (
        "flowkit/_native.pyi is out of date: run .venv/bin/python scripts/gen-native-stub.py"
    )


def test_stub_declares_exactly_the_functions_and_constants_of_the_built_extension() -> None:
    functions, constants, _ = _generator().declarations()
    built = {name for name in dir(lib) if not name.startswith("_")}
    built_functions = {name for name in built if callable(getattr(lib, name))}
    assert built_functions == set(functions)
    assert built - built_functions == set(constants)


def test_stub_argument_counts_match_the_built_extension() -> None:
    functions, _, _ = _generator().declarations()
    for name, line in functions.items():
        declared = line.count(":") - 1  # one per argument, one before the result's "..."
        assert declared == len(ffi.typeof(getattr(lib, name)).args), name
