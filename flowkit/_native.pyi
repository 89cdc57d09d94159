"""Type stub for the compiled cffi extension ``flowkit._native`` (built by csrc/build_ffi.py).

Only :mod:`flowkit.native` imports it. ``ffi`` is the cffi ``FFI`` instance holding the
declarations of ``csrc/cdef/*.cdef``; ``lib`` exposes their functions, constants and enum
values. Both are typed ``Any``: the C signatures are the reference (see the cdef files).
"""

from typing import Any

ffi: Any
lib: Any
