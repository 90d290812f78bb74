"""Batch scoring to Parquet and CSV: every user's top-k, the library's answer, original ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TinyRun

from bert4rec.api import save
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.cli import main
from bert4rec.data import PrepareOptions, load_interactions
from bert4rec.model import BERT4Rec, BERT4RecConfig
from bert4rec.recommender import recommend
from bert4rec.runs import load_model


def expected_rows(run: TinyRun, k: int) -> pd.DataFrame:
    model, info = load_model(run.path)
    data = run.data
    histories = [data.sequence(u).astype("int64") for u in range(data.num_users)]
    ids, scores = recommend(model, histories, k=k)
    rows = [(data.user_ids[u], rank + 1, info.vocab.decode(ids[u, rank : rank + 1])[0],
             scores[u, rank]) for u in range(data.num_users) for rank in range(k)]
    return pd.DataFrame(rows, columns=["user", "rank", "item", "score"])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_every_user_to_a_file(tiny_run: TinyRun, tmp_path: Path, suffix: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"recs{suffix}"
    code = main(["recommend", "--run", str(tiny_run.path), "--data", str(tiny_run.log),
                 "--output", str(out), "-k", "4"])
    assert code == 0
    assert f"wrote {out}: {4 * tiny_run.data.num_users} rows" in capsys.readouterr().err
    got = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    want = expected_rows(tiny_run, 4)
    pd.testing.assert_frame_equal(got[["user", "rank", "item"]].astype("int64"),
                                  want[["user", "rank", "item"]].astype("int64"))
    assert got["score"].to_numpy() == pytest.approx(want["score"].to_numpy(), rel=1e-5)


def test_another_log_is_read_through_the_runs_catalogue(
        tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Newer events: other users, an item the run never saw, fewer items (other internal ids).
    log = tmp_path / "newer.txt"
    log.write_text("n1 30\nn1 999\nn1 5\nn1 17\nn2 1000\nn3 2\nn3 3\n", encoding="utf-8")
    out = tmp_path / "recs.parquet"

    code = main(["recommend", "--run", str(tiny_run.path), "--data", str(log),
                 "--output", str(out), "-k", "3"])

    assert code == 0
    said = capsys.readouterr().err
    assert "2 of the 7 items in" in said  # 999 and 1000
    assert "1 user(s) have no item" in said and "most popular items" in said  # n2
    model, info = load_model(tiny_run.path)
    histories = [info.vocab.encode(items)[0] for items in ([30, 5, 17], [2, 3])]
    ids, _ = recommend(model, histories, k=3)
    assert info.popularity is not None
    popular, _ = recommend(PopularityRecommender(torch.from_numpy(info.popularity)),
                           [np.zeros(0, dtype=np.int64)], k=3)
    got = pd.read_parquet(out)
    assert got["user"].tolist() == ["n1"] * 3 + ["n2"] * 3 + ["n3"] * 3
    expected = [ids[0], popular[0], ids[1]]
    assert got["item"].tolist() == [item for row in expected for item in info.vocab.decode(row)]


def test_users_with_few_events_are_scored_too(tmp_path: Path) -> None:
    from conftest import write_pairs

    log = write_pairs(tmp_path / "log.txt")
    data = load_interactions(log, PrepareOptions(), use_cache=False)  # at least 5 events each
    model = BERT4Rec(BERT4RecConfig(num_items=data.num_items, max_len=8, hidden_size=16,
                                    num_layers=1, num_heads=1)).eval()
    save(model, tmp_path / "run", data, PrepareOptions())
    newer = tmp_path / "newer.txt"
    newer.write_text(f"short {data.vocab.item_ids[0]}\nshort {data.vocab.item_ids[1]}\n",
                     encoding="utf-8")
    users = tmp_path / "users.txt"
    users.write_text("short\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--run", str(tmp_path / "run"), "--data", str(newer),
                 "--users", str(users), "--output", str(out), "-k", "2"]) == 0
    assert pd.read_csv(out)["user"].tolist() == ["short", "short"]


def test_an_output_that_is_an_input_is_refused(
        tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.csv"
    log.write_bytes(tiny_run.log.read_bytes())
    before = log.read_bytes()
    assert main(["recommend", "--run", str(tiny_run.path), "--data", str(log),
                 "--output", str(log)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert log.read_bytes() == before


def test_chunks_and_a_user_list(tiny_run: TinyRun, tmp_path: Path) -> None:
    from bert4rec.batch import score_users

    model, info = load_model(tiny_run.path)
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    score_users(model, info, tiny_run.data, whole, k=3)
    score_users(model, info, tiny_run.data, chunked, k=3, chunk=5, batch_size=2, workers=3)
    pd.testing.assert_frame_equal(pd.read_parquet(whole), pd.read_parquet(chunked))

    users = tmp_path / "users.txt"
    users.write_text("7\n\n 3 \n", encoding="utf-8")
    out = tmp_path / "some.parquet"
    assert main(["recommend", "--run", str(tiny_run.path), "--data", str(tiny_run.log),
                 "--output", str(out), "--users", str(users), "-k", "2"]) == 0
    got = pd.read_parquet(out)
    assert got["user"].tolist() == [7, 7, 3, 3]
    full = pd.read_parquet(whole)
    assert got["item"].tolist() == (full[full.user == 7].item.tolist()[:2]
                                    + full[full.user == 3].item.tolist()[:2])


@pytest.mark.parametrize(("extra", "message"), [
    (["--output", "x.json"], "cannot tell the format of x.json: name it .parquet or .csv"),
    (["--output", "x.csv", "--users", "USERS"], "2 of the 3 users are not in"),
    (["--output", "x.csv", "--no-data"], "--output needs --data"),
    (["--users", "USERS", "--history", "1"], "--users goes with --output"),
    (["--output", "x.csv", "-k", "0"], "-k must be at least 1"),
    (["--output", "x.csv", "--workers", "0"], "--workers must be at least 1"),
])
def test_bad_batch_options(tiny_run: TinyRun, tmp_path: Path, extra: list[str], message: str,
                           capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "USERS").write_text("1\nghost\nnobody\n", encoding="utf-8")
    args = ["recommend", "--run", str(tiny_run.path)]
    if "--no-data" in extra:
        extra = [e for e in extra if e != "--no-data"]
    else:
        args += ["--data", str(tiny_run.log)]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
