"""Loading a :class:`~flowkit.ebpf.spec.CollectionSpec` into the kernel with libbpf.

The spec is normalised into an ELF image libbpf accepts (:mod:`flowkit.ebpf.normalize`), opened
with ``bpf_object__open_mem`` from a private copy, adjusted through libbpf's setters (program
types for section names libbpf does not know, which programs load, map sizes, ``.bss`` values)
and loaded. The result is a :class:`Collection` of :class:`Program` and :class:`Map` objects
that own their kernel file descriptors until :meth:`Collection.close`.

libbpf's log goes to the ``flowkit.ebpf.libbpf`` logger; while a load runs it is captured as
well, and a failure's :class:`LoaderError` carries it (including the verifier log).
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from flowkit.ebpf.errors import LoaderError
from flowkit.ebpf.kinds import (
    ATTACH_TYPES,
    PROG_TYPES,
    attach_type_name,
    map_type_name,
    prog_type_name,
)
from flowkit.ebpf.normalize import build_image
from flowkit.ebpf.spec import CollectionSpec, MapSpec
from flowkit.native import NativeError, check, ffi, lib

__all__ = ["Collection", "Map", "Program", "load_collection"]

logger = logging.getLogger(__name__)
libbpf_logger = logging.getLogger("flowkit.ebpf.libbpf")

_PERCPU_MAP_TYPES = frozenset(
    {"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"}
)

# -- libbpf log bridge ---------------------------------------------------------------------

_LIBBPF_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_capture = threading.local()


@ffi.def_extern()  # type: ignore[untyped-decorator]
def fkl_libbpf_log(level: int, message: Any) -> None:
    """Receives every formatted libbpf message (called from C)."""
    text = ffi.string(message).decode("utf-8", "replace").rstrip("\n")
    lines: list[tuple[int, str]] | None = getattr(_capture, "lines", None)
    if lines is not None and level <= 1:
        # Held back: a failed load puts these in its LoaderError, a successful one logs them.
        lines.append((level, text))
        libbpf_logger.debug("%s", text)
        return
    if any(expected in text for expected in _EXPECTED_LIBBPF_MESSAGES):
        libbpf_logger.debug("%s", text)
        return
    libbpf_logger.log(_LIBBPF_LEVELS.get(level, logging.DEBUG), "%s", text)


_routed = threading.Lock()
_routed_done = False


def route_libbpf_log() -> None:
    """Send libbpf's messages to the ``flowkit.ebpf.libbpf`` logger (once per process).

    Installed on the first load rather than at import, so that importing flowkit never changes
    process-wide libbpf state a host application may have set up itself.
    """
    global _routed_done
    with _routed:
        if not _routed_done:
            lib.fkl_libbpf_route_log_to_python()
            _routed_done = True


# libbpf warnings about situations flowkit expects and handles: bpf_tc_hook_create() on an
# interface that already has a clsact qdisc (flowkit then uses that qdisc; EEXIST is not an error).
_EXPECTED_LIBBPF_MESSAGES = ("Exclusivity flag on",)


@contextlib.contextmanager
def _captured_log() -> Iterator[list[tuple[int, str]]]:
    route_libbpf_log()
    previous = getattr(_capture, "lines", None)
    lines: list[tuple[int, str]] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous


def _possible_cpus() -> int:
    return check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# -- loading -------------------------------------------------------------------------------


def _object_name(origin: str) -> str:
    stem = os.path.basename(origin).split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_]", "_", stem)[:15] or "flowkit"


def load_collection(
    spec: CollectionSpec, programs: list[str] | None, log_level: int = 0
) -> Collection:
    """Load ``spec`` (see :meth:`CollectionSpec.load`)."""
    selected = list(spec.programs) if programs is None else programs
    missing = [name for name in selected if name not in spec.programs]
    if missing:
        raise LoaderError(
            f"{spec.origin}: no program named {', '.join(map(repr, missing))} "
            f"(programs: {', '.join(sorted(spec.programs)) or 'none'})"
        )
    for name in selected:
        program = spec.programs[name]
        if program.prog_type == "unspec":
            raise LoaderError(
                f"{spec.origin}: program {name!r} is in section {program.section!r}, which "
                f"names no program type: set spec.programs[{name!r}].prog_type (e.g. "
                "'sched_cls') before load"
            )

    image = build_image(spec)
    buffer = ffi.new("char[]", image)
    name = ffi.new("char[]", _object_name(spec.origin).encode())
    opts = ffi.new("struct bpf_object_open_opts *")
    opts.sz = ffi.sizeof("struct bpf_object_open_opts")
    opts.object_name = name
    with _captured_log() as log:
        obj = lib.bpf_object__open_mem(buffer, len(image), opts)
        if obj == ffi.NULL:
            err = ffi.errno or errno_module.EINVAL
            raise LoaderError(
                f"{spec.origin}: libbpf cannot open the object: {os.strerror(err)}",
                "\n".join(text for _, text in log),
            )
        owned_fds: list[int] = []  # created here, only needed until the maps exist
        try:
            _configure_programs(spec, obj, set(selected), log_level)
            _configure_maps(spec, obj, owned_fds)
            rc = lib.bpf_object__load(obj)
            if rc < 0:
                raise LoaderError(
                    f"{spec.origin}: loading into the kernel failed: {os.strerror(-rc)}",
                    "\n".join(text for _, text in log),
                )
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        finally:
            for fd in owned_fds:
                os.close(fd)
    for level, text in log:
        if level == 0:
            libbpf_logger.warning("%s", text)
    return Collection(spec, obj, buffer, selected)


def _configure_programs(spec: CollectionSpec, obj: Any, selected: set[str], log_level: int) -> None:
    for name, program in spec.programs.items():
        handle = lib.bpf_object__find_program_by_name(obj, name.encode())
        if handle == ffi.NULL:
            raise LoaderError(f"{spec.origin}: libbpf did not find program {name!r}")
        check(lib.bpf_program__set_autoload(handle, name in selected), "bpf_program__set_autoload")
        if name not in selected:
            continue
        wanted = PROG_TYPES[program.prog_type]
        if lib.fkl_program_type(handle) != wanted:
            check(lib.fkl_program_set_type(handle, wanted), "bpf_program__set_type", name)
        if program.attach_type is not None:
            attach = ATTACH_TYPES[program.attach_type]
            if lib.fkl_program_expected_attach_type(handle) != attach:
                check(
                    lib.fkl_program_set_expected_attach_type(handle, attach),
                    "bpf_program__set_expected_attach_type",
                    name,
                )
        if program.flags and lib.bpf_program__flags(handle) & program.flags != program.flags:
            flags = lib.bpf_program__flags(handle) | program.flags
            check(lib.bpf_program__set_flags(handle, flags), "bpf_program__set_flags", name)
        if log_level:
            check(lib.bpf_program__set_log_level(handle, log_level), "bpf_program__set_log_level")


def _configure_maps(spec: CollectionSpec, obj: Any, owned_fds: list[int]) -> None:
    for name, map_spec in spec.maps.items():
        handle = lib.bpf_object__find_map_by_name(obj, name.encode())
        if handle == ffi.NULL:
            if map_spec.internal:
                continue  # libbpf skips some data sections (e.g. ones holding only strings)
            raise LoaderError(f"{spec.origin}: libbpf did not find map {name!r}")
        if map_spec.internal:
            data = spec.section_data(name)
            if name.startswith(".bss") and any(data):
                check(
                    lib.bpf_map__set_initial_value(handle, data, len(data)),
                    "bpf_map__set_initial_value",
                    name,
                )
            continue
        if map_spec.max_entries and lib.bpf_map__max_entries(handle) != map_spec.max_entries:
            check(
                lib.bpf_map__set_max_entries(handle, map_spec.max_entries),
                "bpf_map__set_max_entries",
                name,
            )
        if map_spec.inner is not None:
            _configure_inner(spec, handle, map_spec, owned_fds)


# Inner map types whose maps may differ in size from the template (no max_entries check).
_HASH_INNER_TYPES = frozenset({"hash", "percpu_hash", "lru_hash", "lru_percpu_hash"})


def _configure_inner(
    spec: CollectionSpec, handle: Any, outer: MapSpec, owned_fds: list[int]
) -> None:
    """Give a map-in-map an inner template matching the (possibly resized) maps put in it.

    Hash maps of different sizes are interchangeable (the kernel does not compare their
    ``max_entries``): their template keeps the object's size, so that no second copy of a large
    preallocated map is created just to describe it (a per-CPU flow map of CACHE_MAX_FLOWS
    entries would take as much memory again while loading). Arrays are not interchangeable
    (unless the template has BPF_F_INNER_MAP). libbpf 1.1 cannot resize its own inner template
    (it crashes), so when the size must change the loader creates the template itself and
    hands libbpf its fd.
    """
    inner_handle = lib.bpf_map__inner_map(handle)
    if inner_handle == ffi.NULL or outer.inner is None:
        return
    if outer.inner.type in _HASH_INNER_TYPES:
        return
    size = outer.inner.max_entries
    sizes = {spec.maps[m].max_entries for m in outer.initial_values.values() if m in spec.maps}
    if len(sizes) == 1:
        size = sizes.pop() or size
    if not size or lib.bpf_map__max_entries(inner_handle) == size:
        return
    opts = ffi.new("struct bpf_map_create_opts *")
    opts.sz = ffi.sizeof("struct bpf_map_create_opts")
    opts.map_flags = lib.bpf_map__map_flags(inner_handle)
    fd = check(
        lib.fkl_map_create(
            lib.fkl_map_type(inner_handle),
            b"fk_inner",
            lib.bpf_map__key_size(inner_handle),
            lib.bpf_map__value_size(inner_handle),
            size,
            opts,
        ),
        "bpf_map_create",
        f"inner map template of {outer.name!r}",
    )
    owned_fds.append(fd)
    check(lib.bpf_map__set_inner_map_fd(handle, fd), "bpf_map__set_inner_map_fd", outer.name)


# -- loaded objects ------------------------------------------------------------------------


def _address(pointer: Any) -> int:
    return int(ffi.cast("uintptr_t", pointer))


class Collection:
    """Loaded programs and maps of one object. Close it (or use ``with``) to free them."""

    def __init__(self, spec: CollectionSpec, obj: Any, buffer: Any, loaded: list[str]) -> None:
        self.spec = spec
        self._obj = obj
        self._buffer = buffer  # the image libbpf was opened from; kept for the object's life
        self._closer = weakref.finalize(self, lib.bpf_object__close, obj)
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}
        ncpus = _possible_cpus()
        for name in loaded:
            handle = lib.bpf_object__find_program_by_name(obj, name.encode())
            self.programs[name] = Program(self, handle, spec.programs[name].section)
        # libbpf names internal maps "<object>.<section>" (truncated); report section names.
        section_of: dict[int, str] = {}
        for name, map_spec in spec.maps.items():
            if map_spec.internal:
                found = lib.bpf_object__find_map_by_name(obj, name.encode())
                if found != ffi.NULL:
                    section_of[_address(found)] = name
        handle = lib.bpf_object__next_map(obj, ffi.NULL)
        while handle != ffi.NULL:
            name = (
                section_of.get(_address(handle)) or ffi.string(lib.bpf_map__name(handle)).decode()
            )
            self.maps[name] = Map(self, handle, name, ncpus)
            handle = lib.bpf_object__next_map(obj, handle)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return not self._closer.alive

    def close(self) -> None:
        """Close every program and map fd. Idempotent."""
        self._closer()

    def __enter__(self) -> Collection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise LoaderError(f"{what}: the collection is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.programs)} programs, {len(self.maps)} maps"
        return f"<Collection {self.spec.origin}: {state}>"


class Program:
    """A loaded program."""

    def __init__(self, collection: Collection, handle: Any, section: str) -> None:
        self._collection = collection
        self._handle = handle
        self.name: str = ffi.string(lib.bpf_program__name(handle)).decode()
        self.section = section
        self.prog_type = prog_type_name(lib.fkl_program_type(handle))
        attach = lib.fkl_program_expected_attach_type(handle)
        spec = collection.spec.programs[self.name]
        self.attach_type: str | None = (
            attach_type_name(attach) if spec.attach_type is not None else None
        )

    @property
    def fd(self) -> int:
        """The program's file descriptor (owned by the collection)."""
        self._collection._check_open(f"program {self.name!r}")
        return int(lib.bpf_program__fd(self._handle))

    def test_run(
        self, data: bytes, repeat: int = 1, *, ctx: bytes | None = None
    ) -> tuple[int, int]:
        """Run the program on ``data`` with BPF_PROG_TEST_RUN: ``(retval, duration_ns)``.

        ``retval`` is the program's return value as the kernel reports it (unsigned 32-bit);
        ``duration_ns`` the average run time over ``repeat`` runs.
        """
        result = self.test_run_full(data, repeat, ctx=ctx)
        return result[0], result[1]

    def test_run_full(
        self, data: bytes, repeat: int = 1, *, ctx: bytes | None = None
    ) -> tuple[int, int, bytes]:
        """Like :meth:`test_run`, also returning the packet as the program left it."""
        fd = self.fd
        data_in = ffi.from_buffer(data)
        data_out = ffi.new("char[]", len(data) + 256)
        opts = ffi.new("struct bpf_test_run_opts *")
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
        check(lib.bpf_prog_test_run_opts(fd, opts), "bpf_prog_test_run_opts", self.name)
        return (
            int(opts.retval),
            int(opts.duration),
            bytes(ffi.buffer(data_out, opts.data_size_out)),
        )

    def info(self) -> dict[str, Any]:
        """The kernel's view: id, tag, name, type, run counters (if bpf_stats is on)."""
        info = ffi.new("struct bpf_prog_info *")
        length = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info"))
        check(lib.bpf_obj_get_info_by_fd(self.fd, info, length), "bpf_obj_get_info_by_fd")
        return {
            "id": int(info.id),
            "type": prog_type_name(info.type),
            "tag": bytes(ffi.buffer(info.tag, 8)).hex(),
            "name": ffi.string(info.name).decode(),
            "xlated_len": int(info.xlated_prog_len),
            "run_cnt": int(info.run_cnt),
            "run_time_ns": int(info.run_time_ns),
        }

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.prog_type} ({self.section})>"


