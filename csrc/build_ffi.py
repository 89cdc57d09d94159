"""Build script for ``flowkit._native`` (cffi API mode).

Standalone on purpose: cffi executes this file at build time, before flowkit is importable.
The extension is assembled from three folders, so that independent parts (libbpf bindings,
the accounter) live in their own files:

- ``csrc/cdef/*.cdef``: declarations exposed to Python, concatenated in name order;
- ``csrc/include/*.h``: headers included by the generated C source, in name order;
- ``csrc/native/*.c``: C sources compiled into the extension.

libbpf is found through pkg-config, with ``-lbpf`` as the fallback.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _pkg_config(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(
            ["pkg-config", *args, "libbpf"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def _flags() -> tuple[list[str], list[str], list[str]]:
    cflags = _pkg_config("--cflags") or []
    libs = _pkg_config("--libs") or ["-lbpf"]
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    libraries = [f[2:] for f in libs if f.startswith("-l")] or ["bpf"]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    return include_dirs, libraries, library_dirs


ffibuilder = FFI()
ffibuilder.cdef("\n".join(p.read_text() for p in sorted((HERE / "cdef").glob("*.cdef"))))

_include_dirs, _libraries, _library_dirs = _flags()
ffibuilder.set_source(
    "flowkit._native",
    "\n".join(f'#include "{p.name}"' for p in sorted((HERE / "include").glob("*.h"))),
    sources=[str(p.relative_to(HERE.parent)) for p in sorted((HERE / "native").glob("*.c"))],
    include_dirs=[str(HERE), str(HERE / "include"), *_include_dirs],
    libraries=_libraries,
    library_dirs=_library_dirs,
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function", "-std=gnu11"],
)

if __name__ == "__main__":
    # `python csrc/build_ffi.py` builds flowkit/_native*.so in place (used by `make native`).
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)
