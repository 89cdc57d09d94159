"""Compiling small eBPF C sources with clang (for tests and for users' own programs).

``compile_bpf("prog.c", "prog.o")`` runs ``clang -O2 -g -target bpf`` with the include paths an
eBPF program usually needs on Debian-like systems (the multiarch directory holding
``asm/types.h``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from flowkit.ebpf.errors import LoaderError

__all__ = ["ClangNotFound", "compile_bpf", "find_clang"]


class ClangNotFound(LoaderError):
    """No clang on PATH."""


def find_clang() -> str:
    """The clang executable (``$CLANG`` or ``clang`` on PATH)."""
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        raise ClangNotFound("clang is not installed: install clang to build eBPF objects")
    return clang


def _multiarch_include() -> list[str]:
    try:
        triple = subprocess.run(
            ["gcc", "-dumpmachine"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    path = Path("/usr/include") / triple
    return [f"-I{path}"] if path.is_dir() else []


def compile_bpf(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    debug: bool = True,
    target: str = "bpf",
    extra_args: Sequence[str] = (),
) -> Path:
    """Compile one C file into an eBPF object; raise :class:`LoaderError` with clang's output.

    ``debug=False`` leaves out ``-g`` (no BTF), ``target="bpfeb"`` builds big-endian.
    """
    command = [find_clang(), "-O2", "-target", target, *_multiarch_include()]
    if debug:
        command.append("-g")
    command += [*extra_args, "-c", os.fspath(source), "-o", os.fspath(output)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LoaderError(f"clang failed on {os.fspath(source)}: {result.stderr.strip()}")
    return Path(output)
