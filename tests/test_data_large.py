"""The fast paths for large logs give exactly what the pandas readers and a plain reference
give: a small skewed log in every delimited format, odd inputs the fast readers must leave to
pandas, and the sorting and parsing shortcuts underneath."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bert4rec import data
from bert4rec.data import Interactions, PrepareOptions, load_interactions, read_log
from bert4rec.errors import DataError

KEEP_ALL = PrepareOptions(min_user_count=0)
WriteFile = Callable[[str, str], Path]


def skewed_log(rows: int = 4000, seed: int = 0) -> pd.DataFrame:
    """MovieLens-like rows in file order: sparse ids, popular items, equal timestamps, shuffled."""
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.lognormal(2.5, 1.0, size=300).astype(np.int64)
    users = np.repeat(rng.choice(np.arange(1, 5000), size=300, replace=False), lengths)[:rows]
    popularity = 1.0 / np.arange(1, 401) ** 1.1
    items = rng.choice(np.arange(1, 90_000, 7)[:400], size=len(users),
                       p=popularity / popularity.sum())
    order = rng.permutation(len(users))
    return pd.DataFrame({
        "user": users[order], "item": items[order],
        "rating": rng.integers(1, 11, size=len(users))[order] / 2,
        "timestamp": rng.integers(1000, 1100, size=len(users)),  # many ties within a user
    })


def write_log(frame: pd.DataFrame, path: Path, layout: str) -> Path:
    rows = frame.itertuples(index=False)
    if layout == "dat":
        text = "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows)
    elif layout == "csv":
        text = "userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{i},{r:.1f},{t}\n" for u, i, r, t in rows)
    elif layout == "marked-csv":  # a comment line above the header, CRLF line ends
        text = "# synthetic\r\nuser,item,rating,timestamp\r\n" + "".join(
            f"{u},{i},{r:g},{t}\r\n" for u, i, r, t in rows)
    elif layout == "tsv":
        text = "user\titem\ttimestamp\n" + "".join(f"u{u}\tp{i}\t{t}\n" for u, i, _, t in rows)
    elif layout == "inter":
        text = "user_id:token\titem_id:token\ttimestamp:float\n" + "".join(
            f"{u}\t{i}\t{t}\n" for u, i, _, t in rows)
    else:
        raise AssertionError(layout)
    path.write_text(text, encoding="utf-8")
    return path


def reference(frame: pd.DataFrame, options: PrepareOptions) -> dict[str, Any]:
    """The preparation rules written out plainly, on Python lists."""
    rows = list(frame[["user", "item", "timestamp", "rating"]].itertuples(index=False))
    if options.min_rating is not None:
        rows = [r for r in rows if r.rating >= options.min_rating]
    users: dict[Any, int] = {}
    items: dict[Any, int] = {}
    for r in rows:
        users[r.user] = users.get(r.user, 0) + 1
        items[r.item] = items.get(r.item, 0) + 1
    kept = [(position, r) for position, r in enumerate(rows)
            if users[r.user] >= options.min_user_count and items[r.item] >= options.min_item_count]
    user_ids = sorted({r.user for _, r in kept})
    item_ids = sorted({r.item for _, r in kept})
    internal = {item: k + 1 for k, item in enumerate(item_ids)}
    sequences = {u: [] for u in user_ids}
    for _, r in sorted(kept, key=lambda pr: (pr[1].timestamp, pr[0])):
        sequences[r.user].append(internal[r.item])
    return {"user_ids": user_ids, "item_ids": item_ids,
            "lengths": [len(sequences[u]) for u in user_ids],
            "items": [i for u in user_ids for i in sequences[u]]}


def as_plain(prepared: Interactions) -> dict[str, Any]:
    return {"user_ids": prepared.user_ids.tolist(), "item_ids": prepared.vocab.item_ids.tolist(),
            "lengths": prepared.lengths.tolist(), "items": prepared.items.tolist()}


def assert_same(one: Interactions, other: Interactions) -> None:
    assert one.user_ids.dtype.kind == other.user_ids.dtype.kind
    assert one.vocab.item_ids.dtype.kind == other.vocab.item_ids.dtype.kind
    assert as_plain(one) == as_plain(other)
    assert one.items.dtype == other.items.dtype == np.int32
    assert one.offsets.dtype == other.offsets.dtype == np.int64
    assert one.fingerprint == other.fingerprint


@pytest.fixture
def pandas_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Any]], Any]:
    """``pandas_only(fn)`` runs fn with the fast readers switched off."""

    def run(fn: Callable[[], Any]) -> Any:
        with monkeypatch.context() as m:
            m.setattr(data, "_read_delimited_fast", lambda *args, **kwargs: None)
            m.setattr(data, "_read_movielens_dat_fast", lambda *args, **kwargs: None)
            return fn()

    return run


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DataError as exc:
        return f"DataError: {exc}"


# ----------------------------------------------------------------------------------------------
# A skewed log in every delimited layout


@pytest.mark.parametrize("layout", ["dat", "csv", "marked-csv", "tsv", "inter"])
@pytest.mark.parametrize(
    "options",
    [KEEP_ALL, PrepareOptions(), PrepareOptions(min_user_count=8, min_item_count=12, min_rating=2)],
    ids=["keep-all", "default", "filtered"],
)
def test_fast_reader_matches_pandas_and_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pandas_only: Any, layout: str,
    options: PrepareOptions,
) -> None:
    frame = skewed_log()
    path = write_log(frame, tmp_path / f"log.{layout}", layout)
    if options.min_rating is not None and layout in ("tsv", "inter"):
        options = PrepareOptions(min_user_count=8, min_item_count=12)  # no ratings there
    converted: list[Any] = []
    convert = data._fast_frame

    def record(*args: Any, **kwargs: Any) -> Any:
        converted.append(convert(*args, **kwargs))
        return converted[-1]

    monkeypatch.setattr(data, "_fast_frame", record)

    fast = load_interactions(path, options, use_cache=False)
    assert len(converted) == 1 and converted[0] is not None  # the fast reader read it
    slow = pandas_only(lambda: load_interactions(path, options, use_cache=False))

    assert_same(fast, slow)
    pd.testing.assert_frame_equal(read_log(path, options),
                                  pandas_only(lambda: read_log(path, options)))
    if layout == "tsv":
        frame = frame.assign(user="u" + frame["user"].astype(str),
                             item="p" + frame["item"].astype(str))
    assert as_plain(fast) == reference(frame, options)


def test_parquet_reads_only_the_columns_it_uses(tmp_path: Path) -> None:
    frame = skewed_log().rename(columns={"user": "userId", "item": "movieId"})
    frame["title"] = "a long text column that is never read"
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)

    prepared = load_interactions(path, KEEP_ALL, use_cache=False)

    expected = reference(frame.rename(columns={"userId": "user", "movieId": "item"}), KEEP_ALL)
    assert as_plain(prepared) == expected
    assert read_log(path).columns.tolist() == ["user", "item", "timestamp"]
    assert read_log(path, PrepareOptions(min_rating=1)).columns.tolist() == [
        "user", "item", "timestamp", "rating"]


# ----------------------------------------------------------------------------------------------
# Inputs where the fast readers must read as pandas does, or leave the file to it


ODD_CSV = {
    "zero-padded ids stay text": "user,item,timestamp\n007,1,5\n7,01,4\n",
    "negative ids": "user,item,timestamp\n-3,1,5\n-3,-2,4\n",
    "ids beyond int64": "user,item,timestamp\n99999999999999999999,1,5\n1,2,4\n",
    "missing-value words": "user,item,timestamp\nNA,1,5\nu,null,4\n",
    "quoted fields": 'user,item,timestamp\n"u","a,b",2\n"u",c,"1"\n',
    "hex and spaces": "user,item,timestamp\n0x1F,1,5\n 7,1,4\n",
    "dates": "user,item,timestamp\nu,a,2021-03-02\nu,b,2021-03-01\n",
    "float and signed times": "user,item,timestamp\nu,a,1.5\nu,b,-2\nu,c,1e3\n",
    "integer ratings": "user,item,rating,timestamp\nu,a,4,2\nu,b,5,1\n",
    "huge ratings": "user,item,rating,timestamp\nu,a,123456789012.5,2\nu,b,5,1\n",
    "a short line": "user,item,timestamp\nu,a,1\nu,b\n",
    "a long line": "user,item,timestamp\nu,a,1\nu,b,2,3\n",
    "a hash in the data": "user,item,timestamp\nu,C#,2\n# not a comment\n",
    "an empty id": "user,item,timestamp\nu,,2\n",
    "blank lines": "user,item,timestamp\n\nu,a,2\n\nu,b,1\n\n",
    "byte order mark": "\ufeffuser,item,timestamp\nu,a,2\nu,b,1\n",
    "duplicate names": "user,item,item,timestamp\nu,a,b,2\n",
    "newline in a quoted id": 'user,item,timestamp\nu,"a\nb",2\nu,c,1\n',
}

ODD_DAT = {
    "colon in an id": "a:b::10::5::1\na:b::11::4::2\n",
    "colon runs": "1:::10::5::1\n",
    "tab in an id": "a\tb::10::5::1\n",
    "quoted id": '"a::b"::10::5::1\n',
    "empty field": "1::::5::1\n",
    "text rating": "1::10::good::1\n",
    "missing-value word": "NA::10::5::1\n",
    "windows line ends": "1::10::5::2\r\n1::11::4::1\r\n",
    "a comment line": "# note\n1::10::5::1\n",
}


@pytest.mark.parametrize("text", ODD_CSV.values(), ids=ODD_CSV.keys())
def test_odd_csv_reads_as_pandas_reads_it(
    write_file: WriteFile, pandas_only: Any, text: str
) -> None:
    path = write_file("odd.csv", text)

    fast_frame, slow_frame = outcome(lambda: read_log(path)), pandas_only(
        lambda: outcome(lambda: read_log(path)))
    fast = outcome(lambda: load_interactions(path, KEEP_ALL, use_cache=False))
    slow = pandas_only(lambda: outcome(lambda: load_interactions(path, KEEP_ALL, use_cache=False)))

    if isinstance(slow_frame, str):
        assert fast_frame == slow_frame
    else:
        pd.testing.assert_frame_equal(fast_frame, slow_frame)
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert_same(fast, slow)


@pytest.mark.parametrize("text", ODD_DAT.values(), ids=ODD_DAT.keys())
def test_odd_movielens_dat_reads_as_pandas_reads_it(
    write_file: WriteFile, pandas_only: Any, text: str
) -> None:
    path = write_file("odd.dat", text)
    options = PrepareOptions(format="movielens-dat", min_user_count=0)

    fast_frame = outcome(lambda: read_log(path, options))
    slow_frame = pandas_only(lambda: outcome(lambda: read_log(path, options)))

    if isinstance(slow_frame, str):
        assert fast_frame == slow_frame
    else:
        pd.testing.assert_frame_equal(fast_frame, slow_frame)


def test_colon_in_a_movielens_id_is_kept(write_file: WriteFile) -> None:
    path = write_file("ratings.dat", "a:b::10::5::2\na:b::11::4::1\nc::10::3::1\n")

    assert read_log(path)["user"].tolist() == ["a:b", "a:b", "c"]


def test_colons_become_tabs_as_bytes_replace_does() -> None:
    rng = random.Random(0)
    for _ in range(500):
        text = bytes(rng.choice(b"ab:::\n") for _ in range(rng.randint(0, 40)))
        raw = io.BufferedReader(io.BytesIO(text))
        with io.BufferedReader(data._ColonsAsTabs(raw, block_size=rng.randint(1, 5)), 4) as f:
            assert f.read() == text.replace(b"::", b"\t")


# ----------------------------------------------------------------------------------------------
# Shortcuts underneath


def test_packed_sort_is_the_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    for keys in (rng.integers(-5, 5, size=2000), rng.integers(0, 2**40, size=999),
                 rng.integers(0, 3, size=70_000).astype(np.uint8)):
        rows = np.arange(len(keys), dtype=np.int64)
        np.testing.assert_array_equal(data._stable_argsort(keys, rows),
                                      np.argsort(keys, kind="stable"))
    wide = np.array([-(2**62), 2**62, 0, 0])  # too wide to pack: numpy's own sort
    np.testing.assert_array_equal(data._stable_argsort(wide, np.arange(4)),
                                  np.argsort(wide, kind="stable"))


def test_ordered_items_without_room_to_pack_sorts_the_same() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 50, size=3000).astype(np.int32)
    items = rng.integers(0, 80, size=3000).astype(np.int32)
    times = rng.integers(0, 20, size=3000)

    packed = data._ordered_items(users, items, times, 50, 80)
    unpacked = data._ordered_items(users, items, times, 2**40, 80)  # 40 + 12 + 7 bits > 63

    np.testing.assert_array_equal(packed, unpacked)
    np.testing.assert_array_equal(packed, items[np.lexsort((np.arange(3000), times, users))])


def test_decimals_parse_as_pandas_parses_them() -> None:
    rng = np.random.default_rng(2)
    text = ["4", "0.5", "-0.0", "007.50"]
    for _ in range(5000):  # up to 9 digits before the point and 6 after, as _DECIMAL allows
        whole = str(rng.integers(0, 10 ** rng.integers(1, 10)))
        fraction = "".join(rng.choice(list("0123456789"), size=rng.integers(1, 7)))
        text.append(f"{'-' if rng.random() < 0.3 else ''}{whole}.{fraction}")

    fast = data._fast_numbers(pa.chunked_array([pa.array(text)]))
    slow = pd.to_numeric(pd.Series(text, dtype=str))

    assert fast is not None
    assert fast.dtype == slow.dtype == np.float64
    np.testing.assert_array_equal(fast, slow.to_numpy())
