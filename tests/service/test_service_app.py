"""The HTTP service, in process: the same answers as the library, clear 4xx errors, the
stateful endpoints on both stores, batching and reload."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from conftest import TITLES, TinyRun
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bert4rec.errors import RunError
from bert4rec.recommender import recommend
from bert4rec.runs import load_model
from bert4rec.service import create_app


@pytest.fixture
def app(tiny_run: TinyRun, db_url: str) -> FastAPI:
    return create_app(tiny_run.path, db_url)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sqlite_client(tiny_run: TinyRun, tmp_path: Path) -> Iterator[TestClient]:
    """For the tests that do not touch the store: SQLite only."""
    with TestClient(create_app(tiny_run.path, tmp_path / "events.sqlite3")) as c:
        yield c


def expected(run: TinyRun, history: list[Any], k: int, **options: Any) -> list[Any]:
    model, info = load_model(run.path)
    ids, _ = info.vocab.encode(history)
    top, _ = recommend(model, [ids], k=k, **options)
    return info.vocab.decode(top[0][top[0] > 0])


def items_of(response: httpx.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    return [row["item"] for row in response.json()["items"]]


def test_recommend_matches_the_library(sqlite_client: TestClient, tiny_run: TinyRun) -> None:
    history = [3, 7, 11, 2]
    response = sqlite_client.post("/recommend", json={"history": history, "k": 5})
    assert items_of(response) == expected(tiny_run, history, 5)
    body = response.json()
    assert body["skipped"] == [] and body["fallback"] is None and body["history_used"] == 4
    assert not set(items_of(response)) & set(history)  # seen items left out by default
    scores = [row["score"] for row in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for row in body["items"]:
        assert row["title"] == TITLES.get(row["item"])


def test_unknown_items_are_skipped_and_reported(sqlite_client: TestClient,
                                                tiny_run: TinyRun) -> None:
    response = sqlite_client.post("/recommend",
                                  json={"history": [3, "nope", 999, "7"], "k": 4})
    assert response.json()["skipped"] == ["nope", 999]
    assert response.json()["history_used"] == 2
    assert items_of(response) == expected(tiny_run, [3, 7], 4)  # "7" is item 7


@pytest.mark.parametrize("history", [[], ["nope", 12345]])
def test_no_known_item_falls_back_to_popularity(sqlite_client: TestClient, tiny_run: TinyRun,
                                                history: list[Any]) -> None:
    body = sqlite_client.post("/recommend", json={"history": history, "k": 3}).json()
    assert body["fallback"] == "popularity"
    _, info = load_model(tiny_run.path)
    assert info.popularity is not None
    counts = [info.popularity[info.vocab.encode([row["item"]])[0][0]] for row in body["items"]]
    assert counts == sorted(info.popularity[1:], reverse=True)[:3]
    assert body["skipped"] == history


def test_candidates_and_exclude_seen(sqlite_client: TestClient, tiny_run: TinyRun) -> None:
    response = sqlite_client.post("/recommend", json={
        "history": [3, 4], "k": 10, "candidates": [3, 5, 6, "zzz"], "exclude_seen": True})
    assert set(items_of(response)) == {5, 6}
    assert response.json()["skipped_candidates"] == ["zzz"]
    response = sqlite_client.post("/recommend", json={
        "history": [3, 4], "k": 10, "candidates": [3, 5, 6], "exclude_seen": False})
    assert set(items_of(response)) == {3, 5, 6}
    assert items_of(response) == expected(tiny_run, [3, 4], 10, exclude_seen=False,
                                          candidates=np.array([3, 5, 6]))


@pytest.mark.parametrize(("body", "message"), [
    ({"history": [1], "k": 0}, "greater than or equal to 1"),
    ({"history": [1], "k": 1001}, "less than or equal to 1000"),
    ({"history": list(range(10_001))}, "at most 10000 items"),
    ({"history": ["two words"]}, "should match pattern"),
    ({"history": [1], "candidates": []}, None),
    ({"history": [1], "colour": "red"}, "Extra inputs are not permitted"),
    ({"k": 3}, "Field required"),
    ({"history": "1 2 3"}, "valid list"),
])
def test_bad_requests_say_what_is_wrong(sqlite_client: TestClient, body: dict[str, Any],
                                        message: str | None) -> None:
    response = sqlite_client.post("/recommend", json=body)
    if message is None:  # an empty candidate list is allowed: nothing to rank
        assert response.status_code == 200 and response.json()["items"] == []
        return
    assert response.status_code == 422
    assert message in response.text


def test_k_beyond_the_catalogue_returns_what_there_is(sqlite_client: TestClient,
                                                      tiny_run: TinyRun) -> None:
    items = items_of(sqlite_client.post("/recommend", json={"history": [1, 2], "k": 1000}))
    assert len(items) == tiny_run.data.num_items - 2


def test_stateful_events_and_recommendations(client: TestClient, tiny_run: TinyRun) -> None:
    response = client.post("/users/alice/events", json={"items": [3, 7]})
    assert response.json() == {"user": "alice", "appended": 2, "events": 2}
    response = client.post("/users/alice/events", json={"items": ["brand-new", 11]})
    assert response.json()["events"] == 4
    # Unknown to the model, kept in the store for the next training run.
    assert client.get("/users/alice/events").json()["items"] == ["3", "7", "brand-new", "11"]
    body = client.get("/users/alice/recommendations", params={"k": 4}).json()
    assert body["user"] == "alice" and body["skipped"] == ["brand-new"]
    assert [row["item"] for row in body["items"]] == expected(tiny_run, [3, 7, 11], 4)

    assert client.delete("/users/alice").json() == {"user": "alice", "deleted": 4}
    assert client.get("/users/alice/events").json()["items"] == []
    body = client.get("/users/alice/recommendations").json()
    assert body["fallback"] == "popularity" and len(body["items"]) == 10


@pytest.mark.parametrize(("path", "text", "status"), [
    ("/recommend", '{"history": [1], "k": Infinity}', 422),
    ("/recommend", '{"history": [NaN]}', 422),
    ("/users/u1/events", '{"items": [NaN]}', 422),
    ("/explain", '{"history": [1], "item": -Infinity}', 422),
    ("/recommend", '{not json', 400),
])
def test_bodies_json_cannot_answer_get_a_4xx(sqlite_client: TestClient, path: str, text: str,
                                             status: int) -> None:
    response = sqlite_client.post(path, content=text,
                                  headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    if status == 400:
        assert "the body is not valid JSON" in response.json()["detail"]
    assert sqlite_client.get("/users/u1/events").json()["items"] == []


@pytest.mark.parametrize("item", [True, False])
def test_an_item_must_be_an_integer_or_a_token(sqlite_client: TestClient, item: Any) -> None:
    response = sqlite_client.post("/users/u1/events", json={"items": [item]})
    assert response.status_code == 422
    assert sqlite_client.post("/recommend", json={"history": [item]}).status_code == 422
    assert sqlite_client.get("/users/u1/events").json()["items"] == []


def test_stateful_bad_input(sqlite_client: TestClient) -> None:
    assert sqlite_client.post("/users/a%20b/events", json={"items": [1]}).status_code == 422
    response = sqlite_client.post("/users/bob/events", json={"items": []})
    assert response.status_code == 422 and "at least 1 item" in response.text
    response = sqlite_client.get("/users/bob/recommendations", params={"k": "many"})
    assert response.status_code == 422 and "valid integer" in response.text
    assert sqlite_client.get("/users/bob/recommendations", params={"k": 0}).status_code == 422


def test_import_makes_known_users_work(tiny_run: TinyRun, db_url: str) -> None:
    from bert4rec.service.store import import_interactions, open_store

    store = open_store(db_url)
    import_interactions(store, tiny_run.data)
    store.close()
    with TestClient(create_app(tiny_run.path, db_url)) as client:
        body = client.get("/users/5/recommendations", params={"k": 3}).json()
    history = tiny_run.data.vocab.decode(tiny_run.data.sequence(4))
    assert body["fallback"] is None and body["history_used"] == len(history)
    assert [row["item"] for row in body["items"]] == expected(tiny_run, history, 3)


def test_health_ready_and_schema(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/health").json() == {"status": "ok"}
    ready = sqlite_client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"]["backend"] == "torch"
    paths = sqlite_client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/users/{user}/events", "/users/{user}/recommendations",
            "/users/{user}", "/admin/reload", "/health", "/ready"} <= set(paths)


def test_reload_swaps_the_model(sqlite_client: TestClient, other_run: TinyRun,
                                tiny_run: TinyRun) -> None:
    assert sqlite_client.get("/model").json()["items"] == tiny_run.data.num_items
    response = sqlite_client.post("/admin/reload", json={"run": str(tmp := other_run.path)})
    assert response.status_code == 200 and response.json()["run"] == str(tmp)
    assert sqlite_client.get("/model").json()["items"] == other_run.data.num_items
    response = sqlite_client.post("/recommend", json={"history": [35, 36], "k": 3})
    assert items_of(response) == expected(other_run, [35, 36], 3)


def test_reload_of_a_bad_run_keeps_the_old_model(sqlite_client: TestClient,
                                                 tmp_path: Path) -> None:
    response = sqlite_client.post("/admin/reload", json={"run": str(tmp_path / "none")})
    assert response.status_code == 404
    assert response.json()["detail"] == f"{tmp_path / 'none'} does not exist (on the server)"
    response = sqlite_client.post("/admin/reload", json={"run": str(tmp_path)})
    assert response.status_code == 400
    assert "is not a run directory (no run.json)" in response.json()["detail"]
    assert sqlite_client.get("/ready").json()["status"] == "ready"


def test_reload_of_an_inconsistent_or_odd_run_keeps_the_old_model(
        sqlite_client: TestClient, tiny_run: TinyRun, other_run: TinyRun,
        tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(other_run.path, mixed)
    shutil.copy(tiny_run.path / "items.json", mixed / "items.json")  # another run's items
    response = sqlite_client.post("/admin/reload", json={"run": str(mixed)})
    assert response.status_code == 400 and "is inconsistent" in response.json()["detail"]
    (listed := tmp_path / "listed").mkdir()
    (listed / "run.json").write_text("[]", encoding="utf-8")
    response = sqlite_client.post("/admin/reload", json={"run": str(listed)})
    assert response.status_code == 400 and "not a JSON object" in response.json()["detail"]
    response = sqlite_client.post("/admin/reload", json={"run": "/" + "a" * 300})
    assert response.status_code == 404
    assert sqlite_client.get("/model").json()["items"] == tiny_run.data.num_items
    assert sqlite_client.post("/recommend", json={"history": [1, 2]}).status_code == 200


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("body", [
    {"history": ["\ud800"]},
    {"history": [1], "\udfff": 1},
    {"history": _nested(600)},
    {"history": list(range(20_000))},
])
def test_odd_bodies_are_a_brief_422(sqlite_client: TestClient, body: dict[str, Any]) -> None:
    import json as jsonlib

    response = sqlite_client.post("/recommend", content=jsonlib.dumps(body).encode(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert len(response.content) < 20_000  # what was sent is not echoed whole


def test_a_body_over_the_limit_is_refused_unread(sqlite_client: TestClient) -> None:
    from bert4rec.service.app import MAX_BODY

    response = sqlite_client.post("/recommend", content=b" " * (MAX_BODY + 1),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and "at most" in response.json()["detail"]


def test_concurrent_requests_are_batched(tiny_run: TinyRun, tmp_path: Path) -> None:
    app = create_app(tiny_run.path, tmp_path / "events.sqlite3", max_wait=0.02)
    # Different k, seen-item rules, candidates and empty histories in the same batches.
    bodies: list[dict[str, Any]] = [
        {"history": [1 + i % 20, 2 + i % 25, 5] if i % 7 else [], "k": 2 + i % 4,
         "exclude_seen": i % 3 != 0, "candidates": [5, 6, 7, 8] if i % 5 == 0 else None}
        for i in range(40)]

    async def run() -> list[list[Any]]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://test") as client:
            replies = await asyncio.gather(*(client.post("/recommend", json=b) for b in bodies))
        return [items_of(r) for r in replies]

    results = asyncio.run(run())
    batcher = app.state.service.batcher
    assert batcher.requests == 40 and batcher.batches < 40
    for body, got in zip(bodies, results, strict=True):
        if not body["history"]:  # popularity: checked elsewhere
            continue
        candidates = body["candidates"] and np.array(body["candidates"])
        assert got == expected(tiny_run, body["history"], body["k"],
                               exclude_seen=body["exclude_seen"], candidates=candidates)


def test_a_bad_run_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a run directory"):
        create_app(tmp_path, tmp_path / "events.sqlite3")


def test_a_failing_store_is_a_503(sqlite_client: TestClient,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    def fail(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store = sqlite_client.app.state.service.store  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "history", fail)
    monkeypatch.setattr(store, "ping", fail)
    response = sqlite_client.get("/users/bob/recommendations")
    assert response.status_code == 503
    assert response.json()["detail"] == "event store unavailable: disk I/O error"
    assert sqlite_client.get("/ready").status_code == 503
    assert sqlite_client.post("/recommend", json={"history": [1]}).status_code == 200


def test_ids_beyond_json_integers_go_out_as_text_and_come_back(tmp_path: Path) -> None:
    from bert4rec.api import save
    from bert4rec.data import PrepareOptions, load_interactions
    from bert4rec.model import BERT4Rec, BERT4RecConfig

    base = 2**60
    log = tmp_path / "big.txt"
    log.write_text("".join(f"{u} {base + (u * 7 + i) % 12}\n" for u in range(1, 9)
                           for i in range(5)), encoding="utf-8")
    options = PrepareOptions(min_user_count=0)
    data = load_interactions(log, options, use_cache=False)
    torch.manual_seed(0)
    config = BERT4RecConfig(num_items=data.num_items, max_len=8, hidden_size=16, num_layers=1,
                            num_heads=1)
    save(BERT4Rec(config).eval(), tmp_path / "run", data, options)

    with TestClient(create_app(tmp_path / "run", tmp_path / "e.sqlite3")) as client:
        items = items_of(client.post("/recommend", json={"history": [str(base + 1)], "k": 3}))
        assert all(isinstance(item, str) and int(item) > 2**53 for item in items)
        again = client.post("/recommend", json={"history": [items[0]], "k": 3})
        assert again.status_code == 200 and again.json()["skipped"] == []
