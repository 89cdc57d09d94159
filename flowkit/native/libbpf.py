"""Typed calls into libbpf (csrc/cdef/10-libbpf.cdef): objects, programs, maps, map syscalls.

:class:`BpfObject` owns a ``struct bpf_object`` opened from memory; :class:`BpfProgram` and
:class:`BpfMap` are views into it, valid while it is open. The ``map_*`` and ``prog_*``
functions are the syscall wrappers, on file descriptors. Failures raise
:class:`~flowkit.native.NativeError` naming the libbpf call.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy.typing as npt

from flowkit.native._lib import NULL, CData, NativeError, array_pointer, check, ffi, lib

if TYPE_CHECKING:
    from flowkit._native import (
        struct_bpf_map_batch_opts,
        struct_bpf_map_create_opts,
        struct_bpf_map_info,
        struct_bpf_object_open_opts,
        struct_bpf_prog_info,
        struct_bpf_test_run_opts,
    )

__all__ = [
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "MapInfo",
    "ProgInfo",
    "TestRun",
    "map_create",
    "map_delete",
    "map_lookup",
    "map_lookup_and_delete_batch",
    "map_next_key",
    "map_update",
    "map_update_batch",
    "num_possible_cpus",
    "prog_test_run",
    "route_log_to_python",
]


def _text(pointer: CData) -> str:
    raw = ffi.string(pointer)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


# -- libbpf's log -----------------------------------------------------------------------------

_log_handler: Callable[[int, str], None] | None = None


@ffi.def_extern()
def fkl_libbpf_log(level: int, message: CData) -> None:
    """Receives every formatted libbpf message (called from C)."""
    handler = _log_handler
    if handler is not None:
        handler(level, _text(message).rstrip("\n"))


def route_log_to_python(handler: Callable[[int, str], None]) -> None:
    """Send libbpf's messages (``level``: 0 warn, 1 info, 2 debug) to ``handler``.

    Process-wide libbpf state: the caller decides when (the loader does it on first load).
    """
    global _log_handler
    _log_handler = handler
    lib.fkl_libbpf_route_log_to_python()


def num_possible_cpus() -> int:
    """CPUs a per-CPU map has values for."""
    return check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# -- objects ----------------------------------------------------------------------------------


class BpfProgram:
    """A ``struct bpf_program`` of an open :class:`BpfObject`."""

    __slots__ = ("_object", "_pointer")

    def __init__(self, owner: BpfObject, pointer: CData) -> None:
        self._object = owner
        self._pointer = pointer

    @property
    def name(self) -> str:
        return _text(lib.bpf_program__name(self._pointer))

    @property
    def fd(self) -> int:
        """The loaded program's fd (owned by the object; negative before load)."""
        return lib.bpf_program__fd(self._pointer)

    def set_autoload(self, autoload: bool) -> None:
        check(lib.bpf_program__set_autoload(self._pointer, autoload),
              "bpf_program__set_autoload", self.name)

    @property
    def prog_type(self) -> int:
        return lib.fkl_program_type(self._pointer)

    def set_prog_type(self, prog_type: int) -> None:
        check(lib.fkl_program_set_type(self._pointer, prog_type), "bpf_program__set_type",
              self.name)

    @property
    def expected_attach_type(self) -> int:
        return lib.fkl_program_expected_attach_type(self._pointer)

    def set_expected_attach_type(self, attach_type: int) -> None:
        check(lib.fkl_program_set_expected_attach_type(self._pointer, attach_type),
              "bpf_program__set_expected_attach_type", self.name)

    @property
    def flags(self) -> int:
        return lib.bpf_program__flags(self._pointer)

    def set_flags(self, flags: int) -> None:
        check(lib.bpf_program__set_flags(self._pointer, flags), "bpf_program__set_flags",
              self.name)

    def set_log_level(self, level: int) -> None:
        check(lib.bpf_program__set_log_level(self._pointer, level),
              "bpf_program__set_log_level", self.name)


