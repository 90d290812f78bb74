"""Item titles: found beside the log, stored in the run, shown by ``recommend``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bert4rec.cli import main
from bert4rec.data import ItemVocab, load_interactions
from bert4rec.runs import read_run
from bert4rec.titles import find_titles

MOVIES = {1198: "Raiders of the Lost Ark (1981)", 356: "Forrest Gump (1994)",
          2858: "American Beauty (1999)", 1: "Toy Story (1995)", 2: "Amélie (2001)"}


def write_movies_dat(folder: Path) -> None:
    text = "".join(f"{i}::{t}::Drama\n" for i, t in MOVIES.items())
    (folder / "movies.dat").write_bytes(text.encode("latin-1"))


def paper_folder(tmp_path: Path) -> Path:
    """A tiny ml-1m.txt (items 1-4) with item_ids.txt and movies.dat beside it.
    Item 4 maps to a movie without a title."""
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    # training counts (all but each user's last two): item 2: 15, 3: 10, 4: 5, 1: 0
    rows = [(u, i) for u in range(1, 6) for i in (2, 2, 3, 2, 3, 4, 1, 1)]
    (folder / "ml-1m.txt").write_text("".join(f"{u} {i}\n" for u, i in rows))
    (folder / "item_ids.txt").write_text("1 1198\n2 356\n3 2858\n4 9999\n")
    write_movies_dat(folder)
    return folder


def test_paper_file_maps_through_item_ids(tmp_path: Path) -> None:
    folder = paper_folder(tmp_path)
    vocab = ItemVocab(np.array([1, 2, 3, 4]))
    assert find_titles(folder / "ml-1m.txt", vocab) == {
        1: "Raiders of the Lost Ark (1981)", 2: "Forrest Gump (1994)",
        3: "American Beauty (1999)",
    }


def test_ratings_dat_uses_movielens_ids_and_latin1(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::2::5::10\n")
    write_movies_dat(tmp_path)
    # an item_ids.txt beside ratings.dat must not re-map its ids
    (tmp_path / "item_ids.txt").write_text("1 1198\n2 356\n")
    vocab = ItemVocab(np.array([2, 2858, 5]))
    assert find_titles(tmp_path / "ratings.dat", vocab) == {
        2: "Amélie (2001)", 2858: "American Beauty (1999)",
    }


def test_utf8_movies_dat_is_read_as_utf8(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::2::5::10\n")
    (tmp_path / "movies.dat").write_bytes("2::Amélie (2001)::Comedy\n".encode())

    assert find_titles(tmp_path / "ratings.dat", ItemVocab(np.array([2]))) == {2: "Amélie (2001)"}


def test_latin1_movies_csv_keeps_its_titles(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId\n1,2\n")
    (tmp_path / "movies.csv").write_bytes("movieId,title,genres\n2,Amélie (2001),Comedy\n"
                                          .encode("latin-1"))

    assert find_titles(tmp_path / "ratings.csv", ItemVocab(np.array([2]))) == {2: "Amélie (2001)"}


def test_recbole_item_file(tmp_path: Path) -> None:
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\n1\t7\n")
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "7\tToy Story\t1995\tAnimation\n8\tHeat (1995)\t1995\tAction\n9\tNo Year\t\tDrama\n"
    )
    vocab = ItemVocab(np.array([7, 8, 9, 10]))
    assert find_titles(tmp_path / "toy.inter", vocab) == {
        7: "Toy Story (1995)", 8: "Heat (1995)", 9: "No Year",
    }


def test_string_ids(tmp_path: Path) -> None:
    (tmp_path / "log.inter").write_text("user_id:token\titem_id:token\nu\tB00X\n")
    (tmp_path / "log.item").write_text("item_id:token\tmovie_title:token_seq\nB00X\tA Thing\n")
    assert find_titles(tmp_path / "log.inter", ItemVocab(np.array(["B00X", "B00Y"]))) == {
        "B00X": "A Thing"
    }


def test_nothing_found(tmp_path: Path) -> None:
    (tmp_path / "beauty.txt").write_text("1 1\n")
    vocab = ItemVocab(np.array([1]))
    assert find_titles(tmp_path / "beauty.txt", vocab) == {}
    (tmp_path / "item_ids.txt").write_text("1 5\n")  # a map but no movies file
    assert find_titles(tmp_path / "beauty.txt", vocab) == {}
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    (tmp_path / "x.item").write_text("item_id:token\tbrand:token\n1\tacme\n")  # no title column
    assert find_titles(tmp_path / "x.inter", vocab) == {}


def test_run_keeps_titles_and_recommend_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BERT4REC_CACHE", str(tmp_path / "cache"))
    folder = paper_folder(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder / "ml-1m.txt"), "--output", str(run)]) == 0
    info, _ = read_run(run)
    assert info.titles[3] == "American Beauty (1999)"
    assert 4 not in info.titles

    # serving needs no data folder
    for path in folder.iterdir():
        path.unlink()
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--history", "1", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  1. 2  Forrest Gump (1994)  (15.0000)"
    assert lines[1].startswith("  2. 3  American Beauty (1999)  (")
    assert lines[2].startswith("  3. 4  (")  # no title: the id alone

    assert main(["recommend", "--run", str(run), "--history", "1", "-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["items"]
    assert [row["title"] for row in rows] == ["Forrest Gump (1994)", "American Beauty (1999)",
                                              None]


def test_run_without_titles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERT4REC_CACHE", str(tmp_path / "cache"))
    folder = paper_folder(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder / "ml-1m.txt"), "--output", str(run)]) == 0
    assert (run / "titles.json").exists()
    # retraining on data without titles must not keep the old ones
    (folder / "movies.dat").unlink()
    assert main(["train", "--data", str(folder / "ml-1m.txt"), "--output", str(run),
                 "--overwrite"]) == 0
    assert not (run / "titles.json").exists()
    info, _ = read_run(run)
    assert info.titles == {}
    assert load_interactions(folder / "ml-1m.txt").num_items == 4
