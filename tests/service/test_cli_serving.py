"""The serving commands of the CLI: store import and export, and serve's checks at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TinyRun
from fastapi.testclient import TestClient

from bert4rec.cli import main
from bert4rec.data import PrepareOptions, load_interactions
from bert4rec.service import create_app, open_store


def test_store_import_then_export_retrains_on_the_same_log(
        tiny_run: TinyRun, db_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["store", "import", "--db", db_url, "--data", str(tiny_run.log),
            "--run", str(tiny_run.path)]
    assert main(args) == 0
    users, events = tiny_run.data.num_users, tiny_run.data.num_interactions
    assert f"imported {events} events of {users} users" in capsys.readouterr().err
    assert main(args) == 0
    assert f"{users} users were there already and are unchanged" in capsys.readouterr().err

    store = open_store(db_url)
    store.append("1", ["new-item"])
    store.close()
    out = tmp_path / "events.txt"
    assert main(["store", "export", "--db", db_url, "--output", str(out)]) == 0
    assert f"wrote {events + 1} events to {out}" in capsys.readouterr().err
    exported = load_interactions(out, PrepareOptions(min_user_count=0), use_cache=False)
    assert exported.num_interactions == events + 1
    assert "new-item" in set(map(str, exported.vocab.item_ids.tolist()))


def test_store_import_refuses_other_data(tiny_run: TinyRun, other_run: TinyRun, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["store", "import", "--db", str(tmp_path / "e.sqlite3"), "--data",
                 str(other_run.log), "--run", str(tiny_run.path)])
    assert code == 2
    assert "does not match the data" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--threads", "0"], "--threads and --max-batch must be at least 1"),
    (["--onnx", "m.onnx", "--precision", "bf16"], "--precision bf16 is for PyTorch"),
    (["--db", "mysql://x"], "unknown database URL 'mysql://x'"),
])
def test_serve_checks_its_options(tiny_run: TinyRun, extra: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run", str(tiny_run.path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run", str(tmp_path / "none"), "--db",
                 str(tmp_path / "e.sqlite3")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_bf16_serving(tiny_run: TinyRun, tmp_path: Path) -> None:
    with TestClient(create_app(tiny_run.path, tmp_path / "e.sqlite3", bf16=True)) as client:
        assert client.get("/model").json()["backend"] == "torch-bf16"
        body = client.post("/recommend", json={"history": [3, 7], "k": 5}).json()
    assert len(body["items"]) == 5 and body["fallback"] is None