class BpfMap:
    """A ``struct bpf_map`` of an open :class:`BpfObject` (libbpf's view, before and after
    load)."""

    __slots__ = ("_object", "_pointer")

    def __init__(self, owner: BpfObject, pointer: CData) -> None:
        self._object = owner
        self._pointer = pointer

    @property
    def address(self) -> int:
        """Identity of the libbpf map (equal for two views of the same map)."""
        return int(ffi.cast("uintptr_t", self._pointer))

    @property
    def name(self) -> str:
        return _text(lib.bpf_map__name(self._pointer))

    @property
    def fd(self) -> int:
        return lib.bpf_map__fd(self._pointer)

    @property
    def map_type(self) -> int:
        return lib.fkl_map_type(self._pointer)

    @property
    def key_size(self) -> int:
        return lib.bpf_map__key_size(self._pointer)

    @property
    def value_size(self) -> int:
        return lib.bpf_map__value_size(self._pointer)

    @property
    def max_entries(self) -> int:
        return lib.bpf_map__max_entries(self._pointer)

    def set_max_entries(self, max_entries: int) -> None:
        check(lib.bpf_map__set_max_entries(self._pointer, max_entries),
              "bpf_map__set_max_entries", self.name)

    @property
    def map_flags(self) -> int:
        return lib.bpf_map__map_flags(self._pointer)

    def set_initial_value(self, data: bytes, what: str) -> None:
        check(lib.bpf_map__set_initial_value(self._pointer, data, len(data)),
              "bpf_map__set_initial_value", what)

    def inner_map(self) -> BpfMap | None:
        """The inner map template of a map-in-map, if any."""
        inner = lib.bpf_map__inner_map(self._pointer)
        return None if inner == NULL else BpfMap(self._object, inner)

    def set_inner_map_fd(self, fd: int, what: str) -> None:
        check(lib.bpf_map__set_inner_map_fd(self._pointer, fd), "bpf_map__set_inner_map_fd",
              what)


class BpfObject:
    """A ``struct bpf_object`` opened from an ELF image in memory; :meth:`close` frees it."""

    __slots__ = ("__weakref__", "_image", "_name", "_pointer")

    def __init__(self, image: bytes, name: str) -> None:
        """``bpf_object__open_mem``; raises :class:`NativeError` with libbpf's errno."""
        # libbpf keeps pointers into both for the object's life.
        self._image = ffi.new("char[]", image)
        self._name = ffi.new("char[]", name.encode())
        opts = cast("struct_bpf_object_open_opts", ffi.new("struct bpf_object_open_opts *"))
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        opts.object_name = self._name
        pointer = lib.bpf_object__open_mem(self._image, len(image), cast(CData, opts))
        if pointer == NULL:
            raise NativeError("bpf_object__open_mem", ffi.errno or errno.EINVAL)
        self._pointer: CData | None = pointer

    @property
    def pointer(self) -> CData:
        if self._pointer is None:
            raise ValueError("this BPF object is closed")
        return self._pointer

    def load(self) -> None:
        """``bpf_object__load``: create the maps and load the programs."""
        check(lib.bpf_object__load(self.pointer), "bpf_object__load")

    def close(self) -> None:
        """``bpf_object__close``: free everything (fds included). Idempotent."""
        pointer, self._pointer = self._pointer, None
        if pointer is not None:
            lib.bpf_object__close(pointer)

    def find_program(self, name: str) -> BpfProgram | None:
        found = lib.bpf_object__find_program_by_name(self.pointer, name.encode())
        return None if found == NULL else BpfProgram(self, found)

    def find_map(self, name: str) -> BpfMap | None:
        found = lib.bpf_object__find_map_by_name(self.pointer, name.encode())
        return None if found == NULL else BpfMap(self, found)

    def maps(self) -> Iterator[BpfMap]:
        """Every map, in libbpf's order."""
        handle = lib.bpf_object__next_map(self.pointer, NULL)
        while handle != NULL:
            yield BpfMap(self, handle)
            handle = lib.bpf_object__next_map(self.pointer, handle)


# -- map syscalls -----------------------------------------------------------------------------


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               map_flags: int, what: str) -> int:
    """``bpf_map_create``: a new map's fd (the caller closes it)."""
    opts = cast("struct_bpf_map_create_opts", ffi.new("struct bpf_map_create_opts *"))
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    opts.map_flags = map_flags
    return check(
        lib.fkl_map_create(map_type, name.encode(), key_size, value_size, max_entries,
                           cast(CData, opts)),
        "bpf_map_create", what,
    )


