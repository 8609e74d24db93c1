"""Impressions: every list the API serves, logged durably with a request id before the response leaves.

Online experiments (issue 15) attribute clicks, carts and purchases to the lists shoppers were shown, so each
served list is logged: request id, time, surface (user / session / similar), arm and the response body (shopper,
model version, items and positions); ``read_impressions`` expands them to one row per item. One fsynced file per
request would cost a file and ~1 ms of disk each, so writes are group commits: the lists of one event-loop step
are appended as one Arrow IPC record batch to the process's open segment
(``<dir>/impressions/segment-<ns>-<id>.arrows``) and wait; one sync thread fsyncs the segment and releases every
list written before that fsync. A segment is rolled after ``SEGMENT_ROWS`` lists. A crash can leave a torn last
batch, which ``read_impressions`` ignores: only acknowledged (fsynced) batches are ever read. Pending lists are
bounded: past ``max_pending`` the request fails (503) instead of memory growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipelines.core.errors import ShoprecError
from pipelines.serving.events import fsync_dir

SEGMENT_ROWS = 1_000_000
# one row per served list: the response body as sent (without its request id) holds the shopper, model version
# and items; parsing it here cost more than the rest of a cache hit (k=200: ~0.5 ms), so it is parsed when read
LOG_SCHEMA = pa.schema([("request_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("surface", pa.string()),
                        ("arm", pa.string()), ("body", pa.binary())])
# what ``read_impressions`` gives: one row per listed item
SCHEMA = pa.schema([("request_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("user_id", pa.string()),
                    ("session_id", pa.string()), ("model_version", pa.string()), ("arm", pa.string()),
                    ("surface", pa.string()), ("item_id", pa.string()), ("position", pa.int16())])


_ID_PREFIX = secrets.token_hex(8)  # per process; with a counter, ids are unique across processes and restarts
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """32 hex digits: the process's random prefix and its request counter (a uuid4 per request cost ~9 us, most of
    it the urandom system call)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def with_request_id(body: bytes) -> tuple[str, bytes]:
    """A new request id and the JSON object ``body`` with it as its first field (cached bodies are shared)."""
    request_id = new_request_id()
    return request_id, b'{"request_id":"' + request_id.encode() + b'",' + body[1:]


Waiter = Future[None] | asyncio.Future[None]  # a request waiting for its rows to be on disk


