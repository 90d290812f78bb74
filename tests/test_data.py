"""Reading logs in every format, preparing them (time order, id types, minimum counts), errors
that name the file and line, and the prepared-data cache."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bert4rec import data
from bert4rec.data import (
    Interactions,
    ItemVocab,
    PrepareOptions,
    cache_dir,
    detect_format,
    load_interactions,
    prepare_frame,
    read_log,
)
from bert4rec.errors import DataError

KEEP_ALL = PrepareOptions(min_user_count=0)
WriteFile = Callable[[str, str], Path]


def sequences_of(interactions: Interactions) -> dict[Any, list[Any]]:
    """Original user id -> original item ids in prepared (time) order."""
    return {
        user: interactions.vocab.decode(seq)
        for user, seq in zip(interactions.user_ids.tolist(), interactions.sequences(), strict=True)
    }


# ----------------------------------------------------------------------------------------------
# Readers, one tiny file per format


def test_pairs_file_keeps_file_order(write_file: WriteFile) -> None:
    path = write_file("log.txt", "u2 x\nu1 c\nu1 a\n\n# a comment line\nu1 b\nu2 y\n")

    prepared = load_interactions(path, KEEP_ALL)

    assert sequences_of(prepared) == {"u1": ["c", "a", "b"], "u2": ["x", "y"]}
    assert prepared.num_items == 5
    assert prepared.num_interactions == 5


@pytest.mark.parametrize("comment", ["# a long comment line, with words\n", "#2 words\n", ""])
def test_pairs_tokens_are_ids_whatever_they_spell(write_file: WriteFile, comment: str) -> None:
    # 'C#' keeps its '#', 'NA' and 'null' are items, not missing values
    path = write_file("log.txt", f"u1 C#\n{comment}u1 NA\nu2 null\nu2 a#b\n")

    frame = read_log(path, PrepareOptions(format="pairs"))

    assert frame["user"].tolist() == ["u1", "u1", "u2", "u2"]
    assert frame["item"].tolist() == ["C#", "NA", "null", "a#b"]


def test_pairs_with_three_fields_on_every_line_are_refused(write_file: WriteFile) -> None:
    path = write_file("log.txt", "u1 a b\nu2 c d\n")

    with pytest.raises(DataError, match=r"log\.txt: line 1: 'u1 a b' expected two fields"):
        read_log(path, PrepareOptions(format="pairs"))


def test_sequences_file(write_file: WriteFile) -> None:
    path = write_file("seqs.txt", "7 30 10 20\n3 10 30\n")

    prepared = load_interactions(path, KEEP_ALL)

    assert sequences_of(prepared) == {3: [10, 30], 7: [30, 10, 20]}
    assert prepared.vocab.item_ids.tolist() == [10, 20, 30]


def test_movielens_dat_sorts_by_time_stably_within_user(write_file: WriteFile) -> None:
    # Out of time order on purpose; items 11 and 13 share timestamp 100 and keep file order.
    path = write_file(
        "ratings.dat",
        "1::10::5::300\n2::12::4::20\n1::11::4::100\n1::12::3::200\n1::13::3::100\n"
        "1::14::3::50\n2::10::1::10\n",
    )

    frame = read_log(path)
    prepared = load_interactions(path, KEEP_ALL)

    assert frame.columns.tolist() == ["user", "item", "timestamp"]  # ratings only to filter
    assert read_log(path, PrepareOptions(min_rating=1)).columns.tolist() == [
        "user", "item", "rating", "timestamp"]
    assert frame["timestamp"].tolist() == [300, 20, 100, 200, 100, 50, 10]
    assert sequences_of(prepared) == {1: [14, 11, 13, 12, 10], 2: [10, 12]}


def test_movielens_ratings_csv(write_file: WriteFile) -> None:
    path = write_file(
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759100\n"
        "2,10,4.0,835355493\n1,1061,3.0,1260759182\n",
    )

    prepared = load_interactions(path, KEEP_ALL)

    assert sequences_of(prepared) == {1: [1029, 31, 1061], 2: [10]}
    assert read_log(path, PrepareOptions(min_rating=1))["rating"].tolist() == [2.5, 3.0, 4.0, 3.0]


def test_recbole_inter_file(write_file: WriteFile) -> None:
    path = write_file(
        "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\t50\t4\t881250949\nu1\t20\t5\t881250940\nu2\t30\t3\t891717742\n",
    )

    prepared = load_interactions(path, KEEP_ALL)

    assert detect_format(path) == "recbole"
    assert sequences_of(prepared) == {"u1": [20, 50], "u2": [30]}


def test_csv_with_other_column_names_is_recognised(write_file: WriteFile) -> None:
    path = write_file(
        "events.csv",
        "event_time;visitor_id;product_id;price\n5;v1;p1;9.5\n2;v1;p2;1.0\n3;v2;p1;2.0\n",
    )

    prepared = load_interactions(path, KEEP_ALL)

    assert sequences_of(prepared) == {"v1": ["p2", "p1"], "v2": ["p1"]}


def test_csv_with_explicit_column_names(write_file: WriteFile) -> None:
    path = write_file("shop.csv", "buyer,sku,when,user\nb1,s1,3,x\nb1,s2,1,x\nb2,s1,2,y\n")
    options = PrepareOptions(min_user_count=0, user_col="buyer", item_col="sku", time_col="when")

    prepared = load_interactions(path, options)

    assert sequences_of(prepared) == {"b1": ["s2", "s1"], "b2": ["s1"]}


def test_csv_with_dates_as_timestamps(write_file: WriteFile) -> None:
    path = write_file(
        "dated.csv", "user,item,date\nu,a,2021-03-02\nu,b,2021-03-01\nu,c,2021-03-03\n"
    )

    assert sequences_of(load_interactions(path, KEEP_ALL)) == {"u": ["b", "a", "c"]}


def test_iso_times_with_and_without_fractions_of_a_second(write_file: WriteFile) -> None:
    path = write_file("iso.csv", "user,item,timestamp\nu,a,2021-03-02T10:00:00\n"
                      "u,b,2021-03-02T09:00:00.250000\nu,c,2021-03-02T08:00:00\n")

    assert sequences_of(load_interactions(path, KEEP_ALL)) == {"u": ["c", "b", "a"]}


def test_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {"user_id": [5, 5, 6, 5], "item_id": ["x", "y", "x", "z"], "timestamp": [3, 1, 1, 2]}
    ).to_parquet(path)

    prepared = load_interactions(path, KEEP_ALL)

    assert detect_format(path) == "parquet"
    assert sequences_of(prepared) == {5: ["y", "z", "x"], 6: ["x"]}


def test_data_frame() -> None:
    frame = pd.DataFrame({"user": [1, 1, 2, 1], "item": ["b", "a", "a", "c"], "ts": [9, 8, 1, 7]})

    prepared = load_interactions(frame, KEEP_ALL)

    assert sequences_of(prepared) == {1: ["c", "a", "b"], 2: ["a"]}
    assert prepared.source == "data frame"


def test_data_frame_with_explicit_time_column() -> None:
    frame = pd.DataFrame({"user": ["u"] * 3, "item": ["a", "b", "c"], "when": [3, 1, 2]})

    prepared = load_interactions(frame, PrepareOptions(min_user_count=0, time_col="when"))

    assert sequences_of(prepared) == {"u": ["b", "c", "a"]}


def test_parquet_ids_keep_their_values(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({  # floats where a missing value made pandas store 10 as 10.0
        "user": pa.array([2**63 + 5, 2**63 + 5, 7], pa.uint64()), "item": [10.0, 11.0, 10.0],
    }), path)

    prepared = load_interactions(path, KEEP_ALL)

    assert sequences_of(prepared) == {"7": [10], "9223372036854775813": [10, 11]}


def test_parquet_list_column_is_not_an_id(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": [[1, 2], [3]]}), path)

    with pytest.raises(DataError, match=r"log\.parquet: line 1: the item column holds lists or "
                       "records, not single ids"):
        read_log(path)


def test_filtered_frame_and_its_parquet_keep_each_rows_time(tmp_path: Path) -> None:
    # A filtered, re-sorted frame has a non-default index; times are matched by position.
    frame = pd.DataFrame({
        "user": ["u"] * 4 + ["v"] * 4, "item": list("abcdabcd"),
        "rating": [5, 1, 5, 5, 5, 5, 1, 5], "timestamp": [4, 3, 2, 1, 1, 2, 3, 4],
    })
    kept = frame[frame["item"] != "c"].sort_values("user", ascending=False)
    kept.to_parquet(tmp_path / "kept.parquet")
    options = PrepareOptions(min_user_count=0, min_rating=5)

    for data_ in (kept, tmp_path / "kept.parquet"):
        prepared = load_interactions(data_, options, use_cache=False)
        assert sequences_of(prepared) == {"u": ["d", "a"], "v": ["a", "b", "d"]}


def test_date_and_time_columns_are_combined(write_file: WriteFile, tmp_path: Path) -> None:
    path = write_file("log.csv", "user,item,date,time\nu,a,2021-03-01,23:00\nu,b,2021-03-02,01:00\n"
                      "u,c,2021-03-01,22:00\n")
    pd.read_csv(path).to_parquet(tmp_path / "log.parquet")

    for data_ in (path, tmp_path / "log.parquet"):
        assert sequences_of(load_interactions(data_, KEEP_ALL)) == {"u": ["c", "a", "b"]}


def test_ratings_are_read_only_to_filter_by_them(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user_id,item_id,value\nu,a,click\nu,b,purchase\nu,c,\n")

    assert sequences_of(load_interactions(path, KEEP_ALL)) == {"u": ["a", "b", "c"]}
    with pytest.raises(DataError, match=r"log\.csv: line 2: rating 'click' is not a number"):
        load_interactions(path, PrepareOptions(min_user_count=0, min_rating=1))


def test_byte_order_mark_is_not_part_of_the_first_id(write_file: WriteFile) -> None:
    sequences = write_file("seqs.txt", "\ufeff1 10 11\n2 10\n")
    ratings = write_file("ratings.dat", "\ufeff1::10::5::2\n1::11::4::1\n")
    marked = write_file("log.csv", "\ufeff# synthetic\nuser,item\nu,a\n")

    assert sequences_of(load_interactions(sequences, KEEP_ALL)) == {1: [10, 11], 2: [10]}
    assert sequences_of(load_interactions(ratings, KEEP_ALL)) == {1: [11, 10]}
    assert load_interactions(marked, KEEP_ALL).synthetic


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.txt", "u1 i1\nu1 i2\n", "pairs"),
        ("a.txt", "u1 i1 i2 i3\nu2 i1 i2\n", "sequences"),
        ("a.txt", "1::2::5::978300760\n", "movielens-dat"),
        ("a.txt", "userId,movieId,rating,timestamp\n1,2,5,3\n", "csv"),
        ("a.tsv", "user\titem\n1\t2\n", "csv"),
        ("a.txt", "user_id:token\titem_id:token\n1\t2\n", "recbole"),
        ("a.inter", "u\ti\n1\t2\n", "recbole"),
        ("a.txt", "# synthetic data\nu1 i1\nu1 i2\n", "pairs"),
    ],
)
def test_detect_format(write_file: WriteFile, name: str, text: str, expected: str) -> None:
    assert detect_format(write_file(name, text)) == expected


def test_detect_format_refuses_to_guess(write_file: WriteFile) -> None:
    path = write_file("a.txt", "u1 i1 i2\nu2 i3 i4\n")

    with pytest.raises(DataError, match=r"cannot tell the format .*name it with --format"):
        detect_format(path)


def test_equal_timestamps_keep_file_order() -> None:
    frame = pd.DataFrame(
        {"user": ["u"] * 5, "item": ["e", "d", "c", "b", "a"], "timestamp": [2, 1, 2, 1, 2]}
    )

    assert sequences_of(prepare_frame(frame, KEEP_ALL)) == {"u": ["d", "b", "e", "c", "a"]}


def test_many_equal_timestamps_keep_file_order() -> None:
    # Large enough that an unstable sort would reorder ties (small arrays sort stably anyway).
    rng = np.random.default_rng(0)
    times = rng.integers(0, 3, size=300)
    frame = pd.DataFrame({"user": rng.choice(["u", "v"], size=300), "item": np.arange(300),
                          "timestamp": times})

    prepared = prepare_frame(frame, KEEP_ALL)

    for user, items in sequences_of(prepared).items():
        rows = frame[frame["user"] == user]
        assert items == rows.sort_values("timestamp", kind="stable")["item"].tolist()
        assert items != rows["item"].tolist()


def test_without_timestamps_file_order_is_kept() -> None:
    frame = pd.DataFrame({"user": ["u", "v", "u", "u"], "item": ["z", "a", "y", "x"]})

    assert sequences_of(prepare_frame(frame, KEEP_ALL)) == {"u": ["z", "y", "x"], "v": ["a"]}


def test_min_rating_keeps_only_high_ratings(write_file: WriteFile) -> None:
    path = write_file("ratings.dat", "1::10::5::1\n1::11::2::2\n1::12::4::3\n")

    prepared = load_interactions(path, PrepareOptions(min_user_count=0, min_rating=4))

    assert sequences_of(prepared) == {1: [10, 12]}


# ----------------------------------------------------------------------------------------------
# Original ids


def test_string_and_integer_ids_round_trip(write_file: WriteFile) -> None:
    path = write_file("log.txt", "10 apple\n10 pear\n2 apple\n")

    prepared = load_interactions(path, KEEP_ALL)

    assert prepared.user_ids.tolist() == [2, 10]
    assert all(type(u) is int for u in prepared.user_index())
    items = prepared.vocab.decode(np.arange(1, prepared.num_items + 1))
    assert items == ["apple", "pear"]
    assert all(type(i) is str for i in items)


def test_zero_padded_ids_stay_strings(write_file: WriteFile) -> None:
    path = write_file("log.txt", "007 1\n007 2\n7 1\n")

    prepared = load_interactions(path, KEEP_ALL)

    assert prepared.user_ids.tolist() == ["007", "7"]
    assert prepared.user_index() == {"007": 0, "7": 1}
    assert prepared.vocab.decode(np.array([1, 2])) == [1, 2]


def test_ids_keep_their_type_through_the_cache(write_file: WriteFile) -> None:
    path = write_file("log.txt", "007 5\n007 6\n8 5\n")

    first = load_interactions(path, KEEP_ALL)
    second = load_interactions(path, KEEP_ALL)

    assert second.user_index() == first.user_index() == {"007": 0, "8": 1}
    assert second.vocab.decode(second.items) == first.vocab.decode(first.items) == [5, 6, 5]


def test_vocab_encode_skips_unknown_items_and_decode_inverts_it() -> None:
    vocab = ItemVocab(np.array(["a", "b", "007"], dtype=object))

    internal, unknown = vocab.encode(["007", "zzz", "a", 7, "b"])

    assert internal.tolist() == [3, 1, 2]
    assert unknown == ["zzz", 7]
    assert vocab.decode(internal) == ["007", "a", "b"]
    assert (vocab.num_items, vocab.padding_id, vocab.mask_id) == (3, 0, 4)


def test_vocab_encode_matches_integer_ids_given_as_text() -> None:
    vocab = ItemVocab(np.array([5, 42, 100]))

    internal, unknown = vocab.encode(["42", 100, "007", "x", " 5 "])

    assert internal.tolist() == [2, 3, 1]
    assert unknown == ["007", "x"]
    assert vocab.decode(internal) == [42, 100, 5]


# ----------------------------------------------------------------------------------------------
# Minimum counts


def test_users_need_five_interactions_by_default() -> None:
    rows = [("long", f"i{k}") for k in range(5)] + [("short", f"i{k}") for k in range(4)]
    frame = pd.DataFrame(rows, columns=["user", "item"])

    prepared = prepare_frame(frame)

    assert prepared.user_ids.tolist() == ["long"]
    assert prepared.num_interactions == 5


def test_min_item_count_drops_rare_items() -> None:
    frame = pd.DataFrame({"user": ["u", "u", "u", "v", "v"], "item": ["a", "b", "c", "a", "c"]})

    prepared = prepare_frame(frame, PrepareOptions(min_user_count=0, min_item_count=2))

    assert sequences_of(prepared) == {"u": ["a", "c"], "v": ["a", "c"]}


def test_counts_are_taken_once_on_the_raw_log() -> None:
    # u has 3 interactions in the raw log but only 2 once item 'rare' is dropped: counting once
    # keeps u (3 >= 3); re-counting after the item filter would drop u and then item 'a'.
    frame = pd.DataFrame(
        {"user": ["u", "u", "u", "v", "v", "v"], "item": ["a", "rare", "b", "a", "b", "b"]}
    )

    prepared = prepare_frame(frame, PrepareOptions(min_user_count=3, min_item_count=2))

    assert sequences_of(prepared) == {"u": ["a", "b"], "v": ["a", "b", "b"]}


def test_nothing_left_after_filtering_says_what_to_lower() -> None:
    frame = pd.DataFrame({"user": ["u", "u", "v"], "item": ["a", "b", "a"]})

    with pytest.raises(DataError, match=r"nothing left after filtering \(users >= 5, items >= 0 "
                       r"interactions\); lower --min-user-count / --min-item-count"):
        prepare_frame(frame)


def test_negative_minimum_count_is_refused() -> None:
    with pytest.raises(DataError, match="minimum counts must be >= 0"):
        PrepareOptions(min_user_count=-1)


# ----------------------------------------------------------------------------------------------
# Bad input: specific errors naming the file and line


def test_malformed_pairs_line_names_file_and_line(write_file: WriteFile) -> None:
    path = write_file("log.txt", "u1 a\nu1 b\nu1\nu2 c\n")

    with pytest.raises(DataError, match=r"log\.txt: line 3: 'u1' expected two fields"):
        load_interactions(path, PrepareOptions(format="pairs", min_user_count=0))


def test_pairs_line_with_three_fields_names_the_line(write_file: WriteFile) -> None:
    path = write_file("log.txt", "u1 a\n# note\nu1 b c\n")

    with pytest.raises(DataError, match=r"log\.txt: line 3: 'u1 b c' expected two fields"):
        read_log(path, PrepareOptions(format="pairs"))


def test_sequences_line_without_items_names_the_line(write_file: WriteFile) -> None:
    path = write_file("seqs.txt", "u1 a b\nu2\n")

    with pytest.raises(DataError, match=r"seqs\.txt: line 2: 'u2' has a user but no items"):
        read_log(path, PrepareOptions(format="sequences"))


def test_movielens_line_with_missing_field_names_the_line(write_file: WriteFile) -> None:
    path = write_file("ratings.dat", "1::2::5::100\n1::3::4\n")

    with pytest.raises(DataError, match=r"ratings\.dat: line 2: '1::3::4' expected"):
        read_log(path)


@pytest.mark.parametrize(
    "text", ["user,item\nu1,a,5\nu2,b,6\n", "user,item,timestamp\n1,10,100,0\n"]
)
def test_csv_row_with_a_field_more_than_the_header_names_the_line(
    write_file: WriteFile, text: str
) -> None:
    path = write_file("log.csv", text)

    with pytest.raises(DataError, match=r"log\.csv: line 2: more fields than the [23] named on "
                       "the header line"):
        read_log(path)


def test_csv_trailing_field_empty_on_every_line_is_dropped(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user,item,timestamp\nu,a,2,\nu,b,1,\n")

    assert sequences_of(load_interactions(path, KEEP_ALL)) == {"u": ["b", "a"]}


@pytest.mark.parametrize(("name", "text", "options", "says"), [
    ("ratings.dat", "1::10::5::100::7\n1::11::4::200::7\n", None,
     r"ratings\.dat: line 1: '1::10::5::100::7' expected"),
    ("log.csv", "user,item,time\nu,a,23:00\nu,b,01:00\n", None,
     r"log\.csv: line 2: timestamp '23:00' is a time of day with no date; put the date in the "
     "same column or in a column named 'date'"),
    ("log.csv", "user,item,rating\nu,a,5\nu,b,\n", PrepareOptions(min_rating=4),
     r"log\.csv: line 3: rating '' is not a number"),
])
def test_odd_fields_name_their_line(write_file: WriteFile, name: str, text: str,
                                    options: PrepareOptions | None, says: str) -> None:
    with pytest.raises(DataError, match=says):
        read_log(write_file(name, text), options)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_file(write_file: WriteFile, text: str) -> None:
    path = write_file("empty.txt", text)

    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        load_interactions(path)


def test_csv_format_on_a_file_of_comments_is_empty(write_file: WriteFile) -> None:
    path = write_file("log.csv", "# only a comment\n\n")

    with pytest.raises(DataError, match=r"log\.csv: the file is empty"):
        load_interactions(path, PrepareOptions(format="csv"))


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [("seqs.txt", "u1 café cafè\n", 1), ("ratings.dat", "u::café::5::1\n", 1),
     ("log.csv", "user,item\nu,café\nu,cafè\n", 2)],
)
def test_file_not_in_utf8_names_the_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))  # 'café' and 'cafè' must never become one id

    with pytest.raises(DataError, match=rf"{name}: line {line}: not UTF-8 text; convert the file"):
        read_log(path)


@pytest.mark.parametrize(("name", "text"), [
    ("log.csv.gz", "user,item,timestamp\nu,a,3\nu,b,1\nv,a,2\nv,c,5\nv,b,4\n"),
    ("log.txt.gz", "u a\nu b\nv a\nv c\nv b\n"),
    ("ratings.dat.gz", "1::10::5::3\n1::11::4::1\n2::10::3::2\n2::12::5::5\n"),
    ("seqs.gz", "u a b c\nv a d\n"),
])
def test_gzip_files_read_as_the_plain_ones(tmp_path: Path, name: str, text: str) -> None:
    plain = tmp_path / name.removesuffix(".gz")
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / name
    packed.write_bytes(gzip.compress(text.encode()))
    expected = load_interactions(plain, KEEP_ALL, use_cache=False)
    got = load_interactions(packed, KEEP_ALL, use_cache=False)
    assert sequences_of(got) == sequences_of(expected)
    assert got.fingerprint == expected.fingerprint


def test_parquet_without_its_suffix_is_told_by_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.bin"
    pd.DataFrame({"user": [1, 1, 2], "item": [5, 6, 5]}).to_parquet(path)
    assert sequences_of(load_interactions(path, KEEP_ALL, use_cache=False)) == {
        1: [5, 6], 2: [5]}


def test_csv_with_header_only_has_no_interactions(write_file: WriteFile) -> None:
    path = write_file("header.csv", "user,item\n")

    with pytest.raises(DataError, match=r"header\.csv: no interactions in the file"):
        load_interactions(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory; give the interaction file inside it"):
        load_interactions(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        load_interactions(tmp_path / "nope.txt")


def test_unknown_format_name() -> None:
    with pytest.raises(DataError, match="unknown format 'xml'; choose one of auto, pairs"):
        PrepareOptions(format="xml")


def test_unknown_preparation_option() -> None:
    with pytest.raises(DataError, match="unknown preparation option"):
        PrepareOptions.from_dict({"min_users": 5})


def test_csv_without_user_column(write_file: WriteFile) -> None:
    path = write_file("log.csv", "person,item\np,a\n")

    with pytest.raises(DataError, match=r"log\.csv: cannot find the user column among "
                       r"\['person', 'item'\]; name it with --user-col"):
        read_log(path)


def test_csv_without_header_line_says_so(write_file: WriteFile) -> None:
    path = write_file("log.csv", "196,242,3,881250949\n186,302,3,891717742\n")

    with pytest.raises(DataError, match=r"log\.csv: cannot find the user column among "
                       r"\['196', '242', '3', '881250949'\]: the file seems to have no header "
                       "line; add one that names the columns"):
        read_log(path)


def test_explicit_column_that_does_not_exist(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user,item\np,a\n")

    with pytest.raises(DataError, match=r"no column 'when' for time"):
        read_log(path, PrepareOptions(time_col="when"))


def test_csv_missing_item_names_the_line(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user,item\nu,a\nu,\n")

    with pytest.raises(DataError, match=r"log\.csv: line 3: missing user or item"):
        read_log(path)


def test_non_numeric_timestamp_names_the_line(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user,item,timestamp\nu,a,1\nu,b,2\nu,c,soon\nu,d,4\n")

    with pytest.raises(DataError, match=r"log\.csv: line 4: timestamp 'soon' is neither a number "
                       "nor a date"):
        read_log(path)


def test_line_numbers_count_comment_lines_above_the_header(write_file: WriteFile) -> None:
    path = write_file("log.csv", "# synthetic data\nuser,item,timestamp\nu,a,1\nu,b,x\n")

    with pytest.raises(DataError, match=r"log\.csv: line 4: timestamp 'x'"):
        read_log(path)


def test_hash_inside_a_csv_field_is_data(write_file: WriteFile) -> None:
    path = write_file("tags.csv", "user,item,timestamp\nu,C#,2\nu,F#,1\n")

    assert sequences_of(load_interactions(path, KEEP_ALL)) == {"u": ["F#", "C#"]}


def test_bad_date_names_the_line(write_file: WriteFile) -> None:
    path = write_file("log.csv", "user,item,date\nu,a,2021-01-01\nu,b,someday\n")

    with pytest.raises(DataError, match=r"log\.csv: line 3: timestamp 'someday'"):
        read_log(path)


def test_non_numeric_movielens_timestamp_names_the_line(write_file: WriteFile) -> None:
    path = write_file("ratings.dat", "1::2::5::100\n1::3::4::101\n1::4::4::later\n")

    with pytest.raises(DataError, match=r"ratings\.dat: line 3: timestamp 'later' is not a number"):
        read_log(path)


def test_unreadable_parquet(write_file: WriteFile) -> None:
    path = write_file("log.parquet", "not parquet at all\n")

    with pytest.raises(DataError, match=r"log\.parquet: not a readable Parquet file"):
        read_log(path)


def test_frame_with_missing_values() -> None:
    frame = pd.DataFrame({"user": ["u", None], "item": ["a", "b"]})

    with pytest.raises(DataError, match="data frame: line 2: missing user or item"):
        load_interactions(frame, KEEP_ALL)


# ----------------------------------------------------------------------------------------------
# Cache of prepared data


def test_second_load_uses_the_cache(write_file: WriteFile, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_file("log.txt", "u1 a\nu1 b\nu2 b\nu1 c\n")
    first = load_interactions(path, KEEP_ALL)

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the log was parsed again")

    monkeypatch.setattr(data, "read_log", must_not_parse)
    second = load_interactions(path, KEEP_ALL)

    np.testing.assert_array_equal(second.items, first.items)
    np.testing.assert_array_equal(second.offsets, first.offsets)
    assert second.user_ids.tolist() == first.user_ids.tolist()
    assert second.vocab.item_ids.tolist() == first.vocab.item_ids.tolist()
    assert second.fingerprint == first.fingerprint
    assert second.source == str(path)


def test_cache_lives_under_the_environment_folder(
    write_file: WriteFile, _private_cache: Path
) -> None:
    load_interactions(write_file("log.txt", "u a\nu b\n"), KEEP_ALL)

    assert cache_dir() == _private_cache
    assert len(list((_private_cache / "prepared").glob("*.npz"))) == 1


def test_cache_entry_grows_with_the_ids_not_the_longest_one(
    write_file: WriteFile, _private_cache: Path
) -> None:
    long_id = "x" * 20_000
    text = "".join(f"user{u} i{u % 7}\n" for u in range(3000)) + f"{long_id} i1\n"
    first = load_interactions(write_file("log.txt", text), KEEP_ALL)
    second = load_interactions(write_file("log.txt", text), KEEP_ALL)

    (entry,) = (_private_cache / "prepared").glob("*.npz")
    assert entry.stat().st_size < 200_000  # a fixed-width array would take 240 MB
    assert second.user_ids.tolist() == first.user_ids.tolist()
    assert second.fingerprint == first.fingerprint


def test_changed_file_or_options_get_new_cache_entries(
    write_file: WriteFile, _private_cache: Path
) -> None:
    path = write_file("log.txt", "u1 a\nu1 b\n")
    before = load_interactions(path, KEEP_ALL)
    path.write_text("u1 a\nu1 b\nu1 c\n", encoding="utf-8")
    after = load_interactions(path, KEEP_ALL)
    load_interactions(path, PrepareOptions(min_user_count=2))

    assert after.num_interactions == 3
    assert after.fingerprint != before.fingerprint
    assert len(list((_private_cache / "prepared").glob("*.npz"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "emptied", "truncated"])
def test_damaged_cache_entry_is_rebuilt(write_file: WriteFile, _private_cache: Path,
                                        damage: str) -> None:
    path = write_file("log.txt", "u1 a\nu1 b\n")
    first = load_interactions(path, KEEP_ALL)
    (entry,) = (_private_cache / "prepared").glob("*.npz")
    whole = entry.read_bytes()
    entry.write_bytes({"garbage": b"garbage", "emptied": b"", "truncated": whole[:60]}[damage])

    again = load_interactions(path, KEEP_ALL)

    assert again.fingerprint == first.fingerprint


def test_fingerprint_is_equal_for_equal_content(write_file: WriteFile) -> None:
    text = "u1 a\nu1 b\nu2 a\n"
    one = load_interactions(write_file("one.txt", text), KEEP_ALL)
    two = load_interactions(write_file("two.txt", text), KEEP_ALL, use_cache=False)
    frame = load_interactions(
        pd.DataFrame({"user": ["u1", "u1", "u2"], "item": ["a", "b", "a"]}), KEEP_ALL
    )
    other = load_interactions(write_file("three.txt", "u1 b\nu1 a\nu2 a\n"), KEEP_ALL)

    assert one.fingerprint == two.fingerprint == frame.fingerprint
    assert other.fingerprint != one.fingerprint


def test_describe(tiny: Interactions) -> None:
    summary = tiny.describe()

    assert {k: summary[k] for k in ("users", "items", "interactions", "avg_length")} == {
        "users": 4, "items": 6, "interactions": 15, "avg_length": 3.75,
    }
    assert summary["synthetic"] is False
