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
from flowkit.native import NativeError
from flowkit.native import libbpf as native

__all__ = ["Collection", "Map", "Program", "load_collection"]

logger = logging.getLogger(__name__)
libbpf_logger = logging.getLogger("flowkit.ebpf.libbpf")

_PERCPU_MAP_TYPES = frozenset(
    {"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"}
)

# -- libbpf log bridge ---------------------------------------------------------------------

_LIBBPF_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_capture = threading.local()


def _libbpf_log(level: int, text: str) -> None:
    """Receives every formatted libbpf message (called from C)."""
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
            native.route_log_to_python(_libbpf_log)
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
    with _captured_log() as log:
        try:
            obj = native.BpfObject(image, _object_name(spec.origin))
        except NativeError as exc:
            raise LoaderError(
                f"{spec.origin}: libbpf cannot open the object: {os.strerror(exc.errno)}",
                "\n".join(text for _, text in log),
            ) from None
        owned_fds: list[int] = []  # created here, only needed until the maps exist
        try:
            _configure_programs(spec, obj, set(selected), log_level)
            _configure_maps(spec, obj, owned_fds)
            try:
                obj.load()
            except NativeError as exc:
                raise LoaderError(
                    f"{spec.origin}: loading into the kernel failed: {os.strerror(exc.errno)}",
                    "\n".join(text for _, text in log),
                ) from None
        except BaseException:
            obj.close()
            raise
        finally:
            for fd in owned_fds:
                os.close(fd)
    for level, text in log:
        if level == 0:
            libbpf_logger.warning("%s", text)
    return Collection(spec, obj, selected)


def _configure_programs(
    spec: CollectionSpec, obj: native.BpfObject, selected: set[str], log_level: int
) -> None:
    for name, program in spec.programs.items():
        handle = obj.find_program(name)
        if handle is None:
            raise LoaderError(f"{spec.origin}: libbpf did not find program {name!r}")
        handle.set_autoload(name in selected)
        if name not in selected:
            continue
        wanted = PROG_TYPES[program.prog_type]
        if handle.prog_type != wanted:
            handle.set_prog_type(wanted)
        if program.attach_type is not None:
            attach = ATTACH_TYPES[program.attach_type]
            if handle.expected_attach_type != attach:
                handle.set_expected_attach_type(attach)
        if program.flags and handle.flags & program.flags != program.flags:
            handle.set_flags(handle.flags | program.flags)
        if log_level:
            handle.set_log_level(log_level)


def _configure_maps(spec: CollectionSpec, obj: native.BpfObject, owned_fds: list[int]) -> None:
    for name, map_spec in spec.maps.items():
        handle = obj.find_map(name)
        if handle is None:
            if map_spec.internal:
                continue  # libbpf skips some data sections (e.g. ones holding only strings)
            raise LoaderError(f"{spec.origin}: libbpf did not find map {name!r}")
        if map_spec.internal:
            data = spec.section_data(name)
            if name.startswith(".bss") and any(data):
                handle.set_initial_value(bytes(data), name)
            continue
        if map_spec.max_entries and handle.max_entries != map_spec.max_entries:
            handle.set_max_entries(map_spec.max_entries)
        if map_spec.inner is not None:
            _configure_inner(spec, handle, map_spec, owned_fds)


# Inner map types whose maps may differ in size from the template (no max_entries check).
_HASH_INNER_TYPES = frozenset({"hash", "percpu_hash", "lru_hash", "lru_percpu_hash"})


