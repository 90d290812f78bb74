"""The event store, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from conftest import TinyRun

from bert4rec.data import PrepareOptions, load_interactions
from bert4rec.errors import ConfigError
from bert4rec.service.store import (
    EventStore,
    export_pairs,
    import_interactions,
    open_store,
    redact,
)


def test_append_keeps_order_and_counts(store: EventStore) -> None:
    assert store.append("u1", ["3", "1"]) == 2
    assert store.append("u2", ["9"]) == 1
    assert store.append("u1", ["2", "new-item"]) == 4
    assert store.history("u1") == ["3", "1", "2", "new-item"]
    assert store.history("nobody") == []
    assert store.users() == {"u1", "u2"}


def test_delete_removes_only_that_user(store: EventStore) -> None:
    store.append("u1", ["1", "2"])
    store.append("u2", ["3"])
    assert store.delete("u1") == 2
    assert store.delete("u1") == 0
    assert store.history("u1") == []
    assert store.history("u2") == ["3"]


def test_events_in_arrival_order(store: EventStore) -> None:
    store.append("a", ["1"])
    store.append("b", ["2"])
    store.append("a", ["3"])
    assert list(store.events()) == [("a", "1"), ("b", "2"), ("a", "3")]


def test_durability_settings(store: EventStore, db_url: str) -> None:
    settings = store.durability()
    if db_url.startswith("postgresql"):
        assert settings["synchronous_commit"] == "on"
        assert settings["fsync"] == "on"
    else:
        assert settings == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL


def test_events_survive_reopening(open_db) -> None:  # type: ignore[no-untyped-def]
    first = open_db()
    first.append("u1", ["1", "2"])
    first.close()
    second = open_db()
    assert second.history("u1") == ["1", "2"]
    second.close()


def test_concurrent_threads_lose_no_event(store: EventStore) -> None:
    def write(worker: int) -> None:
        for i in range(25):
            store.append(f"u{worker % 3}", [f"{worker}-{i}"])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = list(store.events())
    assert len(events) == 200
    assert {item for _, item in events} == {f"{w}-{i}" for w in range(8) for i in range(25)}
    for worker in range(8):  # each writer's own events stay in its order
        mine = [item for _, item in events if item.startswith(f"{worker}-")]
        assert mine == [f"{worker}-{i}" for i in range(25)]


def _write_from_process(url: str, worker: int) -> None:
    store = open_store(url)
    for i in range(20):
        store.append("shared", [f"{worker}-{i}"])
    store.close()


def test_concurrent_processes_lose_no_event(store: EventStore, db_url: str) -> None:
    # Forked, so the children need not import the package again; each opens its own store
    # and leaves through os._exit, never touching the parent's connections.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_from_process, args=(db_url, w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(store.history("shared")) == sorted(f"{w}-{i}" for w in range(4)
                                                     for i in range(20))


def test_import_is_idempotent_and_export_round_trips(store: EventStore, tiny_run: TinyRun,
                                                    tmp_path: Path) -> None:
    store.append("1", ["999"])  # user 1 is already there: left alone
    users, events, skipped = import_interactions(store, tiny_run.data)
    assert (users, skipped) == (tiny_run.data.num_users - 1, 1)
    assert events == tiny_run.data.num_interactions - len(tiny_run.data.sequence(0))
    assert import_interactions(store, tiny_run.data) == (0, 0, tiny_run.data.num_users)
    assert store.history("2") == [str(v) for v in
                                  tiny_run.data.vocab.decode(tiny_run.data.sequence(1))]

    path = tmp_path / "events.txt"
    assert export_pairs(store, path) == events + 1
    exported = load_interactions(path, PrepareOptions(min_user_count=0), use_cache=False)
    assert exported.num_users == tiny_run.data.num_users
    index = exported.user_index()
    assert exported.vocab.decode(exported.sequence(index[1])) == [999]


def test_open_store_rejects_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown database URL 'mysql://x'"):
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="is not a folder"):
        open_store(tmp_path / "missing" / "events.sqlite3")
    store = open_store(f"sqlite:///{tmp_path}/a.sqlite3")
    assert store.url == f"sqlite:///{tmp_path}/a.sqlite3"
    store.close()


def test_unreachable_postgres_says_so() -> None:
    with pytest.raises(ConfigError, match=r"cannot connect to the event store "
                       r"postgresql://bert4rec:\*\*\*@127.0.0.1:9/none"):
        open_store("postgresql://bert4rec:secret@127.0.0.1:9/none")


def test_postgres_reconnects_after_losing_its_connection(pg_url: str) -> None:
    import psycopg

    store = open_store(pg_url)
    store.append("u1", ["1"])
    pid = store._connect().info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        store.history("u1")  # the service answers this one with a 503
    assert store.history("u1") == ["1"]  # and the next call reconnects
    store.close()


def test_close_closes_every_threads_connection(tmp_path: Path) -> None:
    import os

    path = tmp_path / "events.sqlite3"
    store = open_store(str(path))

    def open_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir()
                   if os.path.realpath(fd).startswith(str(path.resolve())))

    threads = [threading.Thread(target=store.append, args=(f"u{w}", ["1"])) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert open_files() > 0
    store.close()

    assert open_files() == 0
    reopened = open_store(str(path))
    assert reopened.history("u3") == ["1"]  # nothing lost, the file reopens
    reopened.close()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://pg:secret@db:5432/events", "postgresql://pg:***@db:5432/events"),
    ("postgresql://db/events?user=pg&password=secret&sslmode=require",
     "postgresql://db/events?user=pg&password=***&sslmode=require"),
    ("postgresql://pg@db/events", "postgresql://pg@db/events"),
    ("sqlite:////var/lib/events.sqlite3", "sqlite:////var/lib/events.sqlite3"),
])
def test_passwords_are_never_shown(url: str, shown: str) -> None:
    assert redact(url) == shown