def _release(waiters: list[Waiter], exc: BaseException | None) -> None:
    """Complete every waiter of a commit. An event loop's futures are completed by one callback per loop, not
    one wake-up of the loop per request (that cost ~10 us a list at saturation)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for done in waiters:
        if isinstance(done, asyncio.Future):
            by_loop.setdefault(done.get_loop(), []).append(done)
        elif exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, futures, exc)


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for done in futures:
        if done.done():  # the request was cancelled (client gone)
            continue
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)


class ImpressionBacklog(ShoprecError):
    """More impression rows are waiting for the disk than the log holds: the request is refused (503)."""


class ImpressionLog:
    """Group-committed, fsynced impression rows; ``await log.log(request_id, body, surface, arm)`` per response.

    Rows are written (to the page cache) by the thread that serves them, one record batch per event-loop step,
    and a sync thread fsyncs the segment and releases every request written before that fsync. The sync thread
    runs no Python while the disk works and one short step after, so it barely competes with the event loop for
    the GIL: a writer thread that built and wrote the batches itself cost ~75 us of CPU per list at saturation,
    most of it the two threads handing the GIL to each other.
    """

    def __init__(self, directory: str | Path, max_pending: int = 10_000):
        self.directory = Path(directory) / "impressions"
        self.max_pending = max_pending
        self._pending_rows = 0  # staged and written rows not yet fsynced: what max_pending bounds
        self._staged: dict[asyncio.AbstractEventLoop, list[tuple[tuple[Any, ...], asyncio.Future[None]]]] = {}
        self._unsynced: list[Waiter] = []  # written, waiting for the next fsync (in write order)
        self._unsynced_rows = 0
        self._io = threading.Lock()  # the open segment: writes, rolls and the fsync's file descriptor
        self._lock = threading.Condition()  # the counters, the waiting requests and the sync thread
        self._closed = False
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._file: Any = None
        self._segment_rows = 0
        self._thread: threading.Thread | None = None  # started by the first write

    async def log(self, request_id: str, body: bytes, surface: str, arm: str = "champion") -> None:
        """Log the list in ``body`` (a recommendations or similar-items response) as ``request_id``; returns once
        it is on disk.

        The row is staged in the event loop and written by one callback after the loop's current step, together
        with the rows of every other request that step served, as one record batch. Alone, a request is written
        at once (no added wait).
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._reserve(1)  # counted now, so the bound holds for staged rows too
        staged = self._staged.setdefault(loop, [])
        staged.append(((request_id, time.time_ns() // 1000, surface, arm, body), done))
        if len(staged) == 1:
            loop.call_soon(self._hand_over, loop)
        await done

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write every row the loop staged since the last hand-over as one batch, for the next fsync."""
        staged = self._staged.pop(loop, [])
        self._write([row for row, _ in staged], [done for _, done in staged])

    def submit(self, rows: list[tuple[Any, ...]]) -> Future[None]:
        """Write ``rows`` as one batch from any thread; the future completes once they are fsynced."""
        done: Future[None] = Future()
        self._reserve(len(rows))
        self._write(rows, [done])
        return done

    def _reserve(self, rows: int) -> None:
        """Count ``rows`` as pending, or refuse them (``ImpressionBacklog``) past ``max_pending``."""
        with self._lock:
            if self._pending_rows + rows > self.max_pending:
                raise ImpressionBacklog(f"impression log backlog over {self.max_pending} rows: disk too slow")
            self._pending_rows += rows

    def _write(self, rows: list[tuple[Any, ...]], waiters: list[Waiter]) -> None:
        """One record batch of ``rows`` appended to the open segment; its ``waiters`` wait for the next fsync
        (or fail now, with the rows uncounted, if the write fails: the next batch starts a new segment)."""
        try:
            columns = list(zip(*rows, strict=True)) if rows else [()] * len(LOG_SCHEMA)
            record = pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, LOG_SCHEMA,
                                                                                         strict=True)],
                                                schema=LOG_SCHEMA)
            with self._io:
                self._segment().write_batch(record)
                self._file.flush()
                self._segment_rows += len(rows)
                if self._segment_rows >= SEGMENT_ROWS:
                    self._close_segment()  # fsyncs it: what it holds is on disk
                self._queue_for_sync(rows, waiters)  # under the segment lock: see _sync
        except Exception as exc:
            with self._io:
                self._close_segment_quietly()
            with self._lock:
                self._pending_rows -= len(rows)
            _release(waiters, exc)

    def _queue_for_sync(self, rows: list[tuple[Any, ...]], waiters: list[Waiter]) -> None:
        with self._lock:
            self._unsynced.extend(waiters)
            self._unsynced_rows += len(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="impressions-fsync", daemon=True)
                self._thread.start()
            self._lock.notify()

    def close(self) -> None:
        """Fsync what is written, close the segment and stop the sync thread (the next write starts a new one)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._io:
            self._close_segment()
        with self._lock:
            self._closed, self._thread = False, None

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._unsynced and not self._closed:
                    self._lock.wait()
                waiters, rows, self._unsynced, self._unsynced_rows = self._unsynced, self._unsynced_rows, [], 0
                closed = self._closed
            if waiters:
                self._sync(waiters, rows)
            if closed:
                return

    def _sync(self, waiters: list[Waiter], rows: int) -> None:
        """One fsync for every batch written so far, then their requests are released. A failed fsync fails them
        and every row written to the segment since, and rolls the segment: the next batch starts a new one (after
        a failed fsync the kernel may have dropped the pages, so a later fsync of that file proves nothing)."""
        with self._io:  # a duplicate descriptor: the segment may be rolled and closed during the fsync
            fd = os.dup(self._file.fileno()) if self._file is not None else None
        if fd is not None:  # None: the segment was rolled (and fsynced) since these rows were written
            try:
                os.fsync(fd)
            except OSError as exc:
                with self._io:  # no write queues rows meanwhile; those queued since are failed too (safe)
                    self._close_segment_quietly()
                    with self._lock:
                        waiters, self._unsynced = waiters + self._unsynced, []
                        rows, self._unsynced_rows = rows + self._unsynced_rows, 0
                        self._pending_rows -= rows
                _release(waiters, exc)
                return
            finally:
                os.close(fd)
        with self._lock:
            self._pending_rows -= rows
        _release(waiters, None)

    def _segment(self) -> pa.ipc.RecordBatchStreamWriter:
        if self._writer is None:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True)
            name = f"segment-{time.time_ns()}-{uuid.uuid4().hex[:8]}.arrows"
            self._file = (self.directory / name).open("wb")
            self._writer = pa.ipc.new_stream(self._file, LOG_SCHEMA)
            self._segment_rows = 0
            fsync_dir(self.directory)  # the new segment's entry must survive a crash too
        return self._writer

    def _close_segment(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._writer, self._file = None, None

    def _close_segment_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._close_segment()
        self._writer, self._file = None, None


# the fields of a logged response body that impressions keep (DuckDB's from_json structure)
_BODY = ('{"user_id": "VARCHAR", "session_id": "VARCHAR", "model_version": "VARCHAR", '
         '"items": [{"item_id": "VARCHAR", "rank": "SMALLINT"}]}')


def read_impressions(directory: str | Path) -> pa.Table:
    """Every acknowledged impression under ``directory``, one row per listed item (``SCHEMA``), in log order; a
    torn last batch of a crashed writer is left out. The bodies are parsed by DuckDB, not row by row in Python."""
    batches = [b for path in sorted((Path(directory) / "impressions").glob("segment-*.arrows"))
               for b in _batches(path)]
    if not batches:
        return SCHEMA.empty_table()
    logged = pa.Table.from_batches(batches, LOG_SCHEMA)
    con = duckdb.connect()
    con.register("logged", logged.append_column("n", pa.array(range(logged.num_rows), pa.int64())))
    return con.sql(f"""
        WITH parsed AS (SELECT n, request_id, ts, surface, arm, from_json(decode(body), '{_BODY}') AS j FROM logged)
        SELECT request_id, ts,
               CASE WHEN surface = 'similar' THEN NULL ELSE j.user_id END AS user_id,
               CASE WHEN surface = 'similar' THEN NULL ELSE j.session_id END AS session_id,
               j.model_version, arm, surface, item.item_id, item.rank AS position
        FROM parsed, unnest(j.items) AS listed(item)
        ORDER BY n, position
    """).to_arrow_table().cast(SCHEMA)


def _batches(path: Path) -> list[pa.RecordBatch]:
    """The complete record batches of one segment (reading stops at a torn tail)."""
    out = []
    with path.open("rb") as fh:
        try:
            reader = pa.ipc.open_stream(fh)
            while True:
                out.append(reader.read_next_batch())
        except (StopIteration, pa.ArrowInvalid, OSError):
            pass  # end of the stream, or a torn tail after the last complete batch
    return out
