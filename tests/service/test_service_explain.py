"""The service's explanations, user list and web page, in process."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TITLES, TinyRun
from fastapi.testclient import TestClient

from bert4rec.errors import DataError
from bert4rec.explain import explain
from bert4rec.runs import load_model
from bert4rec.service import create_app


@pytest.fixture
def client(tiny_run: TinyRun, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_run.path, tmp_path / "events.sqlite3")) as c:
        yield c


def test_explain_defaults_to_the_top_recommendation(client: TestClient) -> None:
    history = [3, 7, 11, 2]
    top = client.post("/recommend", json={"history": history, "k": 1}).json()["items"][0]
    response = client.post("/explain", json={"history": history})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item"] == top["item"] and body["rank"] == 1
    assert [row["item"] for row in body["history"]] == history
    assert body["plots"] is None
    assert "weaker evidence" in body["attention"]["note"]


def test_explain_gives_what_the_library_gives(client: TestClient, tiny_run: TinyRun) -> None:
    history = [5, 1, 9, 12, 4, 8, 2, 6, 10]  # longer than the model reads (7 items)
    response = client.post("/explain", json={"history": history, "item": 1 + 13, "k": 5,
                                              "max_steps": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    model, info = load_model(tiny_run.path)
    local = explain(model, info, history, item=14, k=5, max_steps=3).to_dict()
    assert body["truncated"] == local["truncated"] == 2
    assert body["rank"] == local["rank"]
    assert [r["rank_without"] for r in body["history"]] == [
        r["rank_without"] for r in local["history"]]
    assert body["counterfactual_set"]["items"] == local["counterfactual_set"]["items"]
    assert len(body["counterfactual_set"]["items"]) <= 3


def test_explain_reports_skipped_items_and_titles(client: TestClient) -> None:
    response = client.post("/explain", json={"history": [3, "nope", 1, 7], "item": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["skipped"] == ["nope"]
    assert body["title"] == TITLES[2]
    assert [row["title"] for row in body["history"]] == [None, TITLES[1], None]


def test_explain_plots_are_png_data_urls(client: TestClient) -> None:
    response = client.post("/explain", json={"history": [3, 7, 11], "plots": True})
    assert response.status_code == 200, response.text
    plots = response.json()["plots"]
    assert set(plots) == {"attribution", "attention"}
    for url in plots.values():
        prefix = "data:image/png;base64,"
        assert url.startswith(prefix)
        assert base64.b64decode(url[len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"history": ["x", "y"]}, 404, "no item of the history is known"),
    ({"history": [3, "x"], "item": "unknown-item"}, 404, "not known to the model"),
    ({"history": [3, 7], "item": 7}, 409, "in the history"),
    ({"history": [3, 7], "item": "7"}, 409, "in the history"),
    ({"history": list(range(1, 31))}, 409, "every item the model knows is in the history"),
])
def test_explain_refuses_what_it_cannot_explain(client: TestClient, body: dict[str, object],
                                                status: int, says: str) -> None:
    response = client.post("/explain", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


@pytest.mark.parametrize("body", [
    {"history": []}, {"history": [1], "k": 0}, {"history": [1], "max_steps": 21},
    {"history": [1], "extra": True},
])
def test_explain_validates_its_body(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/explain", json=body).status_code == 422


def test_explain_of_a_history_holding_every_item_says_so(tiny_run: TinyRun) -> None:
    model, info = load_model(tiny_run.path)
    with pytest.raises(DataError, match="every item the model knows is in the history"):
        explain(model, info, list(range(1, tiny_run.data.num_items + 1)))


def test_users_are_listed_in_natural_order(client: TestClient) -> None:
    for user in ("u10", "u9", "7", "12"):
        assert client.post(f"/users/{user}/events", json={"items": [1]}).status_code == 200
    body = client.get("/users").json()
    assert body == {"users": ["7", "12", "u9", "u10"], "total": 4}
    assert client.get("/users", params={"limit": 2}).json()["users"] == ["7", "12"]
    assert client.get("/users", params={"limit": -1}).status_code == 422


def test_the_web_page_is_served(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="history"', 'id="recommend"', 'id="explanation"', "app.js"):
        assert element in page.text
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/ui/style.css").status_code == 200
    assert "/ui" not in str(client.get("/openapi.json").json()["paths"])