def map_lookup(fd: int, key: bytes, value_size: int, what: str) -> bytes | None:
    """The value of ``key`` (``value_size`` bytes), ``None`` if absent."""
    value = ffi.new("char[]", max(value_size, 1))
    rc = lib.bpf_map_lookup_elem(fd, key, value)
    if rc == -errno.ENOENT:
        return None
    check(rc, "bpf_map_lookup_elem", what)
    return bytes(ffi.buffer(value, value_size))


def map_update(fd: int, key: bytes, value: bytes, flags: int, what: str) -> None:
    """Create or replace an element (``flags``: BPF_ANY=0, BPF_NOEXIST=1, BPF_EXIST=2)."""
    check(lib.bpf_map_update_elem(fd, key, value, flags), "bpf_map_update_elem", what)


def map_delete(fd: int, key: bytes, what: str) -> bool:
    """Delete ``key``; False if it was absent."""
    rc = lib.bpf_map_delete_elem(fd, key)
    if rc == -errno.ENOENT:
        return False
    check(rc, "bpf_map_delete_elem", what)
    return True


def map_next_key(fd: int, key: bytes | None, key_size: int, what: str) -> bytes | None:
    """The key after ``key`` (the first for ``None``); ``None`` at the end."""
    following = ffi.new("char[]", max(key_size, 1))
    rc = lib.bpf_map_get_next_key(fd, NULL if key is None else key, following)
    if rc == -errno.ENOENT:
        return None
    check(rc, "bpf_map_get_next_key", what)
    return bytes(ffi.buffer(following, key_size))


def map_lookup_and_delete_batch(
    fd: int, key_size: int, value_size: int, batch_size: int, what: str
) -> tuple[bytes, bytes]:
    """Empty a map with BPF_MAP_LOOKUP_AND_DELETE_BATCH: ``(keys, values)`` concatenated, in
    the same order (``value_size``: bytes per value, all CPUs of a per-CPU map)."""
    keys_out = bytearray()
    values_out = bytearray()
    token_size = max(key_size, 8)
    token_in = ffi.new("char[]", token_size)
    token_out = ffi.new("char[]", token_size)
    count = ffi.new("uint32_t *")
    opts = cast("struct_bpf_map_batch_opts", ffi.new("struct bpf_map_batch_opts *"))
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    first = True
    while True:
        keys = ffi.new("char[]", key_size * batch_size)
        values = ffi.new("char[]", value_size * batch_size)
        count[0] = batch_size
        rc = lib.bpf_map_lookup_and_delete_batch(
            fd, NULL if first else token_in, token_out, keys, values, count, cast(CData, opts)
        )
        got = int(count[0])
        if got:
            keys_out += ffi.buffer(keys, got * key_size)
            values_out += ffi.buffer(values, got * value_size)
        if rc == -errno.ENOENT:
            break
        if rc == -errno.ENOSPC and got == 0:
            batch_size *= 2  # one hash bucket holds more entries than the batch
            continue
        check(rc, "bpf_map_lookup_and_delete_batch", what)
        ffi.memmove(token_in, token_out, token_size)
        first = False
    return bytes(keys_out), bytes(values_out)


def map_update_batch(
    fd: int, keys: npt.NDArray[Any], values: npt.NDArray[Any], what: str, flags: int = 0
) -> int:
    """BPF_MAP_UPDATE_BATCH of ``len(keys)`` elements (contiguous arrays, one value row per
    key: all CPUs of a per-CPU map); returns how many the kernel stored."""
    count = ffi.new("uint32_t *", len(keys))
    opts = cast("struct_bpf_map_batch_opts", ffi.new("struct bpf_map_batch_opts *"))
    opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
    opts.elem_flags = flags
    check(
        lib.bpf_map_update_batch(fd, array_pointer("char[]", keys),
                                 array_pointer("char[]", values), count, cast(CData, opts)),
        "bpf_map_update_batch", what,
    )
    return int(count[0])


# -- program test runs and object info --------------------------------------------------------


