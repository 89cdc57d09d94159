"""Generate ``flowkit/_native.pyi``, the typed stub of the compiled cffi extension, from the cdef.

The stub is what ``mypy --strict`` checks the facade (``flowkit/native/``) against: every
function declared in ``csrc/cdef/*.cdef`` becomes a typed static method of ``lib``, every
``#define`` and enum value an ``int`` attribute. C types map to Python types as cffi converts
them: integers to ``int``, ``bool`` to ``bool``, ``void`` to ``None`` and pointers to cffi's
``CData`` (a ``const`` byte or ``void`` pointer also accepts ``bytes``, as cffi does).

Run after changing a cdef file (tests/unit/test_native_facade.py fails on drift)::

    .venv/bin/python scripts/gen-native-stub.py
"""

from __future__ import annotations

import keyword
import sys
from pathlib import Path

from cffi import cparser
from pycparser import c_ast

ROOT = Path(__file__).resolve().parents[1]
CDEF = ROOT / "csrc" / "cdef"
STUB = ROOT / "flowkit" / "_native.pyi"

_INTEGERS = {
    "char", "signed char", "unsigned char", "short", "unsigned short", "int", "unsigned int",
    "unsigned", "long", "unsigned long", "long long", "unsigned long long", "size_t", "ssize_t",
    "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t", "uint64_t",
    "uintptr_t", "intptr_t",
}
_BYTES_POINTEES = {"char", "void", "uint8_t", "unsigned char"}

HEADER = '''"""Type stub of the compiled cffi extension ``flowkit._native`` (csrc/build_ffi.py).

Generated from csrc/cdef/*.cdef by scripts/gen-native-stub.py: do not edit. Only the facade
(``flowkit/native/``) uses it; see docs/architecture.md.
"""

from typing import Protocol, TypeAlias

from _cffi_backend import FFI

CData: TypeAlias = FFI.CData

ffi: FFI
'''


def cdef_source() -> str:
    """The declarations cffi compiles (same order as csrc/build_ffi.py)."""
    return "\n".join(p.read_text() for p in sorted(CDEF.glob("*.cdef")))


def _type_name(node: c_ast.Node) -> str:
    if isinstance(node, c_ast.TypeDecl):
        return _type_name(node.type)
    if isinstance(node, c_ast.IdentifierType):
        return " ".join(node.names)
    if isinstance(node, c_ast.Struct):
        return f"struct {node.name}"
    if isinstance(node, c_ast.Enum):
        return f"enum {node.name}"
    raise TypeError(f"unsupported C type node {type(node).__name__}")


def _python_type(node: c_ast.Node, *, argument: bool) -> str:
    if isinstance(node, c_ast.PtrDecl):
        target = node.type
        const = isinstance(target, c_ast.TypeDecl) and "const" in target.quals
        if argument and const and _type_name(target) in _BYTES_POINTEES:
            return "CData | bytes"
        return "CData"
    name = _type_name(node)
    if name == "void":
        return "None"
    if name in ("bool", "_Bool"):
        return "bool"
    if name in _INTEGERS or name.startswith("enum "):
        return "int"
    raise TypeError(f"no Python type for C type {name!r}")


def _signature(name: str, args: list[str], result: str) -> str:
    line = f"def {name}({', '.join([*args, '/']) if args else ''}) -> {result}: ..."
    if len(line) + 4 <= 100:
        return line
    inner = "".join(f"        {arg},\n" for arg in [*args, "/"])
    return f"def {name}(\n{inner}    ) -> {result}: ..."


def _field_type(node: c_ast.Node) -> str:
    if isinstance(node, c_ast.ArrayDecl | c_ast.PtrDecl):
        return "CData"
    name = _type_name(node)
    if name.startswith("struct "):
        return f"struct_{name[len('struct '):]}"
    return _python_type(node, argument=False)


def _struct(node: c_ast.Struct) -> list[str]:
    lines = [f"class struct_{node.name}(Protocol):"]
    for field in node.decls or []:
        if field.name is None:
            continue  # cffi's "...;": fields the compiler fills in
        lines.append(f"    {field.name}: {_field_type(field.type)}")
    return lines


def declarations() -> tuple[dict[str, str], list[str], list[str]]:
    """``({function: stub line}, [constant names], [struct stub lines])`` of the cdef files.

    Structs with fields become ``Protocol`` classes named ``struct_<name>``: the facade casts
    what ``ffi.new("struct <name> *")`` returns to them to type its field accesses.
    """
    ast, macros, _ = cparser.Parser()._parse(cdef_source())
    functions: dict[str, str] = {}
    structs: list[str] = []
    constants = list(macros)
    for decl in ast.ext:
        if not isinstance(decl, c_ast.Decl):
            continue
        if isinstance(decl.type, c_ast.FuncDecl):
            params = decl.type.args.params if decl.type.args else []
            args = []
            for i, param in enumerate(params):
                if isinstance(param, c_ast.Typename) and _type_name(param.type) == "void":
                    continue  # f(void)
                name = param.name or f"arg{i}"
                name = f"{name}_" if keyword.iskeyword(name) else name
                args.append(f"{name}: {_python_type(param.type, argument=True)}")
            result = _python_type(decl.type.type, argument=False)
            functions[decl.name] = _signature(decl.name, args, result)
        elif isinstance(decl.type, c_ast.Enum) and decl.type.values is not None:
            constants += [value.name for value in decl.type.values.enumerators]
        elif isinstance(decl.type, c_ast.Struct) and decl.type.decls:
            structs += ["", *_struct(decl.type)]
    return functions, constants, structs


def render() -> str:
    """The stub's text."""
    functions, constants, structs = declarations()
    lines = [*structs, "", "class _Lib:"]
    lines += [f"    {name}: int" for name in sorted(constants)]
    for name in sorted(functions):
        lines += ["    @staticmethod", f"    {functions[name]}"]
    return HEADER + "\n".join(lines) + "\n\nlib: _Lib\n"


def main() -> int:
    """Write the stub (``--check``: exit 1 if the checked-in one differs)."""
    text = render()
    if "--check" in sys.argv[1:]:
        if STUB.read_text() != text:
            print(f"{STUB.relative_to(ROOT)} is out of date: run scripts/gen-native-stub.py")
            return 1
        return 0
    STUB.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
