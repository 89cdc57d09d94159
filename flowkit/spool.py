"""An on-disk spool: a bounded, append-only, checksummed queue of records in segment files.

Network exporters write what they cannot deliver into a :class:`Spool` while their sink is down
and read it back, oldest first, when the sink returns; a spool left by a previous run (a crash,
a SIGKILL, a shutdown during an outage) is read back by the next one. The spool does not know
what a record holds: the exporter stores bytes (an encoded message, a raw batch from
:func:`encode_batch`) together with the number of flows they carry, which the spool uses for its
counters.

Layout of a spool directory (one exporter per directory, guarded by an exclusive ``flock``):

* ``<seq>.seg`` segment files, ``seq`` a zero-padded 16-digit counter: a 16-byte header
  (:data:`SEGMENT_MAGIC`, format version, flags) followed by records. A segment is appended to
  until it would exceed the segment size, then the next one is started.
* A record is a 12-byte little-endian header ``<u32 payload length><u32 flows><u32 crc32>``
  followed by the payload. The CRC-32 (zlib's, ISO-HDLC polynomial) covers the first eight header
  bytes and the payload, so a torn or corrupt record is never taken for data.
* ``cursor``: the replay position, rewritten in place after every record read back:
  ``<8s magic><u64 seq><u64 offset><u64 flows in flight>``. A non-zero last field means a record
  was being delivered when the process died: it is sent again (at-least-once) and counted as a
  possible duplicate.

Guarantees: records come back in the order they were appended; a record is removed only when
the reader acknowledges it (:meth:`Spool.ack`); a segment file is deleted once every record in
it was acknowledged. When appending would take the spool over its byte budget, whole segments
are dropped, oldest first, and their flows counted (``reason="spool_full"``). At start, every
segment is checked record by record: a torn tail (a record cut short by a crash, or failing
its checksum) is cut off and counted (``spool_torn_records``, ``spool_torn_bytes``, and its
flows as dropped with ``reason="spool_torn"``).

Every flow a spool loses is reported through ``on_drop(reason, flows)`` (``spool_full``,
``spool_error``, ``spool_corrupt``, ``spool_torn``): an exporter wires it to its
:class:`~flowkit.accounts.ExporterAccount`, so spool losses are counted in the one drop family,
``dropped_flows{exporter,reason}``, like every other loss.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from flowkit.metrics import Metrics
from flowkit.model import FLOW_DTYPE, FlowBatch
from flowkit.ratelimit import RateLimitedLog

__all__ = [
    "MIN_SEGMENT_BYTES",
    "RECORD_HEADER",
    "SEGMENT_HEADER",
    "SEGMENT_MAGIC",
    "FsyncPolicy",
    "Spool",
    "SpoolBusyError",
    "SpoolConfig",
    "SpoolRecord",
    "check_spool_settings",
    "decode_batch",
    "encode_batch",
    "open_spool",
    "read_spool",
]

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"FKSPOOL\x00"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sII")  # magic, version, flags (0)
RECORD_HEADER = struct.Struct("<III")  # payload length, flows, crc32(length, flows, payload)
_CURSOR_MAGIC = b"FKCURSOR"
_CURSOR = struct.Struct("<8sQQQ")  # magic, segment seq, offset, flows in flight (0: none)
_SEGMENT_SUFFIX = ".seg"

MIN_SEGMENT_BYTES = 64 * 1024
"""Smallest segment size accepted (a segment is the unit the byte budget drops)."""

MAX_RECORD_BYTES = 1 << 31
"""Records claiming more than this are treated as corrupt (never allocated)."""

FsyncPolicy = Literal["always", "segment", "never"]
"""When spooled data is forced to the disk:

* ``always``: after every record (survives a power cut; one disk flush per batch);
* ``segment``: when a segment is complete and when the spool is closed (the default: a crash
  or SIGKILL of the agent loses nothing, since written data is in the kernel's page cache; a
  power cut may lose the last seconds);