def prog_test_run(
    fd: int, data: bytes, repeat: int, ctx: bytes | None, what: str
) -> tuple[int, int, bytes]:
    """BPF_PROG_TEST_RUN once: ``(retval, average duration ns, packet as left)``."""
    data_in = ffi.from_buffer(data)
    data_out = ffi.new("char[]", len(data) + 256)
    opts = cast("struct_bpf_test_run_opts", ffi.new("struct bpf_test_run_opts *"))
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.data_in = data_in
    opts.data_size_in = len(data)
    opts.data_out = data_out
    opts.data_size_out = len(data) + 256
    opts.repeat = repeat
    ctx_in = None
    if ctx is not None:
        ctx_in = ffi.from_buffer(ctx)
        opts.ctx_in = ctx_in
        opts.ctx_size_in = len(ctx)
    check(lib.bpf_prog_test_run_opts(fd, cast(CData, opts)), "bpf_prog_test_run_opts", what)
    return int(opts.retval), int(opts.duration), bytes(ffi.buffer(data_out, opts.data_size_out))


class TestRun:
    """Reusable BPF_PROG_TEST_RUN arguments for many runs of frames with a ``__sk_buff``
    context whose ``cb`` words the caller sets (the replay tracer's loop: one syscall per frame,
    nothing allocated per frame)."""

    __slots__ = ("_ctx", "_data", "_opts", "_run", "capacity", "ctx")

    __test__ = False  # not a pytest test class

    def __init__(self, capacity: int, ctx_words: int) -> None:
        self.capacity = capacity
        opts = cast("struct_bpf_test_run_opts", ffi.new("struct bpf_test_run_opts *"))
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.repeat = 1
        self._data = ffi.new("uint8_t[]", capacity)
        self.ctx = ffi.new("uint32_t[]", ctx_words)
        """The context words (a C ``uint32_t[]``: index and assign as a list)."""
        opts.data_in = self._data
        opts.ctx_in = self.ctx
        opts.ctx_size_in = ctx_words * 4
        self._opts = opts
        self._ctx = cast(CData, opts)
        self._run = lib.bpf_prog_test_run_opts

    def run(self, prog_fd: int, data: bytes, size: int) -> int:
        """Run ``prog_fd`` on ``data[:size]`` (``size`` <= :attr:`capacity`) with :attr:`ctx`;
        returns the syscall's result (``-errno`` on failure: the caller checks)."""
        ffi.memmove(self._data, data, size)
        opts = self._opts
        opts.data_size_in = size
        opts.data_size_out = 0  # libbpf writes the sizes back: reset what it passes on
        opts.ctx_size_out = 0
        return self._run(prog_fd, self._ctx)


class ProgInfo(NamedTuple):
    """The kernel's ``struct bpf_prog_info`` (the fields flowkit reports)."""

    id: int
    type: int
    tag: bytes
    name: str
    xlated_len: int
    run_cnt: int
    run_time_ns: int


class MapInfo(NamedTuple):
    """The kernel's ``struct bpf_map_info``."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def prog_info(fd: int) -> ProgInfo:
    """``bpf_obj_get_info_by_fd`` on a program fd."""
    raw = ffi.new("struct bpf_prog_info *")
    length = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info"))
    check(lib.bpf_obj_get_info_by_fd(fd, raw, length), "bpf_obj_get_info_by_fd")
    info = cast("struct_bpf_prog_info", raw)
    return ProgInfo(
        id=int(info.id), type=int(info.type), tag=bytes(ffi.buffer(info.tag, 8)),
        name=_text(info.name), xlated_len=int(info.xlated_prog_len),
        run_cnt=int(info.run_cnt), run_time_ns=int(info.run_time_ns),
    )


def map_info(fd: int) -> MapInfo:
    """``bpf_obj_get_info_by_fd`` on a map fd."""
    raw = ffi.new("struct bpf_map_info *")
    length = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
    check(lib.bpf_obj_get_info_by_fd(fd, raw, length), "bpf_obj_get_info_by_fd")
    info = cast("struct_bpf_map_info", raw)
    return MapInfo(
        id=int(info.id), type=int(info.type), key_size=int(info.key_size),
        value_size=int(info.value_size), max_entries=int(info.max_entries),
        flags=int(info.map_flags), name=_text(info.name),
    )
