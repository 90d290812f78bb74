"""A tiny saved run, its log, and the event stores (SQLite always, PostgreSQL when reachable).

PostgreSQL comes from ``$BERT4REC_TEST_PG`` (a ``postgresql://`` URL; ``.ci/postgres`` sets one
up). Without a reachable server its tests are skipped, except under ``CI=true``, where they
fail: CI must test both back ends. Each test gets its own PostgreSQL schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch

from bert4rec.api import save
from bert4rec.data import Interactions, PrepareOptions, load_interactions
from bert4rec.model import BERT4Rec, BERT4RecConfig
from bert4rec.service.store import EventStore, open_store

NUM_USERS, NUM_ITEMS = 24, 30
TITLES = {1: "Item One", 2: "Item Two"}


@dataclass(frozen=True)
class TinyRun:
    path: Path  # the run directory
    log: Path  # the 'user item' pairs file it was trained on
    data: Interactions


def write_pairs(path: Path, seed: int = 0, num_items: int = NUM_ITEMS) -> Path:
    """Users 1..NUM_USERS with 4-12 distinct integer items each, one 'user item' a line."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(1, NUM_USERS + 1):
        items = rng.choice(np.arange(1, num_items + 1), size=rng.integers(4, 13), replace=False)
        lines += [f"{user} {item}" for item in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_run(folder: Path, seed: int = 0, num_items: int = NUM_ITEMS) -> TinyRun:
    """A run of an untrained tiny BERT4Rec: serving needs weights, not good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    log = write_pairs(folder / "log.txt", seed, num_items)
    data = load_interactions(log, PrepareOptions(min_user_count=0), use_cache=False)
    torch.manual_seed(seed)
    config = BERT4RecConfig(num_items=data.num_items, max_len=8, hidden_size=16, num_layers=1,
                            num_heads=1)
    save(BERT4Rec(config).eval(), folder / "run", data, PrepareOptions(min_user_count=0),
         titles=TITLES)
    return TinyRun(folder / "run", log, data)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """A second run with a larger catalogue, to reload into a service."""
    return make_run(tmp_path_factory.mktemp("other-run"), seed=1, num_items=40)


def postgres_url() -> str | None:
    """A reachable server's URL, or None (skip), or a failure under CI=true."""
    url = os.environ.get("BERT4REC_TEST_PG")
    problem = None
    if not url:
        problem = "BERT4REC_TEST_PG is not set"
    else:
        try:
            import psycopg

            psycopg.connect(url, connect_timeout=3).close()
        except Exception as exc:
            problem = f"cannot reach {url}: {exc}"
    if problem is None:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests must run in CI: {problem}")
    pytest.skip(f"no PostgreSQL server: {problem}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, empty schema of the test server, dropped afterwards."""
    import psycopg

    url = postgres_url()
    assert url is not None
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    yield f"{url}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against both back ends."""
    if request.param == "sqlite":
        return str(tmp_path / "events.sqlite3")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    opened = open_store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def open_db(db_url: str) -> Callable[[], EventStore]:
    return lambda: open_store(db_url)