* ``never``: left to the kernel.
"""


class SpoolBusyError(RuntimeError):
    """Another process (or exporter) already uses this spool directory."""


@dataclass(frozen=True)
class SpoolConfig:
    """Where a spool lives and how big it may grow."""

    directory: Path
    max_bytes: int
    segment_bytes: int = 16 * 1024 * 1024
    fsync: FsyncPolicy = "segment"


@dataclass(frozen=True)
class SpoolRecord:
    """One record read back from the spool (hand it to :meth:`Spool.ack` once delivered)."""

    seq: int
    offset: int
    end: int
    flows: int
    payload: bytes


def check_spool_settings(
    prefix: str, directory: str, max_bytes: int, segment_bytes: int
) -> None:
    """Validate ``<PREFIX>_SPOOL_*`` settings; raises ValueError with one line naming them.

    Checks that the directory is (or can be created as) a writable directory, that the budget
    holds at least two segments, and that it fits in the free space of its file system (plus
    what a previous run's spool already takes): a spool must never fill the host's disk.
    Nothing is created here.
    """
    if not directory:
        return
    dir_setting, max_setting = f"{prefix}_SPOOL_DIR", f"{prefix}_SPOOL_MAX_BYTES"
    seg_setting = f"{prefix}_SPOOL_SEGMENT_BYTES"
    path = Path(directory)
    if not path.is_absolute():
        raise ValueError(f"{dir_setting}={directory!r} must be an absolute path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{dir_setting}={directory!r}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{dir_setting}={directory!r}: {existing} is not writable")
    if segment_bytes < MIN_SEGMENT_BYTES:
        raise ValueError(
            f"{seg_setting}={segment_bytes} is too small: at least {MIN_SEGMENT_BYTES} bytes"
        )
    if max_bytes < 2 * segment_bytes:
        raise ValueError(
            f"{max_setting}={max_bytes} is too small: the spool needs room for two segments "
            f"({seg_setting}={segment_bytes}), i.e. at least {2 * segment_bytes} bytes"
        )
    used = _directory_bytes(path) if path.is_dir() else 0
    free = shutil.disk_usage(existing).free
    if max_bytes > free + used:
        raise ValueError(
            f"{max_setting}={max_bytes} is more than the file system of {existing} has free "
            f"({free + used} bytes including the spool already there): lower it"
        )


def open_spool(
    setting_prefix: str,
    directory: str,
    max_bytes: int,
    segment_bytes: int,
    fsync: FsyncPolicy,
    *,
    name: str,
    metrics: Metrics | None = None,
    on_drop: Callable[[str, int], None] | None = None,
) -> Spool | None:
    """The spool an exporter's ``<PREFIX>_SPOOL_*`` settings ask for (None without a directory).

    Raises RuntimeError with one line naming the setting when the directory cannot be used
    (created, locked, read).
    """
    if not directory:
        return None
    config = SpoolConfig(Path(directory), max_bytes, segment_bytes, fsync)
    try:
        return Spool(config, name=name, metrics=metrics, on_drop=on_drop)
    except SpoolBusyError as exc:
        raise RuntimeError(f"{setting_prefix}_SPOOL_DIR: {exc}") from None
    except OSError as exc:
        raise RuntimeError(
            f"{setting_prefix}_SPOOL_DIR={directory}: {exc.strerror or exc}"
            + (f": {exc.filename}" if exc.filename else "")
        ) from None


def _directory_bytes(path: Path) -> int:
    total = 0
    for entry in path.glob(f"*{_SEGMENT_SUFFIX}"):
        try:
            total += entry.stat().st_size
        except OSError:
            continue
    return total


# -- raw FlowBatch payloads ---------------------------------------------------------------------
_BATCH_HEADER = struct.Struct("<4sII")  # b"FKB1", flow record size, metadata length


def encode_batch(batch: FlowBatch) -> bytes:
    """A batch as spool payload: its flow records as they are in memory, plus interface names
    and agent address. :func:`decode_batch` reverses it (same flowkit version or record layout).
    """
    meta = json.dumps(
        {
            "interfaces": {str(k): v for k, v in batch.interfaces.items()},
            "agent_ip": batch.agent_ip,
        },
        separators=(",", ":"),
    ).encode()
    array = np.ascontiguousarray(batch.array)
    return b"".join(
        (_BATCH_HEADER.pack(b"FKB1", FLOW_DTYPE.itemsize, len(meta)), meta, array.tobytes())
    )


def decode_batch(payload: bytes) -> FlowBatch:
    """The :class:`FlowBatch` of an :func:`encode_batch` payload (owns its memory).

    Raises ValueError for a payload of another format or record layout.
    """
    if len(payload) < _BATCH_HEADER.size:
        raise ValueError("spooled batch too short")
    magic, itemsize, meta_len = _BATCH_HEADER.unpack_from(payload)
    if magic != b"FKB1" or itemsize != FLOW_DTYPE.itemsize:
        raise ValueError(
            f"spooled batch has format {magic!r} with {itemsize}-byte records; this flowkit "
            f"reads b'FKB1' with {FLOW_DTYPE.itemsize}-byte records"
        )
    start = _BATCH_HEADER.size + meta_len
    body = len(payload) - start
    if body < 0 or body % itemsize:
        raise ValueError("spooled batch is truncated")
    meta = json.loads(payload[_BATCH_HEADER.size : start])
    array = np.frombuffer(payload, dtype=FLOW_DTYPE, offset=start).copy()
    interfaces = {int(k): str(v) for k, v in meta.get("interfaces", {}).items()}
    return FlowBatch(array, interfaces, meta.get("agent_ip"))


# -- segments -----------------------------------------------------------------------------------
class _Segment:
    __slots__ = ("flows", "path", "records", "seq", "size")

    def __init__(self, seq: int, path: Path, size: int) -> None:
        self.seq = seq
        self.path = path
        self.size = size  # bytes on disk (valid part)
        self.flows = 0  # flows in records not yet acknowledged
        self.records = 0  # records not yet acknowledged


def _segment_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:016d}{_SEGMENT_SUFFIX}"


def _crc(length: int, flows: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<II", length, flows)))


@dataclass
class _Scan:
    """What reading one segment found."""

    good_end: int
    records: list[tuple[int, int, int]]  # (offset, end, flows)
    torn_records: int
    torn_bytes: int
    reason: str = ""
    torn_flows: int = 0


def _scan_segment(path: Path, with_payloads: list[bytes] | None = None) -> _Scan:
    """Check every record of a segment; stop at the first one that is cut short or corrupt."""
    with open(path, "rb") as handle:
        data_size = os.fstat(handle.fileno()).st_size
        header = handle.read(SEGMENT_HEADER.size)
        if len(header) < SEGMENT_HEADER.size:
            return _Scan(0, [], 1 if header else 0, len(header), "segment header cut short")
        magic, version, _flags = SEGMENT_HEADER.unpack(header)
        if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
            return _Scan(0, [], 1, data_size, f"not a version-{SEGMENT_VERSION} spool segment")
        offset = SEGMENT_HEADER.size
        records: list[tuple[int, int, int]] = []
        while offset < data_size:
            raw = handle.read(RECORD_HEADER.size)
            reason = ""
            if len(raw) < RECORD_HEADER.size:
                reason = "record header cut short"
            else:
                length, flows, crc = RECORD_HEADER.unpack(raw)
                if length > MAX_RECORD_BYTES or offset + RECORD_HEADER.size + length > data_size:
                    reason = "record cut short"
                else:
                    payload = handle.read(length)
                    if len(payload) < length:
                        reason = "record cut short"
                    elif _crc(length, flows, payload) != crc:
                        reason = "checksum mismatch"
            if reason:
                torn_flows = _torn_flows(handle, offset, data_size)
                return _Scan(offset, records, 1, data_size - offset, reason, torn_flows)
            end = offset + RECORD_HEADER.size + length
            records.append((offset, end, flows))
            if with_payloads is not None:
                with_payloads.append(payload)
            offset = end
        return _Scan(offset, records, 0, 0)


def _torn_flows(handle: BinaryIO, offset: int, data_size: int) -> int:
    """Flows of the torn tail from ``offset``, as the record headers in it say: every whole
    header is counted, following their lengths, until one is implausible (a flow takes at least
    one payload byte in every format) or cut short, whose flows are unknown."""
    flows = 0
    while offset + RECORD_HEADER.size <= data_size:
        handle.seek(offset)
        length, count, _crc32 = RECORD_HEADER.unpack(handle.read(RECORD_HEADER.size))
        if length > MAX_RECORD_BYTES or count > length:
            break
        flows += count
        offset += RECORD_HEADER.size + length
    return flows


def _segments_in(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in directory.glob(f"*{_SEGMENT_SUFFIX}"):
        stem = entry.name[: -len(_SEGMENT_SUFFIX)]
        if stem.isdigit():
            found.append((int(stem), entry))
    return sorted(found)


def read_spool(directory: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(flows, payload)`` of every intact record still to be replayed, oldest first.

    Read-only, without the lock: for tools and tests that look at a spool (possibly one a
    running agent is writing: a record being appended may be missing or seen cut short).
    """
    directory = Path(directory)
    cursor = _read_cursor(directory)
    for seq, path in _segments_in(directory):
        if cursor is not None and seq < cursor[0]:
            continue
        payloads: list[bytes] = []
        try:
            scan = _scan_segment(path, payloads)
        except FileNotFoundError:
            continue
        for (offset, _end, flows), payload in zip(scan.records, payloads, strict=True):
            if cursor is not None and seq == cursor[0] and offset < cursor[1]:
                continue
            yield flows, payload


def _read_cursor(directory: Path) -> tuple[int, int, int] | None:
    try:
        raw = (directory / "cursor").read_bytes()
    except OSError:
        return None
    if len(raw) != _CURSOR.size:
        return None
    magic, seq, offset, inflight = _CURSOR.unpack(raw)
    if magic != _CURSOR_MAGIC:
        return None
    return seq, offset, inflight


# -- the spool ----------------------------------------------------------------------------------
class Spool:
    """A spool directory opened for writing and replaying (one process, one exporter).

    Thread-safe: one thread may append while another reads back. Opening takes an exclusive
    lock on the directory (:class:`SpoolBusyError` if another process holds it), recovers what a
    previous run left (cutting torn tails) and positions the reader after the last acknowledged
    record. Use as a context manager or call :meth:`close`.

    Reading back: :meth:`peek` returns the oldest record without removing it; call
    :meth:`begin` before handing it to the sink (persists "in flight", so that a crash during
    delivery is counted as a possible duplicate on restart), then :meth:`ack` when it was
    delivered or :meth:`release` when it was not.

    Metrics (``exporter`` label = ``name``): ``spool_written_flows``, ``spool_replayed_flows``,
    ``spool_recovered_flows``, ``spool_torn_records``, ``spool_torn_bytes``,
    ``spool_possible_duplicate_flows`` (counters) and the gauges ``spool_flows``,
    ``spool_bytes``, ``spool_segments``. Lost flows are not a spool metric: they go to
    ``on_drop(reason, flows)`` (the exporter's ``dropped_flows{exporter,reason}``) and
    :attr:`dropped`.
    """

    def __init__(
        self,
        config: SpoolConfig,
        *,
        name: str = "spool",
        metrics: Metrics | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.directory = Path(config.directory)
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._write_fd = -1
        self._read_fd = -1
        self._read_seq = -1
        self._read_offset = 0
        self._inflight: SpoolRecord | None = None
        self._bytes = 0
        self._flows = 0
        self._next_seq = 1
        self._closed = False
        self._problems = RateLimitedLog(log)
        self._on_drop = on_drop
        self.torn_records = 0
        """Records found cut short or corrupt when the spool was opened."""
        self.torn_bytes = 0
        """Bytes cut off when the spool was opened."""
        self.torn_flows = 0
        """Flows of the torn records, as their headers say (0 for a record whose header is cut
        short); dropped with reason ``spool_torn``."""
        self.recovered_flows = 0
        """Flows found in the spool when it was opened (left by a previous run), torn ones
        included."""
        self.dropped: dict[str, int] = {}
        """Flows this spool dropped, by reason (also reported through ``on_drop``)."""
        self.possible_duplicate_flows = 0
        """Flows of a record that was being delivered when a previous run died."""
        metrics = metrics or Metrics()
        labels = {"exporter": name}
        self._m_written = metrics.counter(
            "spool_written_flows", "Flows written to an exporter's disk spool", ["exporter"]
        ).labels(**labels)
        self._m_replayed = metrics.counter(
            "spool_replayed_flows", "Flows read back from a disk spool and delivered", ["exporter"]
        ).labels(**labels)
        self._m_recovered = metrics.counter(
            "spool_recovered_flows", "Flows found in a disk spool at start (left by an earlier "
            "run)", ["exporter"]
        ).labels(**labels)
        self._m_torn_records = metrics.counter(
            "spool_torn_records", "Records cut short or corrupt, cut off when a spool was opened",
            ["exporter"],
        ).labels(**labels)
        self._m_torn_bytes = metrics.counter(
            "spool_torn_bytes", "Bytes cut off a spool's torn or corrupt tails", ["exporter"]
        ).labels(**labels)
        self._m_duplicates = metrics.counter(
            "spool_possible_duplicate_flows", "Flows sent again after a restart because their "
            "delivery was in progress when the previous run died", ["exporter"]
        ).labels(**labels)
        self._g_flows = metrics.gauge(
            "spool_flows", "Flows waiting in a disk spool", ["exporter"]
        ).labels(**labels)
        self._g_bytes = metrics.gauge(
            "spool_bytes", "Bytes a disk spool takes on disk", ["exporter"]
        ).labels(**labels)
        self._g_segments = metrics.gauge(
            "spool_segments", "Segment files of a disk spool", ["exporter"]
        ).labels(**labels)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolBusyError(
                    f"spool directory {self.directory} is in use by another process or exporter"
                ) from None
            raise
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ----------------------------------------------------------------------------
    def _recover(self) -> None:
        cursor = _read_cursor(self.directory)
        found = _segments_in(self.directory)
        if found:
            self._next_seq = found[-1][0] + 1
        if cursor is not None:
            self._next_seq = max(self._next_seq, cursor[0] + 1)
        for seq, path in found:
            if cursor is not None and seq < cursor[0]:
                path.unlink(missing_ok=True)  # fully acknowledged before the previous run ended
                continue
            scan = _scan_segment(path)
            if scan.torn_records:
                self.torn_records += scan.torn_records
                self.torn_bytes += scan.torn_bytes
                self.torn_flows += scan.torn_flows
                log.warning(
                    "%s spool: cut %d bytes off %s at offset %d (%s); the torn record is dropped "
                    "(%d flows, reason spool_torn)",
                    self.name, scan.torn_bytes, path, scan.good_end, scan.reason, scan.torn_flows,
                )
            start = SEGMENT_HEADER.size
            if cursor is not None and seq == cursor[0]:
                boundaries = {offset for offset, _end, _flows in scan.records}
                if cursor[1] in boundaries or cursor[1] == scan.good_end:
                    start = cursor[1]
                    if cursor[2] and cursor[1] in boundaries:
                        flows = next(f for o, _e, f in scan.records if o == cursor[1])
                        self.possible_duplicate_flows += flows
                        log.warning(
                            "%s spool: a record of %d flows was being delivered when the "
                            "previous run stopped; it is sent again and may arrive twice",
                            self.name, flows,
                        )
            pending = [(o, e, f) for o, e, f in scan.records if o >= start]
            if not pending:
                path.unlink(missing_ok=True)
                continue
            if scan.good_end < os.path.getsize(path):
                os.truncate(path, scan.good_end)
            segment = _Segment(seq, path, scan.good_end)
            segment.records = len(pending)
            segment.flows = sum(f for _o, _e, f in pending)
            self._segments.append(segment)
            if len(self._segments) == 1:
                self._read_seq, self._read_offset = seq, start
        self._bytes = sum(s.size for s in self._segments)
        self._flows = sum(s.flows for s in self._segments)
        # The torn flows were left by the earlier run too: found here, and dropped at once.
        self.recovered_flows = self._flows + self.torn_flows
        if not self._segments:
            (self.directory / "cursor").unlink(missing_ok=True)
        self._m_recovered.inc(self.recovered_flows)
        self._m_torn_records.inc(self.torn_records)
        self._m_torn_bytes.inc(self.torn_bytes)
        self._m_duplicates.inc(self.possible_duplicate_flows)
        self._drop("spool_torn", self.torn_flows)
        self._update_gauges()
        if self._flows:
            log.info(
                "%s spool: %d flows in %d segments left by an earlier run in %s; replaying them "
                "first", self.name, self._flows, len(self._segments), self.directory,
            )

    # -- state ------------------------------------------------------------------------------
    @property
    def flows(self) -> int:
        """Flows waiting to be read back (including a record in flight)."""
        return self._flows

    @property
    def size_bytes(self) -> int:
        """Bytes the spool's segments take on disk."""
        return self._bytes

    def __len__(self) -> int:
        """Records waiting to be read back."""
        with self._lock:
            return sum(s.records for s in self._segments)

    def empty(self) -> bool:
        """True when nothing waits to be read back."""
        with self._lock:
            return self._flows == 0 and not any(s.records for s in self._segments)

    def _update_gauges(self) -> None:
        self._g_flows.set(self._flows)
        self._g_bytes.set(self._bytes)
        self._g_segments.set(len(self._segments))

    def _drop(self, reason: str, flows: int) -> None:
        if flows <= 0:
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + flows
        if self._on_drop is not None:
            self._on_drop(reason, flows)

    # -- writing ----------------------------------------------------------------------------
    def append(self, payload: bytes, flows: int) -> bool:
        """Append one record; False (and counted as dropped) if it cannot be kept."""
        size = RECORD_HEADER.size + len(payload)
        with self._lock:
            if self._closed:
                raise ValueError("this spool is closed")
            too_large = size + SEGMENT_HEADER.size > self.config.max_bytes
            if too_large or len(payload) > MAX_RECORD_BYTES:
                self._drop("spool_full", flows)
                self._problems.emit(
                    "too-large", logging.ERROR,
                    "%s spool: a record of %d bytes (%d flows) is larger than the whole budget "
                    "(%d bytes): dropped", self.name, size, flows, self.config.max_bytes,
                )
                return False
            try:
                segment = self._writable_segment(size)
                if not self._make_room(size):
                    self._drop("spool_full", flows)
                    return False
                self._write(segment, payload, flows)
            except OSError as exc:
                self._drop("spool_error", flows)
                self._problems.emit(
                    "write", logging.ERROR, "%s spool: cannot write to %s: %s; dropped %d flows",
                    self.name, self.directory, exc.strerror or exc, flows,
                )
                return False
            self._m_written.inc(flows)
            self._update_gauges()
        self._problems.recovered("write", logging.INFO, "%s spool: writing again", self.name)
        return True

    def _writable_segment(self, size: int) -> _Segment:
        active = self._active
        if active is not None and (
            active.size + size <= self.config.segment_bytes or active.size == SEGMENT_HEADER.size
        ):
            return active
        if active is not None:
            self._close_active()
        seq = self._next_seq
        self._next_seq += 1
        path = _segment_path(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0))
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self.config.fsync != "never":
            _fsync_directory(self.directory)
        segment = _Segment(seq, path, SEGMENT_HEADER.size)
        self._segments.append(segment)
        self._bytes += segment.size
        self._active, self._write_fd = segment, fd
        if len(self._segments) == 1:
            self._read_seq, self._read_offset = seq, SEGMENT_HEADER.size
        return segment

    def _close_active(self) -> None:
        if self._write_fd >= 0:
            try:
                if self.config.fsync != "never":
                    os.fdatasync(self._write_fd)
            finally:
                os.close(self._write_fd)
        self._active, self._write_fd = None, -1

    def _make_room(self, size: int) -> bool:
        """Drop the oldest segments until ``size`` more bytes fit the budget."""
        while self._bytes + size > self.config.max_bytes:
            victim = next(
                (
                    s
                    for s in self._segments
                    if s is not self._active
                    and not (self._inflight is not None and self._inflight.seq == s.seq)
                ),
                None,
            )
            if victim is None:
                self._problems.emit(
                    "full", logging.ERROR,
                    "%s spool is full (%d of %d bytes) and its oldest record is being "
                    "delivered: dropped a record", self.name, self._bytes, self.config.max_bytes,
                )
                return False
            self._remove_segment(victim)
            self._drop("spool_full", victim.flows)
            self._problems.emit(
                "full", logging.WARNING,
                "%s spool reached its budget of %d bytes: dropped its oldest segment (%d flows)",
                self.name, self.config.max_bytes, victim.flows,
            )
        return True

    def _write(self, segment: _Segment, payload: bytes, flows: int) -> None:
        length = len(payload)
        header = RECORD_HEADER.pack(length, flows, _crc(length, flows, payload))
        before = segment.size
        try:
            written = os.writev(self._write_fd, [header, payload])
            if written != len(header) + length:
                raise OSError(errno.ENOSPC, "short write (file system full?)")
            if self.config.fsync == "always":
                os.fdatasync(self._write_fd)
        except OSError:
            # Never leave a partial record behind: cut the file back to its last whole record.
            try:
                os.ftruncate(self._write_fd, before)
            except OSError:
                self._close_active()  # the next append starts a fresh segment
            raise
        segment.size += len(header) + length
        segment.records += 1
        segment.flows += flows
        self._bytes += len(header) + length
        self._flows += flows

    # -- reading back -----------------------------------------------------------------------
    def peek(self) -> SpoolRecord | None:
        """The oldest record not yet acknowledged, or None when the spool is empty."""
        with self._lock:
            while self._segments:
                segment = self._segments[0]
                if self._read_seq != segment.seq:
                    self._open_reader(segment)
                if self._read_offset >= segment.size:
                    if segment is self._active:
                        return None
                    self._remove_segment(segment)
                    continue
                record = self._read_record(segment)
                if record is not None:
                    return record
            return None

    def _open_reader(self, segment: _Segment) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._read_seq, self._read_offset = segment.seq, SEGMENT_HEADER.size

    def _read_record(self, segment: _Segment) -> SpoolRecord | None:
        if self._read_fd < 0:
            self._read_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        offset = self._read_offset
        raw = os.pread(self._read_fd, RECORD_HEADER.size, offset)
        payload = b""
        ok = len(raw) == RECORD_HEADER.size
        if ok:
            length, flows, crc = RECORD_HEADER.unpack(raw)
            ok = offset + RECORD_HEADER.size + length <= segment.size
            if ok:
                payload = os.pread(self._read_fd, length, offset + RECORD_HEADER.size)
                ok = len(payload) == length and _crc(length, flows, payload) == crc
        if ok:
            return SpoolRecord(segment.seq, offset, offset + RECORD_HEADER.size + length, flows,
                               payload)
        # Changed on disk since it was written or checked: drop the rest of this segment.
        self._problems.emit(
            "corrupt", logging.ERROR,
            "%s spool: %s is corrupt at offset %d; dropped its remaining %d flows",
            self.name, segment.path, offset, segment.flows,
        )
        self._drop("spool_corrupt", segment.flows)
        self._remove_segment(segment)
        return None

    def begin(self, record: SpoolRecord) -> None:
        """Mark ``record`` as being delivered (persisted, for duplicate counting after a crash)."""
        with self._lock:
            self._inflight = record
            self._write_cursor(record.seq, record.offset, record.flows)

    def release(self, record: SpoolRecord) -> None:
        """``record`` was not delivered: it stays first in line."""
        with self._lock:
            if self._inflight is record:
                self._inflight = None
                if self._segments and self._segments[0].seq == record.seq:
                    self._write_cursor(record.seq, record.offset, 0)

    def ack(self, record: SpoolRecord) -> None:
        """``record`` was delivered: remove it (and its segment once that is fully read)."""
        with self._lock:
            if self._inflight is record:
                self._inflight = None
            if not self._segments or self._segments[0].seq != record.seq or (
                self._read_offset != record.offset
            ):
                return  # not the head any more (cannot happen with one reader)
            segment = self._segments[0]
            self._read_offset = record.end
            segment.records -= 1
            segment.flows -= record.flows
            self._flows -= record.flows
            self._m_replayed.inc(record.flows)
            if segment.records == 0 and (segment is not self._active or self._read_offset
                                         >= segment.size):
                self._remove_segment(segment)
            else:
                self._write_cursor(record.seq, record.end, 0)
            self._update_gauges()

    def _write_cursor(self, seq: int, offset: int, inflight: int) -> None:
        data = _CURSOR.pack(_CURSOR_MAGIC, seq, offset, inflight)
        try:
            fd = os.open(self.directory / "cursor", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            self._problems.emit(
                "cursor", logging.WARNING,
                "%s spool: cannot record the replay position (%s): records may be sent twice "
                "after a restart", self.name, exc.strerror or exc,
            )

    def _remove_segment(self, segment: _Segment) -> None:
        index = self._segments.index(segment)
        del self._segments[index]
        if segment is self._active:
            self._close_active()
        if self._read_seq == segment.seq:
            if self._read_fd >= 0:
                os.close(self._read_fd)
                self._read_fd = -1
            self._read_seq = -1
        self._bytes -= segment.size
        self._flows -= segment.flows
        segment.path.unlink(missing_ok=True)
        if self._segments:
            head = self._segments[0]
            if self._read_seq != head.seq:
                self._open_reader(head)
            self._write_cursor(head.seq, self._read_offset, 0)
        else:
            (self.directory / "cursor").unlink(missing_ok=True)
        self._update_gauges()

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush (per the fsync policy), release the directory lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._close_active()
            finally:
                if self._read_fd >= 0:
                    os.close(self._read_fd)
                    self._read_fd = -1
                if self.config.fsync != "never":
                    _fsync_directory(self.directory)
                os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_directory(directory: Path) -> None:
    """Make new and removed file names durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