def _configure_inner(
    spec: CollectionSpec, handle: native.BpfMap, outer: MapSpec, owned_fds: list[int]
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
    inner_handle = handle.inner_map()
    if inner_handle is None or outer.inner is None:
        return
    if outer.inner.type in _HASH_INNER_TYPES:
        return
    size = outer.inner.max_entries
    sizes = {spec.maps[m].max_entries for m in outer.initial_values.values() if m in spec.maps}
    if len(sizes) == 1:
        size = sizes.pop() or size
    if not size or inner_handle.max_entries == size:
        return
    fd = native.map_create(
        inner_handle.map_type,
        "fk_inner",
        inner_handle.key_size,
        inner_handle.value_size,
        size,
        inner_handle.map_flags,
        f"inner map template of {outer.name!r}",
    )
    owned_fds.append(fd)
    handle.set_inner_map_fd(fd, outer.name)


# -- loaded objects ------------------------------------------------------------------------


class Collection:
    """Loaded programs and maps of one object. Close it (or use ``with``) to free them."""

    def __init__(self, spec: CollectionSpec, obj: native.BpfObject, loaded: list[str]) -> None:
        self.spec = spec
        self._obj = obj
        self._closer = weakref.finalize(self, obj.close)
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}
        ncpus = native.num_possible_cpus()
        for name in loaded:
            handle = obj.find_program(name)
            assert handle is not None  # found while configuring
            self.programs[name] = Program(self, handle, spec.programs[name].section)
        # libbpf names internal maps "<object>.<section>" (truncated); report section names.
        section_of: dict[int, str] = {}
        for name, map_spec in spec.maps.items():
            if map_spec.internal:
                found = obj.find_map(name)
                if found is not None:
                    section_of[found.address] = name
        for map_handle in obj.maps():
            name = section_of.get(map_handle.address) or map_handle.name
            self.maps[name] = Map(self, map_handle, name, ncpus)

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

    def __init__(self, collection: Collection, handle: native.BpfProgram, section: str) -> None:
        self._collection = collection
        self._handle = handle
        self.name: str = handle.name
        self.section = section
        self.prog_type = prog_type_name(handle.prog_type)
        attach = handle.expected_attach_type
        spec = collection.spec.programs[self.name]
        self.attach_type: str | None = (
            attach_type_name(attach) if spec.attach_type is not None else None
        )

    @property
    def fd(self) -> int:
        """The program's file descriptor (owned by the collection)."""
        self._collection._check_open(f"program {self.name!r}")
        return self._handle.fd

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
        return native.prog_test_run(self.fd, data, repeat, ctx, self.name)

    def info(self) -> dict[str, Any]:
        """The kernel's view: id, tag, name, type, run counters (if bpf_stats is on)."""
        info = native.prog_info(self.fd)
        return {
            "id": info.id,
            "type": prog_type_name(info.type),
            "tag": info.tag.hex(),
            "name": info.name,
            "xlated_len": info.xlated_len,
            "run_cnt": info.run_cnt,
            "run_time_ns": info.run_time_ns,
        }

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.prog_type} ({self.section})>"


class Map:
    """A created map, with small helpers for syscalls on it.

    Keys and values are raw bytes (ints are accepted as little-endian keys of ``key_size``).
    Per-CPU maps take and return ``ncpus`` values, each padded to 8 bytes
    (:attr:`value_stride` bytes in all).
    """

    def __init__(
        self, collection: Collection, handle: native.BpfMap, name: str, ncpus: int
    ) -> None:
        self._collection = collection
        self._handle = handle
        self.name = name
        self.type = map_type_name(handle.map_type)
        self.key_size = handle.key_size
        self.value_size = handle.value_size
        self.max_entries = handle.max_entries
        self.flags = handle.map_flags
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
        return self._handle.fd

    def _key(self, key: bytes | int) -> bytes:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        if len(key) != self.key_size:
            raise LoaderError(f"map {self.name!r}: keys are {self.key_size} bytes, got {len(key)}")
        return bytes(key)

    def lookup(self, key: bytes | int) -> bytes | None:
        """The value for ``key``, or ``None`` if absent."""
        return native.map_lookup(self.fd, self._key(key), self.value_stride, self.name)

    def update(self, key: bytes | int, value: bytes, flags: int = 0) -> None:
        """Create or replace an element (``flags``: BPF_ANY=0, BPF_NOEXIST=1, BPF_EXIST=2)."""
        if len(value) != self.value_stride:
            raise LoaderError(
                f"map {self.name!r}: values are {self.value_stride} bytes, got {len(value)}"
            )
        native.map_update(self.fd, self._key(key), bytes(value), flags, self.name)

    def delete(self, key: bytes | int) -> bool:
        """Delete ``key``; False if it was absent."""
        return native.map_delete(self.fd, self._key(key), self.name)

    def keys(self) -> Iterator[bytes]:
        """Iterate over keys with BPF_MAP_GET_NEXT_KEY (entries may change meanwhile)."""
        key = native.map_next_key(self.fd, None, self.key_size, self.name)
        while key is not None:
            yield key
            key = native.map_next_key(self.fd, key, self.key_size, self.name)

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
        return native.map_lookup_and_delete_batch(
            self.fd, self.key_size, self.value_stride, batch_size, self.name
        )

    def info(self) -> dict[str, Any]:
        """The kernel's view of the map: id, type, sizes, flags, name."""
        info = native.map_info(self.fd)
        return {
            "id": info.id,
            "type": map_type_name(info.type),
            "key_size": info.key_size,
            "value_size": info.value_size,
            "max_entries": info.max_entries,
            "flags": info.flags,
            "name": info.name,
        }

    def __repr__(self) -> str:
        return f"<Map {self.name} {self.type} max_entries={self.max_entries}>"


__all__ += ["NativeError"]
