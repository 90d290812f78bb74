"""The event store: every item each user interacted with, in the order it arrived.

Two back ends behind one small interface: SQLite in a file (the default, nothing to run) and
PostgreSQL when given a ``postgresql://`` URL (psycopg 3). Both keep raw item ids as text, items
the model does not know included, so a model trained later on an export of the store learns
them.

Durability: an append returns only after its transaction is committed to disk. SQLite runs in
WAL mode with ``synchronous=FULL`` (WAL alone, at its usual ``NORMAL``, may lose the last
commits on power loss); PostgreSQL is asked for ``synchronous_commit = on``. Appends from many
threads or processes are serialised by the database, never by this module, so none is lost.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bert4rec.data import Interactions
from bert4rec.errors import ConfigError

# Events are read back and exported in batches of this many rows.
EXPORT_BATCH = 10_000


class EventStore(Protocol):
    """What the service needs from a store. Items are text; order is arrival order."""

    url: str

    def append(self, user: str, items: Sequence[str]) -> int:
        """Append ``items`` to ``user``'s history, durably; return the user's event count."""
        ...

    def append_many(self, events: Iterable[tuple[str, str]]) -> int:
        """Append ``(user, item)`` pairs in one transaction; return how many."""
        ...

    def history(self, user: str) -> list[str]:
        """``user``'s items, oldest first; [] for a user with no events."""
        ...

    def users(self) -> set[str]:
        """Every user with at least one event."""
        ...

    def delete(self, user: str) -> int:
        """Remove all of ``user``'s events; return how many there were."""
        ...

    def events(self) -> Iterator[tuple[str, str]]:
        """Every ``(user, item)`` pair in arrival order."""
        ...

    def durability(self) -> dict[str, Any]:
        """The settings that make a commit durable, as the database reports them."""
        ...

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        ...

    def close(self) -> None: ...


def open_store(url: str | Path) -> EventStore:
    """A store for ``url``: ``postgresql://...`` (or ``postgres://``), ``sqlite:///path``, or a
    plain file path (SQLite)."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]  # sqlite:///relative, sqlite:////absolute
    elif "://" in text:
        raise ConfigError(
            f"unknown database URL {url!r}: give a file path (SQLite), sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST/DB"
        )
    return SQLiteStore(Path(text))


# ----------------------------------------------------------------------------------------------
# SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, id);
"""


class _ThreadConnections:
    """A connection per thread (neither sqlite3 nor psycopg connections are shared between
    threads), every one of them closed by :meth:`close`, whichever thread opened it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []

    def _remember(self, conn: Any) -> None:
        """``conn`` is this thread's connection from now on."""
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


class SQLiteStore(_ThreadConnections):
    """Events in one SQLite file. Each thread has its own connection (sqlite3 connections
    are not shared between threads); writers wait for each other up to ``timeout`` seconds."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        super().__init__()
        if not self.path.parent.is_dir():
            raise ConfigError(f"cannot create the event store {self.path}: "
                              f"{self.path.parent} is not a folder")
        with self._connect() as conn:
            conn.executescript(_SQLITE_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE).
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: the WAL is synced at every commit, so an acknowledged append survives
                # a power cut, not only a crash of this process.
                conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open the event store {self.path}: {exc}") from exc
            self._remember(conn)
        return conn

    def _write(self, rows: Iterable[tuple[str, str]]) -> int:
        conn = self._connect()
        # IMMEDIATE takes the write lock at once, so two writers never deadlock upgrading a
        # read lock; the second waits (timeout) and then appends after the first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.executemany("INSERT INTO events (user_id, item) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cursor.rowcount

    def append(self, user: str, items: Sequence[str]) -> int:
        self._write((user, item) for item in items)
        row = self._connect().execute(
            "SELECT COUNT(*) FROM events WHERE user_id = ?", (user,)).fetchone()
        return int(row[0])

    def append_many(self, events: Iterable[tuple[str, str]]) -> int:
        return self._write(events)

    def history(self, user: str) -> list[str]:
        rows = self._connect().execute(
            "SELECT item FROM events WHERE user_id = ? ORDER BY id", (user,)).fetchall()
        return [row[0] for row in rows]

    def users(self) -> set[str]:
        return {row[0] for row in self._connect().execute("SELECT DISTINCT user_id FROM events")}

    def delete(self, user: str) -> int:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute("DELETE FROM events WHERE user_id = ?", (user,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cursor.rowcount

    def events(self) -> Iterator[tuple[str, str]]:
        cursor = self._connect().execute("SELECT user_id, item FROM events ORDER BY id")
        while batch := cursor.fetchmany(EXPORT_BATCH):
            yield from batch

    def durability(self) -> dict[str, Any]:
        conn = self._connect()
        return {"journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0]}

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()


# ----------------------------------------------------------------------------------------------
# PostgreSQL

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, id);
"""