class Map:
    """A created map, with small helpers for syscalls on it.

    Keys and values are raw bytes (ints are accepted as little-endian keys of ``key_size``).
    Per-CPU maps take and return ``ncpus`` values, each padded to 8 bytes
    (:attr:`value_stride` bytes in all).
    """

    def __init__(self, collection: Collection, handle: Any, name: str, ncpus: int) -> None:
        self._collection = collection
        self._handle = handle
        self.name = name
        self.type = map_type_name(lib.fkl_map_type(handle))
        self.key_size = int(lib.bpf_map__key_size(handle))
        self.value_size = int(lib.bpf_map__value_size(handle))
        self.max_entries = int(lib.bpf_map__max_entries(handle))
        self.flags = int(lib.bpf_map__map_flags(handle))
        self.ncpus = ncpus if self.type in _PERCPU_MAP_TYPES else 1
        if self.percpu:
            self.value_stride = (self.value_size + 7) // 8 * 8 * self.ncpus
        else:
            self.value_stride = self.value_size

    @property
    def percpu(self) -> bool:
        """True for per-CPU maps."""
        return self.type in _PERCPU_MAP_TYPES

    @property
    def fd(self) -> int:
        """The map's file descriptor (owned by the collection)."""
        self._collection._check_open(f"map {self.name!r}")
        return int(lib.bpf_map__fd(self._handle))

    def _key(self, key: bytes | int) -> Any:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        if len(key) != self.key_size:
            raise LoaderError(f"map {self.name!r}: keys are {self.key_size} bytes, got {len(key)}")
        return ffi.from_buffer(key)

    def lookup(self, key: bytes | int) -> bytes | None:
        """The value for ``key``, or ``None`` if absent."""
        value = ffi.new("char[]", max(self.value_stride, 1))
        rc = lib.bpf_map_lookup_elem(self.fd, self._key(key), value)
        if rc == -errno_module.ENOENT:
            return None
        check(rc, "bpf_map_lookup_elem", self.name)
        return bytes(ffi.buffer(value, self.value_stride))

    def update(self, key: bytes | int, value: bytes, flags: int = 0) -> None:
        """Create or replace an element (``flags``: BPF_ANY=0, BPF_NOEXIST=1, BPF_EXIST=2)."""
        if len(value) != self.value_stride:
            raise LoaderError(
                f"map {self.name!r}: values are {self.value_stride} bytes, got {len(value)}"
            )
        check(
            lib.bpf_map_update_elem(self.fd, self._key(key), ffi.from_buffer(value), flags),
            "bpf_map_update_elem",
            self.name,
        )

    def delete(self, key: bytes | int) -> bool:
        """Delete ``key``; False if it was absent."""
        rc = lib.bpf_map_delete_elem(self.fd, self._key(key))
        if rc == -errno_module.ENOENT:
            return False
        check(rc, "bpf_map_delete_elem", self.name)
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate over keys with BPF_MAP_GET_NEXT_KEY (entries may change meanwhile)."""
        current = ffi.NULL
        following = ffi.new("char[]", max(self.key_size, 1))
        while True:
            rc = lib.bpf_map_get_next_key(self.fd, current, following)
            if rc == -errno_module.ENOENT:
                return
            check(rc, "bpf_map_get_next_key", self.name)
            key = bytes(ffi.buffer(following, self.key_size))
            yield key
            current = ffi.new("char[]", key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over (key, value) pairs; keys deleted meanwhile are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def lookup_and_delete_batch(self, batch_size: int = 1024) -> tuple[bytes, bytes]:
        """Empty the map with BPF_MAP_LOOKUP_AND_DELETE_BATCH.

        Returns ``(keys, values)``: the keys concatenated (``key_size`` bytes each) and the
        values concatenated (:attr:`value_stride` bytes each), in the same order.
        """
        fd = self.fd
        keys_out = bytearray()
        values_out = bytearray()
        token_size = max(self.key_size, 8)
        token_in = ffi.new("char[]", token_size)
        token_out = ffi.new("char[]", token_size)
        count = ffi.new("uint32_t *")
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        first = True
        while True:
            keys = ffi.new("char[]", self.key_size * batch_size)
            values = ffi.new("char[]", self.value_stride * batch_size)
            count[0] = batch_size
            rc = lib.bpf_map_lookup_and_delete_batch(
                fd, ffi.NULL if first else token_in, token_out, keys, values, count, opts
            )
            got = int(count[0])
            if got:
                keys_out += ffi.buffer(keys, got * self.key_size)
                values_out += ffi.buffer(values, got * self.value_stride)
            if rc == -errno_module.ENOENT:
                break
            if rc == -errno_module.ENOSPC and got == 0:
                batch_size *= 2  # one hash bucket holds more entries than the batch
                continue
            check(rc, "bpf_map_lookup_and_delete_batch", self.name)
            ffi.memmove(token_in, token_out, token_size)
            first = False
        return bytes(keys_out), bytes(values_out)

    def info(self) -> dict[str, Any]:
        """The kernel's view of the map: id, type, sizes, flags, name."""
        info = ffi.new("struct bpf_map_info *")
        length = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
        check(lib.bpf_obj_get_info_by_fd(self.fd, info, length), "bpf_obj_get_info_by_fd")
        return {
            "id": int(info.id),
            "type": map_type_name(info.type),
            "key_size": int(info.key_size),
            "value_size": int(info.value_size),
            "max_entries": int(info.max_entries),
            "flags": int(info.map_flags),
            "name": ffi.string(info.name).decode(),
        }

    def __repr__(self) -> str:
        return f"<Map {self.name} {self.type} max_entries={self.max_entries}>"


__all__ += ["NativeError"]
