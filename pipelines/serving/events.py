"""Feedback events: validated against the canonical schema, appended durably to the log the next training reads.

The log is a canonical events directory, ``<root>/data/incoming/events/part-<ns>-<id>.parquet``, one file per
acknowledged batch with ``LOG_SCHEMA``: the canonical ``EVENTS_SCHEMA`` plus the ``request_id`` of the list the
event answers (where the client sent it; online experiments credit the event to that list). Readers with
``EVENTS_SCHEMA``, such as ``pipelines.data.events_io.read_events(<root>/data/incoming)`` and any stage that reads
a data set's ``events/``, see the canonical columns. A batch is written to a hidden temporary file,
flushed and fsynced, renamed into place and the directory fsynced before the API acknowledges it: an
acknowledged batch survives a crash or restart; a batch interrupted before that leaves at most a hidden
temporary file, which readers ignore. An anonymous shopper's event (a session id, no user id) is logged with the
user id ``session:<session_id>``, so the next training learns from the session as from a user.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from pipelines.data.schema import EVENTS_SCHEMA, events_dir

MAX_ID_CHARS = 128
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no control characters (C0, DEL, C1)
ANONYMOUS_USER_PREFIX = "session:"  # the logged user id of an event without one
LOG_SCHEMA = EVENTS_SCHEMA.append(pa.field("request_id", pa.string()))


def printable_id(value: str) -> str:
    """Reject what the pattern cannot express: lone surrogates, which no UTF-8 log could store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                          description=f"1-{MAX_ID_CHARS} characters, no control characters"),
               AfterValidator(printable_id)]
EventType = Literal["view", "cart", "fav", "purchase"]


def _datetime_text(value: object) -> object:
    """Only date-time strings (or datetimes from code): no epoch numbers slipping through lax parsing."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date-time string with a time zone")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_datetime_text),
                      Field(description="ISO 8601 date-time with a time zone, e.g. 2017-12-01T10:00:00Z")]


class _EventFields(BaseModel):
    """What every feedback event carries; ``ts`` must carry a time zone and is stored in UTC."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    event_type: EventType
    ts: Timestamp
    category_id: Id | None = None
    request_id: Id | None = Field(None, description="the request_id of the list this event answers, if any")

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("timestamp out of range") from None


class UserEvent(_EventFields):
    """An event of a known shopper (``user_id``), optionally within a session."""

    user_id: Id
    session_id: Id | None = None

    @property
    def logged_user_id(self) -> str:
        return self.user_id


class AnonymousEvent(_EventFields):
    """An event of an anonymous shopper, known only by their ``session_id``."""

    session_id: Id

    @property
    def user_id(self) -> None:
        return None

    @property
    def logged_user_id(self) -> str:
        return f"{ANONYMOUS_USER_PREFIX}{self.session_id}"


Event = UserEvent | AnonymousEvent  # one feedback event in the canonical schema


class EventLog:
    """Appends batches of events to ``<directory>/events/`` as fsynced Parquet files."""

    def __init__(self, directory: str | Path):
        self.directory = events_dir(directory)
        self._lock = threading.Lock()

    def append(self, events: list[Event]) -> str:
        """Write ``events`` durably; returns the batch file's name. Blocks for a write + fsync (milliseconds)."""
        rows = [e.model_dump() | {"user_id": e.logged_user_id} for e in events]
        frame = pd.DataFrame(rows, columns=[f.name for f in LOG_SCHEMA])
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
        table = pa.Table.from_pandas(frame, schema=LOG_SCHEMA, preserve_index=False)
        with self._lock:
            return write_batch(self.directory, table)


def write_batch(directory: Path, table: pa.Table) -> str:
    """Write ``table`` as a new ``part-<ns>-<id>.parquet`` of ``directory``, durably: a hidden temporary file,
    flushed and fsynced, renamed into place, the directory fsynced. Returns the file's name."""
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    if not directory.is_dir():
        directory.mkdir(parents=True)
        fsync_dir(directory.parent)  # the new directory's own entry must be durable too
    tmp = directory / f".{name}.tmp"
    try:
        with tmp.open("wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(directory)
    return name


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself must reach the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
