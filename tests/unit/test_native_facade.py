"""The C boundary is typed (STYLE.md §11, §25): the stub follows the cdef, and only the facade
(``flowkit/native/``) touches cffi's ``ffi``/``lib``."""

from __future__ import annotations

import ast
import errno
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flowkit.native import NativeError
from flowkit.native._lib import ffi, lib
from flowkit.native.flows import Drainer, Table, counter_sum

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


# -- who touches the C boundary ----------------------------------------------------------------

FACADE = ROOT / "flowkit" / "native"
ONE_IMPORTER = FACADE / "_lib.py"
SCANNED = [ROOT / "flowkit", ROOT / "flowkit_plugins", ROOT / "bench"]


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING", "typing.TYPE_CHECKING"
        ):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _boundary_uses(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """``(line, what, type-only)`` for each import of the compiled module or of cffi, each
    import of ``ffi``/``lib`` or of ``flowkit.native._lib``, and each use of a name ``ffi`` or
    ``lib``."""
    typing_only = _type_checking_only(tree)
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            if (module in ("flowkit._native", "flowkit.native._lib", "cffi", "_cffi_backend")
                    or module.startswith(("cffi.", "flowkit._native."))
                    or (module.startswith("flowkit.native") and module.endswith((".ffi", ".lib")))):
                found.append((node.lineno, f"imports {module}", id(node) in typing_only))
        if isinstance(node, ast.Name) and node.id in ("ffi", "lib"):
            found.append((node.lineno, f"uses {node.id}", False))
    return found


def test_only_the_facade_touches_ffi_and_lib() -> None:
    offenders = []
    for top in SCANNED:
        for path in sorted(top.rglob("*.py")):
            if path.is_relative_to(FACADE):
                continue
            for line, what, _ in _boundary_uses(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line} {what}")
    assert offenders == [], "go through flowkit.native's typed functions instead"


def test_exactly_one_module_imports_the_compiled_extension() -> None:
    importers = set()
    for top in SCANNED:
        for path in sorted(top.rglob("*.py")):
            for _, what, type_only in _boundary_uses(ast.parse(path.read_text(), str(path))):
                if what.startswith("imports flowkit._native") and not type_only:
                    importers.add(path)
    assert importers == {ONE_IMPORTER}


def test_the_boundary_check_sees_every_form() -> None:
    source = (
        "import flowkit._native\n"
        "from flowkit.native._lib import ffi\n"
        "from flowkit.native import lib\n"
        "def f():\n    return ffi.new('int *'), lib.fk_possible_cpus()\n"
        "if TYPE_CHECKING:\n    from flowkit._native import CData\n"
    )
    found = [(line, what, typing) for line, what, typing in _boundary_uses(ast.parse(source))]
    assert (1, "imports flowkit._native", False) in found
    assert (2, "imports flowkit.native._lib", False) in found
    assert (3, "imports flowkit.native.lib", False) in found
    assert (5, "uses ffi", False) in found
    assert (5, "uses lib", False) in found
    assert (7, "imports flowkit._native", True) in found


# -- the facade's behaviour ----------------------------------------------------------------------


def test_a_failing_constructor_raises_native_error_naming_the_c_call() -> None:
    with pytest.raises(NativeError, match=r"fk_drainer_new failed: .* \(errno EBADF") as info:
        Drainer(-1, -1, -1, 1, 16)
    assert info.value.call == "fk_drainer_new"
    assert info.value.errno in (errno.EBADF, errno.EBADFD)


def test_a_negative_errno_return_raises_native_error_naming_the_c_call() -> None:
    with pytest.raises(NativeError, match=r"bpf_map_lookup_elem failed: .*: counters\[3\]$"):
        counter_sum(-1, 3, 1)


def test_a_closed_handle_raises_instead_of_touching_freed_memory() -> None:
    table = Table(16)
    table.close()
    table.close()  # idempotent
    assert len(table) == 0
    with pytest.raises(ValueError, match="this FlowTable is closed"):
        table.clear()


def test_importing_the_loader_leaves_libbpfs_log_alone() -> None:
    code = (
        "import flowkit.ebpf.loader, flowkit_plugins.ebpf_tracer, flowkit.native.libbpf as n\n"
        "print(n._log_handler is None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "True"
