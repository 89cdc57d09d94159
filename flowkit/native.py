"""The one module that imports the compiled extension ``flowkit._native``.

Everything else in flowkit reaches C through this module: ``ffi`` and ``lib`` for the raw
bindings and :func:`check` to turn libbpf-style negative errno returns into exceptions.
"""

from __future__ import annotations

import errno
import os

try:
    from flowkit._native import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "flowkit's C extension (flowkit._native) is not built: reinstall flowkit with "
        "`pip install .` on a machine with a C compiler and libbpf-dev"
    ) from exc

__all__ = ["NativeError", "check", "ffi", "lib"]


class NativeError(OSError):
    """A native call failed; ``call`` names it and ``errno`` says why."""

    def __init__(self, call: str, err: int, detail: str = "") -> None:
        message = f"{call} failed: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(err, message)
        self.call = call


def check(rc: int, call: str, detail: str = "") -> int:
    """Return ``rc`` when it is >= 0; raise :class:`NativeError` for ``-errno`` returns."""
    if rc < 0:
        raise NativeError(call, -rc, detail)
    return rc

