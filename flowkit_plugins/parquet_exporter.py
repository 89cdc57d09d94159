"""The ``parquet`` exporter: flows as Parquet files in a hive-partitioned directory.

Layout: ``PARQUET_DIRECTORY/date=YYYY-MM-DD/hour=HH/flows-<start>-<pid>-<seq>.parquet``; the
partition is the UTC hour of each flow's ``time_start``. The schema is
:func:`flowkit.arrow.flow_schema` (``docs/python.md``); readers add ``date`` and ``hour`` from
the directory names (pyarrow.dataset, ``polars.scan_parquet(..., hive_partitioning=True)``,
DuckDB ``read_parquet(..., hive_partitioning = true)``).

A file is written as ``.flows-....parquet.tmp`` (hidden from readers: pyarrow skips names that
start with a dot, and ``*.parquet`` globs do not match) and renamed once it is complete and
synced, so a reader never sees a half-written file and a killed agent leaves no corrupt
``.parquet`` behind; the next start removes temporary files of processes that no longer run.

Rows are buffered per partition until PARQUET_ROW_GROUP_SIZE of them make a row group; memory
is bounded by PARQUET_MAX_OPEN_FILES x PARQUET_ROW_GROUP_SIZE rows (about 100 bytes each). A
file is closed (and renamed) when it reaches PARQUET_MAX_FILE_SIZE bytes or
PARQUET_MAX_FILE_AGE, when more than PARQUET_MAX_OPEN_FILES partitions are open (the one written
longest ago), and at shutdown.

Every flow handed to ``export`` ends in a renamed file or is counted in the agent's one drop
family, ``dropped_flows{exporter="parquet",reason}``: ``error`` (the file system refused a write:
the flows of the file being written and the buffered ones are lost) or ``shutdown``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from flowkit import hookimpl
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import Duration

log = logging.getLogger(__name__)

_NS_PER_HOUR = 3_600_000_000_000
STATISTICS_COLUMNS = ("time_start", "time_end", "src_ip", "dst_ip", "src_port", "dst_port",
                      "proto", "if_index", "direction", "packets", "bytes")
"""Columns whose row groups carry min/max statistics."""
_FILE_SEQUENCE = itertools.count(1)
_TEMP = re.compile(r"^\.flows-.*-(?P<pid>\d+)-\d+\.parquet\.tmp$")


class ParquetSettings(BaseModel):
    """Settings of the ``parquet`` exporter."""

    parquet_directory: str = Field(
        default="",
        validate_default=True,
        description="Directory the Parquet files are written to (created if missing), "
        "partitioned as date=YYYY-MM-DD/hour=HH by flow start (UTC). Required.",
    )
    parquet_compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = Field(
        default="zstd", description="Parquet compression codec."
    )
    parquet_row_group_size: int = Field(
        default=131072,
        ge=1024,
        le=1 << 22,
        description="Flows per row group; flows are buffered in memory (per open file) until "
        "a row group is full.",
    )
    parquet_max_file_size: int = Field(
        default=128 << 20,
        ge=1 << 12,
        description="Bytes after which a file is closed and a new one started (checked after "
        "each row group, so a file can exceed it by one row group).",
    )
    parquet_max_file_age: Duration = Field(
        default=300.0,
        gt=0,
        description="A file open for this long is closed (and its buffered flows written), "
        "even without new flows.",
    )
    parquet_max_open_files: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Partitions (hours) written at once; beyond it the least recently written "
        "file is closed.",
    )

    @field_validator("parquet_directory")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("PARQUET_DIRECTORY is required with the parquet exporter")
        return value


@dataclass
class _OpenFile:
    """One partition's file being written, and the flows waiting for its next row group."""

    partition: int  # hours since the epoch (UTC)
    temp: Path
    final: Path
    writer: Any
    opened: float
    last_write: float
    rows_written: int = 0
    pending: list[Any] = field(default_factory=list)
    pending_rows: int = 0


