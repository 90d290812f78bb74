"""Item titles, where the data comes with them, so that recommendations can show more than ids.

Looked for beside the interaction log:

* MovieLens ``ratings.dat``: ``movies.dat`` (``MovieID::Title::Genres``, UTF-8 or, as
  MovieLens 1M/10M ship it, latin-1); item ids are MovieLens ids.
* MovieLens ``ratings.csv`` (ML-20M and later): ``movies.csv`` (``movieId,title,genres``).
* The paper's ``ml-1m.txt`` and other re-numbered files: ``item_ids.txt`` (``item_in_file
  original_movie_id`` per line) maps the file's ids to the ids of ``movies.dat``.
* RecBole ``name.inter``: ``name.item`` with ``item_id:token`` and ``movie_title:token_seq``
  columns (and ``release_year`` appended where present).

Titles are read once at training time and stored in the run directory, so serving needs no
dataset folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bert4rec.data import ItemVocab

ID_MAP = "item_ids.txt"


def find_titles(data_path: str | Path, vocab: ItemVocab) -> dict[Any, str]:
    """Title of every item of ``vocab`` the files beside ``data_path`` name, keyed by original
    item id; ``{}`` when there are none. A damaged title file only costs the titles."""
    path = Path(data_path)
    try:
        titles = _read_titles(path)
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}
    if not titles:
        return {}
    out: dict[Any, str] = {}
    for item in vocab.item_ids.tolist():
        title = titles.get(_key(item))
        if title:
            out[item] = title
    return out


def _key(item: Any) -> str:
    return str(item).strip()


def _read_titles(path: Path) -> dict[str, str]:
    """Titles by item id (as text) for the log at ``path``, from whichever file fits."""
    folder = path.parent
    if path.suffix.lower() == ".inter":
        item_file = path.with_suffix(".item")
        return _recbole_titles(item_file) if item_file.is_file() else {}
    if path.suffix.lower() == ".dat" and (folder / "movies.dat").is_file():
        return _movies_dat(folder / "movies.dat")
    if path.suffix.lower() == ".csv" and (folder / "movies.csv").is_file():
        return _movies_csv(folder / "movies.csv")
    if (folder / ID_MAP).is_file():
        movies: dict[str, str] = {}
        if (folder / "movies.dat").is_file():
            movies = _movies_dat(folder / "movies.dat")
        elif (folder / "movies.csv").is_file():
            movies = _movies_csv(folder / "movies.csv")
        if not movies:
            return {}
        mapped: dict[str, str] = {}
        for item, original in _id_map(folder / ID_MAP).items():
            if original in movies:
                mapped[item] = movies[original]
        return mapped
    return {}


def _movies_dat(path: Path) -> dict[str, str]:
    try:
        return _movies_dat_as(path, "utf-8-sig")
    except UnicodeDecodeError:  # MovieLens 1M/10M ship latin-1 text
        return _movies_dat_as(path, "latin-1")


def _movies_dat_as(path: Path, encoding: str) -> dict[str, str]:
    titles: dict[str, str] = {}
    with open(path, encoding=encoding) as f:
        for line in f:
            fields = line.rstrip("\r\n").split("::")
            if len(fields) >= 2 and fields[0].strip():
                titles[_key(fields[0])] = fields[1].strip()
    return titles


def _movies_csv(path: Path) -> dict[str, str]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError:  # not UTF-8: older exports are latin-1
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1")
    return {_key(i): t.strip() for i, t in zip(frame["movieId"], frame["title"], strict=True)}


def _id_map(path: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 2:
                mapping[fields[0]] = fields[1]
    return mapping


def _recbole_titles(path: Path) -> dict[str, str]:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [str(c).split(":")[0] for c in frame.columns]
    if "item_id" not in frame.columns:
        return {}
    title_col = next((c for c in ("movie_title", "title", "item_title", "name")
                      if c in frame.columns), None)
    if title_col is None:
        return {}
    titles: dict[str, str] = {}
    years = frame["release_year"] if "release_year" in frame.columns else None
    for row, (item, title) in enumerate(zip(frame["item_id"], frame[title_col], strict=True)):
        title = title.strip()
        if years is not None:
            year = years.iloc[row].strip()
            if year.isdigit() and f"({year})" not in title:
                title = f"{title} ({year})"
        titles[_key(item)] = title
    return titles
