"""The one module that imports the compiled extension ``flowkit._native``.

Only the facade modules beside this one (``flowkit/native/*.py``) use ``ffi`` and ``lib``; they
are typed by ``flowkit/_native.pyi``, generated from the cdef. Helpers shared by the facade:
errno checks that name the failing call, the NULL-plus-``int *err`` constructor pattern,
owned pointers, and typed buffers.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

try:
    from flowkit._native import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "flowkit's C extension (flowkit._native) is not built: reinstall flowkit with "
        "`pip install .` on a machine with a C compiler and libbpf-dev"
    ) from exc

if TYPE_CHECKING:
    from flowkit._native import CData
else:
    CData = Any

__all__ = [
    "NULL",
    "CData",
    "NativeError",
    "OwnedPointer",
    "array_pointer",
    "check",
    "copy_out",
    "ffi",
    "lib",
    "new_or_raise",
    "uninitialised_bytes",
]

NULL: CData = ffi.NULL


class NativeError(OSError):
    """A native call failed; ``call`` names it and ``errno`` says why."""

    errno: int

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


def new_or_raise(
    call: str, constructor: Callable[..., CData], *args: Any, detail: str = "",
    default_errno: int = errno.ENOMEM,
) -> CData:
    """Call a C constructor whose last argument is ``int *err`` and that returns NULL on failure.

    Raises :class:`NativeError` naming ``call`` with ``-*err`` (``default_errno`` when the
    constructor left it unset).
    """
    err = ffi.new("int *")
    pointer = constructor(*args, err)
    if pointer == NULL:
        code = -int(err[0])
        raise NativeError(call, code if code > 0 else default_errno, detail)
    return pointer


class OwnedPointer:
    """A C object freed by ``destructor`` on :meth:`close` or when garbage-collected.

    ``pointer`` raises once closed, so a use-after-close is a Python error, not a crash.
    """

    __slots__ = ("_pointer", "_what")

    def __init__(self, pointer: CData, destructor: Callable[[CData], None], what: str) -> None:
        self._pointer: CData | None = ffi.gc(pointer, destructor)
        self._what = what

    @property
    def pointer(self) -> CData:
        """The C pointer (``ValueError`` after :meth:`close`)."""
        pointer = self._pointer
        if pointer is None:
            raise ValueError(f"this {self._what} is closed")
        return pointer

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._pointer is None

    def close(self) -> None:
        """Free the C object now. Idempotent."""
        pointer, self._pointer = self._pointer, None
        if pointer is not None:
            ffi.release(pointer)


# The output buffers of encoders and evictions are overwritten before they are read: no need for
# cffi to zero them first.
_alloc_uninitialised = ffi.new_allocator(should_clear_after_alloc=False)


def uninitialised_bytes(capacity: int) -> CData:
    """A C ``uint8_t[capacity]`` that is not zeroed (for outputs the C side fills)."""
    return _alloc_uninitialised("uint8_t[]", capacity)


def copy_out(buffer: CData, length: int) -> bytes:
    """The first ``length`` bytes of a C buffer, copied into ``bytes``."""
    data: bytes = ffi.buffer(buffer, length)[:]
    return data


def array_pointer(
    ctype: str, array: npt.NDArray[Any] | bytes, *, writable: bool = False
) -> CData:
    """A C pointer (``ctype``, e.g. ``"uint64_t[]"``) into a contiguous array, without copying.

    The array must outlive every use of the pointer.
    """
    # numpy's stubs declare the buffer protocol for Python >= 3.12 only.
    source: Any = array
    if writable:
        if not isinstance(array, np.ndarray):
            raise TypeError("a writable C view needs a numpy array")
        return ffi.from_buffer(ctype, source, require_writable=True)
    return ffi.from_buffer(ctype, source)