class ParquetExporter:
    """Writes batches to Parquet files (implements ``Exporter``); see the module docstring.

    Flows count as exported (in the agent's books, ``account``) once their file is renamed
    complete, and as dropped (``error``, ``shutdown``) when they will never be in one.
    """

    accounts_delivery = True

    def __init__(
        self, settings: ParquetSettings, metrics: Any = None, account: ExporterAccount | None = None
    ) -> None:
        from flowkit.arrow import flow_schema, require_pyarrow

        require_pyarrow("the parquet exporter")
        import pyarrow
        import pyarrow.parquet as pq

        self._pa = pyarrow
        self._pq = pq
        self._schema = flow_schema()
        self._dictionary_columns = [f.name for f in self._schema
                                    if isinstance(f.type, pyarrow.DictionaryType)]
        self._statistics_columns = [name for name in STATISTICS_COLUMNS
                                    if name in self._schema.names]
        self.settings = settings
        self.directory = Path(settings.parquet_directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"PARQUET_DIRECTORY {self.directory}: {exc.strerror}") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"PARQUET_DIRECTORY {self.directory} is not writable")
        self._remove_stale_temporaries()
        self._files: dict[int, _OpenFile] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._problems = RateLimitedLog(log)
        self._files_done = self._written = None
        if metrics is not None:
            self._files_done = metrics.counter("parquet_files", "Parquet files completed")
            self._written = metrics.counter(
                "parquet_written_flows", "Flows in completed Parquet files")
        self.dropped_flows = 0
        self.written_flows = 0
        self._account = account if account is not None else ExporterAccount("parquet", metrics)
        self.completed: list[Path] = []
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._age_loop, name="flowkit-parquet-age",
                                       daemon=True)
        self._timer.start()

    # -- Exporter protocol ------------------------------------------------------------------
    def export(self, batch: FlowBatch) -> None:
        """Buffer the batch's flows in their partitions; write full row groups."""
        if len(batch) == 0:
            return
        record_batch = batch.to_arrow()
        hours = batch.array["start_ns"] // np.uint64(_NS_PER_HOUR)
        first = hours[0]
        with self._lock:
            if self._closed:
                self._drop(len(batch), "shutdown")
                return
            if (hours == first).all():
                self._add(int(first), record_batch)
            else:
                for hour in np.unique(hours):
                    rows = np.flatnonzero(hours == hour)
                    self._add(int(hour), record_batch.take(rows))

    def flush(self, timeout: float) -> bool:
        """Write every buffered flow as a row group (files stay open)."""
        with self._lock:
            for open_file in list(self._files.values()):
                self._write_pending(open_file)
        return True

    def shutdown(self, timeout: float) -> None:
        """Write everything and complete (rename) every open file."""
        self._stop.set()
        with self._lock:
            self._closed = True
            for open_file in list(self._files.values()):
                self._complete(open_file)
        self._timer.join(2.0)

    # -- internals (called with the lock held) ----------------------------------------------
    def _add(self, partition: int, record_batch: Any) -> None:
        open_file = self._files.get(partition) or self._open(partition)
        if open_file is None:
            self._drop(record_batch.num_rows, "error")
            return
        open_file.pending.append(record_batch)
        open_file.pending_rows += record_batch.num_rows
        if open_file.pending_rows >= self.settings.parquet_row_group_size:
            self._write_pending(open_file, whole_groups_only=True)
        if open_file.partition in self._files:
            self._rotate_if_due(open_file, time.monotonic())

    def _open(self, partition: int) -> _OpenFile | None:
        while len(self._files) >= self.settings.parquet_max_open_files:
            oldest = min(self._files.values(), key=lambda f: f.last_write)
            self._complete(oldest)
        start = time.gmtime(partition * 3600)
        folder = self.directory / time.strftime("date=%Y-%m-%d/hour=%H", start)
        # The sequence number is the process's, not this exporter's: two exporters of one
        # process (or one restarted) opening files in the same second must not pick the same
        # name, or the second rename would replace the first file.
        stem = f"flows-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-" \
               f"{next(_FILE_SEQUENCE):06d}"
        temp = folder / f".{stem}.parquet.tmp"
        compression = self.settings.parquet_compression
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writer = self._pq.ParquetWriter(
                str(temp), self._schema,
                compression="none" if compression == "none" else compression,
                # Dictionary pages only for the name columns: addresses, ports and counters
                # rarely repeat enough to gain, and trying costs a third of the CPU time.
                use_dictionary=self._dictionary_columns,
                # Min/max statistics (for readers that skip row groups) on the columns queries
                # filter on; computing them for every column costs a fifth of the CPU time.
                write_statistics=self._statistics_columns,
            )
        except OSError as exc:
            self._problems.emit("write", logging.ERROR, "parquet: cannot create %s: %s", temp, exc)
            return None
        now = time.monotonic()
        open_file = _OpenFile(partition, temp, folder / f"{stem}.parquet", writer, now, now)
        self._files[partition] = open_file
        return open_file

    def _write_pending(self, open_file: _OpenFile, whole_groups_only: bool = False) -> None:
        """Write the buffered flows as row groups of PARQUET_ROW_GROUP_SIZE (the rest as a
        smaller last one, unless ``whole_groups_only``: then it stays buffered)."""
        size = self.settings.parquet_row_group_size
        rows = open_file.pending_rows
        if whole_groups_only:
            rows -= rows % size
        if rows == 0:
            return
        table = self._pa.Table.from_batches(open_file.pending, schema=self._schema)
        rest = table.slice(rows)
        open_file.pending = rest.to_batches() if rest.num_rows else []
        open_file.pending_rows = rest.num_rows
        try:
            open_file.writer.write_table(table.slice(0, rows), row_group_size=size)
        except OSError as exc:
            self._fail(open_file, rows, exc)
            return
        open_file.rows_written += rows
        open_file.last_write = time.monotonic()

    def _rotate_if_due(self, open_file: _OpenFile, now: float) -> None:
        if now - open_file.opened >= self.settings.parquet_max_file_age:
            self._complete(open_file)
            return
        with contextlib.suppress(OSError):
            if open_file.temp.stat().st_size >= self.settings.parquet_max_file_size:
                self._complete(open_file)

    def _complete(self, open_file: _OpenFile) -> None:
        """Write the rest, close, sync and rename the file (or count its flows as dropped)."""
        self._write_pending(open_file)
        if self._files.get(open_file.partition) is not open_file:
            return  # the write failed and the file is gone
        del self._files[open_file.partition]
        try:
            open_file.writer.close()
            fd = os.open(open_file.temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(open_file.temp, open_file.final)
            dir_fd = os.open(open_file.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._files[open_file.partition] = open_file
            self._fail(open_file, 0, exc)
            return
        self._problems.recovered("write", logging.INFO, "parquet: writing files again")
        self.completed.append(open_file.final)
        self.written_flows += open_file.rows_written
        self._account.delivered(open_file.rows_written)
        if self._written is not None:
            self._written.inc(open_file.rows_written)
        if self._files_done is not None:
            self._files_done.inc()
        log.debug("parquet: wrote %s (%d flows)", open_file.final, open_file.rows_written)

    def _fail(self, open_file: _OpenFile, rows: int, exc: OSError) -> None:
        """A write failed: the file is abandoned with every flow in it."""
        self._problems.emit("write", logging.ERROR, "parquet: writing %s failed: %s",
                            open_file.temp, exc)
        self._files.pop(open_file.partition, None)
        with contextlib.suppress(Exception):
            open_file.writer.close()
        with contextlib.suppress(OSError):
            open_file.temp.unlink()
        self._drop(rows + open_file.rows_written + open_file.pending_rows, "error")
        open_file.pending, open_file.pending_rows, open_file.rows_written = [], 0, 0

    def _drop(self, flows: int, reason: str) -> None:
        if flows <= 0:
            return
        self.dropped_flows += flows
        self._account.dropped(flows, reason)

    def _age_loop(self) -> None:
        period = min(1.0, self.settings.parquet_max_file_age / 4)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                for open_file in list(self._files.values()):
                    if now - open_file.opened >= self.settings.parquet_max_file_age:
                        self._complete(open_file)

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of writers that no longer run (a killed agent's)."""
        for path in self.directory.glob("date=*/hour=*/.flows-*.parquet.tmp"):
            match = _TEMP.match(path.name)
            if match is None:
                continue
            pid = int(match["pid"])
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    path.unlink()
                    log.info("parquet: removed %s, left by a process that stopped", path)


def _make(context: ComponentContext) -> ParquetExporter:
    assert isinstance(context.settings, ParquetSettings)
    return ParquetExporter(context.settings, context.metrics, context.account)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    """The ``parquet`` exporter."""
    return [
        ExporterSpec(
            name="parquet",
            factory=_make,
            settings_model=ParquetSettings,
            requires=("pyarrow",),
            extra="arrow",
            description="Parquet files, hive-partitioned by date and hour, zstd, rotated by "
            "size and age",
        )
    ]