class PostgresStore(_ThreadConnections):
    """Events in a PostgreSQL table; a connection per thread, each transaction committed with
    ``synchronous_commit = on`` (the commit waits for its WAL record to reach disk)."""

    def __init__(self, url: str, connect_timeout: int = 5) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        super().__init__()
        conn = self._connect()
        with conn.transaction():
            # Two services starting at once would race to create the table.
            conn.execute("SELECT pg_advisory_xact_lock(4242)")
            conn.execute(_PG_SCHEMA)

    def _connect(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:  # broken: the server went away
            import psycopg

            try:
                conn = psycopg.connect(self.url, autocommit=True,
                                       connect_timeout=self.connect_timeout)
            except psycopg.Error as exc:
                raise ConfigError(f"cannot connect to the event store {redact(self.url)}: "
                                  f"{str(exc).strip()}") from exc
            conn.execute("SET synchronous_commit = on")
            self._remember(conn)
        return conn

    def append(self, user: str, items: Sequence[str]) -> int:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO events (user_id, item) VALUES (%s, %s)",
                            [(user, item) for item in items])
        row = conn.execute("SELECT COUNT(*) FROM events WHERE user_id = %s", (user,)).fetchone()
        return int(row[0])

    def append_many(self, events: Iterable[tuple[str, str]]) -> int:
        conn = self._connect()
        count = 0
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY events (user_id, item) FROM STDIN") as copy:
            for event in events:
                copy.write_row(event)
                count += 1
        return count

    def history(self, user: str) -> list[str]:
        rows = self._connect().execute(
            "SELECT item FROM events WHERE user_id = %s ORDER BY id", (user,)).fetchall()
        return [row[0] for row in rows]

    def users(self) -> set[str]:
        return {row[0] for row in self._connect().execute("SELECT DISTINCT user_id FROM events")}

    def delete(self, user: str) -> int:
        conn = self._connect()
        with conn.transaction():
            cursor = conn.execute("DELETE FROM events WHERE user_id = %s", (user,))
        return int(cursor.rowcount)

    def events(self) -> Iterator[tuple[str, str]]:
        conn = self._connect()
        # A server-side cursor streams the table instead of loading it whole.
        with conn.transaction(), conn.cursor(name="bert4rec_export") as cur:
            cur.itersize = EXPORT_BATCH
            cur.execute("SELECT user_id, item FROM events ORDER BY id")
            yield from cur

    def durability(self) -> dict[str, Any]:
        conn = self._connect()
        return {"synchronous_commit": conn.execute("SHOW synchronous_commit").fetchone()[0],
                "fsync": conn.execute("SHOW fsync").fetchone()[0]}

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()


def redact(url: str) -> str:
    """``url`` with its password shown as ``***``, wherever it is (``user:password@host`` or a
    ``password=`` parameter), for messages and status pages."""
    parts = urllib.parse.urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    hidden = [key.lower() == "password" for key, _ in pairs]
    in_user = bool(at) and ":" in user
    if not in_user and not any(hidden):
        return url  # nothing to hide: unchanged (an SQLite path keeps its slashes)
    if in_user:
        user = user.split(":", 1)[0] + ":***"
    query = urllib.parse.urlencode(
        [(key, "***" if hide else value) for (key, value), hide in zip(pairs, hidden, strict=True)],
        safe="*")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{at}{host}", query=query))


def export_pairs(store: EventStore, path: Path) -> int:
    """Write every event as a ``user item`` line, in arrival order (the ``pairs`` format
    ``bert4rec train`` reads); return the number of lines. Written to a temporary name first."""
    from bert4rec.runs import atomic_write

    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            for user, item in store.events():
                f.write(f"{user} {item}\n")
                count += 1

    atomic_write(path, write)
    return count


def import_interactions(store: EventStore, data: Interactions) -> tuple[int, int, int]:
    """Append every user's items from ``data`` (original ids, in time order), except users the
    store already holds, so importing twice changes nothing. Returns (users imported, events
    imported, users skipped)."""
    present = store.users()
    users = [str(u) for u in data.user_ids.tolist()]
    original = data.vocab.item_ids[data.items.astype(np.int64) - 1].tolist()  # (interactions,)
    keep = [u not in present for u in users]

    def rows() -> Iterator[tuple[str, str]]:
        for u, user in enumerate(users):
            if keep[u]:
                for item in original[data.offsets[u] : data.offsets[u + 1]]:
                    yield user, str(item)

    events = store.append_many(rows())
    imported = sum(keep)
    return imported, events, len(users) - imported
