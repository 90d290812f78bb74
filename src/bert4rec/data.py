"""Reading interaction logs and preparing them the way the BERT4Rec paper does.

A log becomes a :class:`Interactions`: every user's items in time order, stored as one flat
array of internal item ids with per-user offsets (CSR). Internal ids are ``1..num_items``;
``0`` is padding and ``num_items + 1`` is ``[MASK]``. The original user and item ids (strings or
integers) are kept beside them so that users always see their own ids.

Preparation (paper section 4.1): implicit feedback (every interaction counts), interactions
sorted by time within each user with a stable sort (file order where there is no timestamp),
optional minimum counts. Counts are taken once on the whole log and both filters applied
together, as the SASRec/BERT4Rec preprocessing scripts do; users >= 5 by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bert4rec.errors import DataError

FORMATS = ("auto", "pairs", "sequences", "movielens-dat", "csv", "parquet", "recbole")
SYNTHETIC_MARKER = "# synthetic"
PREPARED_FORMAT = 2  # bump when the prepared layout or the preparation rules change

_USER_COLUMNS = ("user", "user_id", "userid", "uid", "customer_id", "visitor_id", "session_id")
_ITEM_COLUMNS = ("item", "item_id", "itemid", "iid", "movieid", "movie_id", "product_id", "asin")
_TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "event_time", "unix_time")
_RATING_COLUMNS = ("rating", "score", "value")
_INT_TOKEN = re.compile(r"^-?(0|[1-9][0-9]*)$")
_TIME_OF_DAY = r"\s*[0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]*)?)?\s*([AaPp]\.?[Mm]\.?)?\s*"


@dataclass(frozen=True)
class PrepareOptions:
    """How a log is read and filtered. Stored with every run so evaluation prepares alike."""

    format: str = "auto"
    min_user_count: int = 5
    min_item_count: int = 0
    min_rating: float | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.min_user_count < 0 or self.min_item_count < 0:
            raise DataError("minimum counts must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrepareOptions:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DataError(f"unknown preparation option(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass(frozen=True)
class ItemVocab:
    """Original item ids by internal id: ``item_ids[i - 1]`` is the original id of item ``i``."""

    item_ids: np.ndarray  # (num_items,) int64 or str

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def padding_id(self) -> int:
        return 0

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    @property
    def index(self) -> dict[Any, int]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {_plain(v): i + 1 for i, v in enumerate(self.item_ids.tolist())}
            object.__setattr__(self, "_index", cached)
        return cached

    def encode(self, items: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Internal ids of the known items, in order, and the unknown ones that were skipped.

        Tokens given as strings match integer ids too (``"42"`` finds item ``42``).
        """
        index = self.index
        known: list[int] = []
        unknown: list[Any] = []
        for raw in items:
            found = index.get(self._key(raw))
            if found is None:
                unknown.append(raw)
            else:
                known.append(found)
        return np.asarray(known, dtype=np.int64), unknown

    def translation(self, other: ItemVocab) -> np.ndarray:
        """``table[j]`` is this vocabulary's internal id of ``other``'s item ``j``, 0 where this
        one does not know the item (``table[0]`` is 0, padding to padding)."""
        if (other.item_ids.dtype.kind == self.item_ids.dtype.kind
                and np.array_equal(other.item_ids, self.item_ids)):
            return np.arange(other.num_items + 1, dtype=np.int64)
        index = self.index
        table = np.zeros(other.num_items + 1, dtype=np.int64)
        for j, raw in enumerate(other.item_ids.tolist(), start=1):
            table[j] = index.get(self._key(raw), 0)
        return table

    def _key(self, raw: Any) -> Any:
        """``raw`` as this vocabulary's index spells it: '42' finds item 42, 42 finds '42'."""
        if self.item_ids.dtype.kind in "iu":
            if isinstance(raw, str) and _INT_TOKEN.match(raw.strip()):
                return int(raw)
            return raw
        return raw if isinstance(raw, str) else str(raw)

    def decode(self, internal: np.ndarray) -> list[Any]:
        """Original ids of internal ids (``1..num_items``)."""
        return [_plain(v) for v in self.item_ids[np.asarray(internal, dtype=np.int64) - 1]]


@dataclass(frozen=True)
class Interactions:
    """A prepared log: every user's items in time order (CSR layout).

    ``items[offsets[u]:offsets[u + 1]]`` are user ``u``'s internal item ids, oldest first.
    """

    user_ids: np.ndarray  # (num_users,) original user ids
    vocab: ItemVocab
    offsets: np.ndarray  # (num_users + 1,) int64
    items: np.ndarray  # (num_interactions,) int32, values in 1..num_items
    source: str = ""
    synthetic: bool = False

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def sequences(self) -> Iterator[np.ndarray]:
        for u in range(self.num_users):
            yield self.sequence(u)

    @property
    def fingerprint(self) -> str:
        """Content hash of the prepared data: a run trained on it records this to refuse others."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            for array in (self.offsets.astype(np.int64), self.items.astype(np.int32)):
                h.update(np.ascontiguousarray(array).tobytes())
            for ids in (self.user_ids, self.vocab.item_ids):
                h.update(json.dumps([_plain(v) for v in ids.tolist()]).encode())
            cached = h.hexdigest()[:32]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def user_index(self) -> dict[Any, int]:
        return {_plain(v): i for i, v in enumerate(self.user_ids.tolist())}

    def describe(self) -> dict[str, Any]:
        lengths = self.lengths
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "avg_length": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
            "fingerprint": self.fingerprint,
        }


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so ids compare, hash and serialise as users wrote them."""
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------
# Reading raw logs into a frame with columns user, item and optionally timestamp and rating.


def detect_format(path: Path) -> str:
    """Guess a file's format from its name and first lines; raise if it cannot be told."""
    suffix = path.suffix.lower()
    if suffix == ".gz":  # 'log.csv.gz': the name inside
        suffix = Path(path.stem).suffix.lower()
    if suffix in (".parquet", ".pq") or _is_parquet(path):
        return "parquet"
    if suffix == ".inter":
        return "recbole"
    lines = _head_lines(path, 50)
    if not lines:
        raise DataError(f"{path}: the file is empty")
    first = lines[0]
    if "::" in first:
        return "movielens-dat"
    if re.search(r"\w:(token|float)\b", first):
        return "recbole"
    if suffix in (".csv", ".tsv") or "," in first or _looks_like_header(first):
        return "csv"
    counts = {len(line.split()) for line in lines}
    if counts == {2}:
        return "pairs"
    if min(counts) >= 2 and len(counts) > 1:
        return "sequences"
    raise DataError(
        f"{path}: cannot tell the format from the first lines (each has {sorted(counts)} fields); "
        f"name it with --format ({', '.join(FORMATS[1:])})"
    )


def _starts_with(path: Path, magic: bytes) -> bool:
    """Whether the file's first bytes are ``magic`` (its kind, whatever its name)."""
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _gzipped(path: Path) -> bool:
    return _starts_with(path, b"\x1f\x8b")


def _open_bytes(path: Path) -> Any:
    """The file's bytes, decompressed where it is gzip-compressed."""
    return gzip.open(path, "rb") if _gzipped(path) else open(path, "rb")


def _open_text(path: Path) -> Any:
    """The file as UTF-8 text (a byte-order mark dropped), decompressed where gzip-compressed."""
    if _gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _compression(path: Path) -> Literal["gzip"] | None:
    """What pandas is told: a gzip-compressed file decompresses whatever its name."""
    return "gzip" if _gzipped(path) else None


def _head_lines(path: Path, n: int) -> list[str]:
    lines: list[str] = []
    with _open_text(path) as f:
        try:
            for line in f:
                stripped = line.strip()
                if stripped and not stripped.startswith("#"):
                    lines.append(stripped)
                    if len(lines) >= n:
                        break
        except UnicodeDecodeError as exc:
            raise _not_utf8(path) from exc
    return lines


def _looks_like_header(line: str) -> bool:
    tokens = re.split(r"[\t;]", line)
    return len(tokens) >= 2 and any(t.strip().lower() in _USER_COLUMNS for t in tokens)


def _is_synthetic(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq") or _is_parquet(path):
        return False
    with _open_bytes(path) as f:
        first = f.readline().removeprefix(b"\xef\xbb\xbf")
    return first.startswith(SYNTHETIC_MARKER.encode())


def _is_parquet(path: Path) -> bool:
    return _starts_with(path, b"PAR1")


def read_log(path: str | Path, options: PrepareOptions | None = None) -> pd.DataFrame:
    """Read a log file into a frame with ``user``, ``item`` and, where present, ``timestamp``
    and ``rating`` columns, in file order. Errors name the file and line."""
    options = options or PrepareOptions()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give the interaction file inside it")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        frame = _read_log(path, options)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path) from exc
    if frame.empty:
        raise DataError(f"{path}: no interactions in the file")
    return frame


def _read_log(path: Path, options: PrepareOptions) -> pd.DataFrame:
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt == "pairs":
        frame = _read_pairs(path)
    elif fmt == "sequences":
        frame = _read_sequences(path)
    elif fmt == "movielens-dat":
        frame = _read_movielens_dat(path, options)
    elif fmt == "recbole":
        frame = _read_delimited(path, sep="\t", options=options, strip_types=True)
    elif fmt == "csv":
        frame = _read_delimited(path, sep=_sniff_separator(path), options=options)
    elif fmt == "parquet":
        frame = select_columns(_read_parquet(path, options), options, where=str(path))
    else:  # pragma: no cover - PrepareOptions validates the name
        raise DataError(f"unknown format {fmt!r}")
    return frame


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8 text, naming its first line that is not."""
    where = ""
    with _open_bytes(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                where = f" line {number}:"
                break
    return DataError(
        f"{path}:{where} not UTF-8 text; convert the file to UTF-8 (for example "
        "'iconv -f latin1 -t utf-8 OLD > NEW')"
    )


def _first_bad_line(path: Path, check: Any) -> tuple[int, str] | None:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not check(stripped):
                return number, stripped[:80]
    return None


def _read_pairs(path: Path) -> pd.DataFrame:
    # Every token is an id: no missing-value words ('NA' and 'null' are items too) and no '#'
    # cut inside an id ('C#'); only lines that start with '#' are comments. pandas reads the
    # usual file; anything else (long comment lines, a malformed line) goes line by line.
    try:
        frame = pd.read_csv(
            path, sep=r"\s+", header=None, names=["user", "item", "extra"], dtype=str,
            engine="c", na_filter=False, compression=_compression(path),
        )
    except (pd.errors.ParserError, ValueError):
        return _read_sequences(path, pairs=True)
    frame = frame[~frame["user"].str.startswith("#")]
    if (frame["item"] == "").any() or (frame["extra"] != "").any():
        return _read_sequences(path, pairs=True)
    return _typed_ids(frame[["user", "item"]].reset_index(drop=True))


def _read_sequences(path: Path, pairs: bool = False) -> pd.DataFrame:
    """'user item1 item2 ...' lines, or with ``pairs`` exactly one item a line; blank lines and
    lines that start with '#' are skipped."""
    users: list[str] = []
    items: list[str] = []
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if pairs and len(tokens) != 2:
                raise DataError(f"{path}: line {number}: {line.strip()[:80]!r} expected two "
                                "fields 'user item' per line")
            if len(tokens) < 2:
                raise DataError(
                    f"{path}: line {number}: {line.strip()[:80]!r} has a user but no items; "
                    "expected 'user item1 item2 ...'"
                )
            users.extend([tokens[0]] * (len(tokens) - 1))
            items.extend(tokens[1:])
    return _typed_ids(pd.DataFrame({"user": users, "item": items}))


def _read_movielens_dat(path: Path, options: PrepareOptions) -> pd.DataFrame:
    fast = _read_movielens_dat_fast(path, options)
    if fast is not None:
        return fast
    # '::' is a multi-character separator, which only pandas' slow Python engine accepts;
    # reading through a tab in its place keeps the C parser, one block at a time.
    with (
        _open_bytes(path) as raw,
        io.BufferedReader(_ColonsAsTabs(raw), 1 << 20) as text,
        warnings.catch_warnings(),
    ):
        # index_col=False and the warning as an error: a fifth field is refused, not read as
        # the index with every field shifted.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(
                text, sep="\t", header=None, dtype=str, engine="c", index_col=False,
                names=["user", "item", "rating", "timestamp"],
            )
        except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError):
            frame = None
    if frame is None or frame["timestamp"].isna().any():
        bad = _first_bad_line(path, lambda line: len(line.split("::")) == 4)
        where = f" line {bad[0]}: {bad[1]!r}" if bad else ""
        raise DataError(f"{path}:{where} expected 'user::item::rating::timestamp'")
    if options.min_rating is None:  # ratings are read only to filter by them
        frame = frame.drop(columns="rating")
    else:
        frame["rating"] = _numeric(frame["rating"], path, "rating", header_lines=0)
    frame["timestamp"] = _numeric(frame["timestamp"], path, "timestamp", header_lines=0)
    return _typed_ids(frame)


class _ColonsAsTabs(io.RawIOBase):
    """A binary file read with every '::' replaced by a tab, as ``bytes.replace`` would do on
    the whole file, without holding a second copy of it. A trailing run of colons waits for the
    next block, since how a run splits into pairs depends on the whole run."""

    def __init__(self, raw: Any, block_size: int = 1 << 20) -> None:
        self._raw = raw
        self._block_size = block_size
        self._pending = b""  # converted bytes not yet handed out
        self._colons = b""  # colons at the end of the last block, not converted yet

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            block = self._raw.read(self._block_size)
            if not block:
                self._pending, self._colons = self._colons.replace(b"::", b"\t"), b""
                break
            block = self._colons + block
            kept = len(block.rstrip(b":"))
            self._pending, self._colons = block[:kept].replace(b"::", b"\t"), block[kept:]
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _sniff_separator(path: Path) -> str:
    lines = _head_lines(path, 1)
    if not lines:
        raise DataError(f"{path}: the file is empty (only comments or blank lines)")
    for sep in (",", "\t", ";"):
        if sep in lines[0]:
            return sep
    return ","


def _read_delimited(
    path: Path, sep: str, options: PrepareOptions, strip_types: bool = False
) -> pd.DataFrame:
    # Only comment lines above the header are skipped (the synthetic marker): pandas' comment=
    # would also cut every field at a '#' ('C#') and shift the line numbers of errors.
    skipped = _leading_comment_lines(path)
    fast = _read_delimited_fast(path, sep, options, skipped, strip_types)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            # index_col=False: a row with a field more than the header must not make the first
            # column the index; pandas then warns (and drops the field) unless it is empty on
            # every line.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(
                path, sep=sep, dtype=str, skiprows=skipped, engine="c", index_col=False,
                compression=_compression(path),
            )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except pd.errors.ParserWarning as exc:
        raise DataError(_extra_field_error(path, sep, skipped)) from exc
    except UnicodeDecodeError:
        raise  # a ValueError too, but read_log reports it with its line
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse as delimited text ({str(exc).strip()})") from exc
    if strip_types:  # RecBole headers are 'name:type'
        raw.columns = [str(c).split(":")[0] for c in raw.columns]
    return select_columns(raw, options, where=str(path), header_lines=1 + skipped)


def _extra_field_error(path: Path, sep: str, skipped: int) -> str:
    width = len(pd.read_csv(path, sep=sep, skiprows=skipped, nrows=0, index_col=False,
                            compression=_compression(path)).columns)
    # One name more than the header has: the extra field is the last column.
    extra = pd.read_csv(
        path, sep=sep, dtype=str, header=None, skiprows=skipped + 1, engine="c",
        names=list(range(width + 1)), usecols=[width], index_col=False,
        compression=_compression(path),
    )[width]
    rows = np.flatnonzero(extra.notna().to_numpy())
    where = f" line {int(rows[0]) + 2 + skipped}:" if len(rows) else ""
    return (
        f"{path}:{where} more fields than the {width} named on the header line; name every "
        "column in the header or remove the extra field"
    )


def _leading_comment_lines(path: Path) -> int:
    count = 0
    with _open_text(path) as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                break
            count += 1
    return count


def _read_parquet(path: Path, options: PrepareOptions) -> pd.DataFrame:
    """The columns :func:`select_columns` will pick, or the whole file where it cannot tell."""
    columns: list[str] | None = None
    try:
        # An empty table through pandas gives the column labels exactly as a full read would.
        labels = list(pq.read_schema(path).empty_table().to_pandas().columns)
        user, item, time, rating = _pick_columns(labels, options, str(path))
        date = _date_label(labels, time) if time is not None else None
        picked = [c for c in (user, item, time, rating, date) if c is not None]
        if all(isinstance(c, str) for c in picked):
            columns = picked
    except Exception:  # the full read below raises the error to report
        pass
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def select_columns(
    raw: pd.DataFrame, options: PrepareOptions, where: str = "data frame", header_lines: int = 0
) -> pd.DataFrame:
    """Pick the user, item and optional timestamp/rating columns of a frame by name."""
    user, item, time, rating = _pick_columns(list(raw.columns), options, where)
    for role, label in (("user", user), ("item", item)):
        _check_scalar_ids(raw[label], role, where, header_lines)
    frame = pd.DataFrame({"user": _values(raw[user]), "item": _values(raw[item])}, copy=False)
    missing = frame["user"].isna() | frame["item"].isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{where}: line {row + 1 + header_lines}: missing user or item")
    # By position: the raw frame's index (a filtered or sorted frame) is not the new one's.
    if time is not None:
        times = raw[time]
        date = _date_label(list(raw.columns), time)
        if date is not None and _times_of_day(times).all():
            times = raw[date].astype(str) + " " + times.astype(str)
        frame["timestamp"] = _timestamps(times, where, header_lines).to_numpy()
    if rating is not None:
        frame["rating"] = _numeric(raw[rating], where, "rating", header_lines).to_numpy()
    return _typed_ids(frame)


def _pick_columns(
    columns: list[Any], options: PrepareOptions, where: str
) -> tuple[Any, Any, Any, Any]:
    """The user, item, time and rating column labels (the last two None where absent; the
    rating also where no --min-rating asks for it, so that a rating column is never parsed
    unless it is used)."""
    lowered = {str(c).lower(): c for c in columns}

    def pick(named: str | None, candidates: tuple[str, ...], role: str, required: bool) -> Any:
        if named is not None:
            if named not in columns:
                raise DataError(
                    f"{where}: no column {named!r} for {role}; columns are {columns}"
                )
            return named
        for name in candidates:
            if name in lowered:
                return lowered[name]
        if required:
            if any(re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", str(c)) for c in columns):
                pairs = (" or, for whitespace-separated 'user item' lines, --format pairs"
                         if len(columns) == 2 else "")
                raise DataError(
                    f"{where}: cannot find the {role} column among {columns}: the file seems "
                    "to have no header line; add one that names the columns (such as "
                    f"'user,item,timestamp'){pairs}"
                )
            raise DataError(
                f"{where}: cannot find the {role} column among {columns}; "
                f"name it with --{role}-col"
            )
        return None

    return (
        pick(options.user_col, _USER_COLUMNS, "user", True),
        pick(options.item_col, _ITEM_COLUMNS, "item", True),
        pick(options.time_col, _TIME_COLUMNS, "time", False),
        pick(None, _RATING_COLUMNS, "rating", False) if options.min_rating is not None else None,
    )


def _date_label(columns: list[Any], time: Any) -> Any:
    """The label of a 'date' column beside the time column, or None."""
    return next((c for c in columns if str(c).lower() == "date" and c != time), None)


def _times_of_day(column: pd.Series) -> pd.Series:
    """Which values are a time of day with no date ('23:00', '11:05:09 PM')."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return pd.Series(False, index=column.index)
    return column.astype(str).str.fullmatch(_TIME_OF_DAY)


def _check_scalar_ids(column: pd.Series, role: str, where: str, header_lines: int) -> None:
    """Refuse a column of lists or records (a Parquet list or struct column) as ids."""
    if column.dtype != object:
        return
    nested = column.map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).to_numpy()
    if nested.any():
        row = int(np.flatnonzero(nested)[0])
        raise DataError(
            f"{where}: line {row + 1 + header_lines}: the {role} column holds lists or records, "
            f"not single ids; give one {role} id per row (explode the column first)"
        )


def _values(column: pd.Series) -> Any:
    # Text stays in pandas' own string array: to_numpy() would make a Python object per row.
    if isinstance(column.dtype, pd.StringDtype):
        return column.array
    return column.to_numpy()


def _numeric(column: pd.Series, where: Any, name: str, header_lines: int) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any() or values.isna().any():
        row = int(np.flatnonzero((bad | values.isna()).to_numpy())[0])
        raise DataError(f"{where}: line {row + 1 + header_lines}: {name} "
                        f"{_shown(column.iloc[row])} is not a number")
    return values


def _shown(value: Any) -> str:
    """A raw value for a message: an empty field is shown as '', not as nan."""
    return "''" if pd.isna(value) else repr(value)


def _timestamps(column: pd.Series, where: str, header_lines: int) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        values = column
    else:
        values = pd.to_numeric(column, errors="coerce")
        if values.isna().any():  # not numbers: try dates
            with warnings.catch_warnings():  # unparseable values are reported below
                warnings.simplefilter("ignore", UserWarning)
                dates = pd.to_datetime(column, errors="coerce", utc=True)
                if dates.isna().any():  # the format guessed from the first row; ISO 8601
                    iso = pd.to_datetime(column, errors="coerce", utc=True, format="ISO8601")
                    if iso.notna().sum() > dates.notna().sum():  # e.g. seconds with fractions
                        dates = iso
            # Keep the reading that parses more rows, so the error names the odd one out
            # (a typo in a number column is not reported as its first, valid row).
            if dates.notna().sum() > values.notna().sum():
                # A time of day parses as one on today's date: refused, not read as that.
                values = dates.mask(_times_of_day(column))
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        line = f"{where}: line {row + 1 + header_lines}: timestamp {_shown(column.iloc[row])}"
        if _times_of_day(column.iloc[row : row + 1]).all():
            raise DataError(f"{line} is a time of day with no date; put the date in the same "
                            "column or in a column named 'date'")
        raise DataError(f"{line} is neither a number nor a date")
    if pd.api.types.is_datetime64_any_dtype(values):
        values = values.astype("int64")
    return values


def _whole(values: np.ndarray) -> bool:
    """Whether every float is a whole number that converts to int64 exactly."""
    return bool(np.isfinite(values).all() and (values == np.round(values)).all()
                and (np.abs(values) <= 2.0**53).all())


def _typed_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids read as text become integers when every one is a canonical integer ('7', not '007'),
    so that they round-trip exactly either way."""
    for col in ("user", "item"):
        frame[col] = _typed_id_column(frame[col])
    return frame


def _typed_id_column(column: pd.Series) -> pd.Series:
    if column.dtype.kind == "u" and len(column) and int(column.max()) >= 1 << 63:
        return column.astype(str)  # beyond int64: text, as for ids read from text
    if column.dtype.kind == "f" and _whole(column.to_numpy()):
        return column.astype(np.int64)  # 10.0, as a column with a missing value stores 10
    if column.dtype.kind in "iu":
        return column.astype(np.int64)  # no copy when it is int64 already (copy on write)
    as_str = column.astype(str)
    if as_str.str.fullmatch(_INT_TOKEN.pattern).all():
        try:
            return as_str.astype(np.int64)
        except OverflowError:
            pass
    return as_str


# ----------------------------------------------------------------------------------------------
# Fast reading of large delimited files
#
# pyarrow parses the needed columns as text, in parallel, and the text is converted here only
# where it has a plain form that pandas reads the same way (canonical integers, decimals). On
# anything else (quoted numbers, missing fields, dates, pandas' missing-value words such as
# 'NA', a malformed line) the fast reader returns None, and the pandas reader reads the file
# and reports what is wrong with file and line: the result never depends on which reader ran.

_BLOCK_BYTES = 1 << 24  # per parsed block; larger blocks than pyarrow's 1 MiB parse faster
# pandas' default missing-value words (read_csv's na_values): ids it would read as missing.
_NA_WORDS = pa.array([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
])
_INTEGER = r"^-?[0-9]+$"
_DECIMAL = r"^-?[0-9]{1,9}(\.[0-9]{1,6})?$"  # at most 15 digits: every parser rounds these alike


def _read_delimited_fast(
    path: Path, sep: str, options: PrepareOptions, skipped: int, strip_types: bool
) -> pd.DataFrame | None:
    if _gzipped(path):  # read by pandas, which decompresses
        return None
    try:
        header = pd.read_csv(path, sep=sep, dtype=str, skiprows=skipped, nrows=0, engine="c")
    except (pd.errors.ParserError, ValueError):
        return None
    columns = [str(c) for c in header.columns]
    if strip_types:
        columns = [c.split(":")[0] for c in columns]
    if len(set(columns)) < len(columns):
        return None
    try:
        picked = _pick_columns(columns, options, str(path))
    except DataError:
        return None
    offset = _line_offset(path, skipped)
    if offset is None:
        return None
    names = [f"c{i}" for i in range(len(columns))]
    roles = {
        role: names[columns.index(label)]
        for role, label in zip(("user", "item", "timestamp", "rating"), picked, strict=True)
        if label is not None
    }
    with open(path, "rb") as f:
        f.seek(offset)
        # Without quotes no value holds a newline, and pyarrow may cut blocks at any newline.
        quoted = b'"' in f.read(_BLOCK_BYTES)
    with pa.OSFile(str(path)) as source:
        source.seek(offset)
        texts = _arrow_csv(
            source, names, roles, skip_rows=1,
            parse=pacsv.ParseOptions(delimiter=sep, newlines_in_values=quoted),
        )
    return _fast_frame(texts, forbidden=None) if texts is not None else None


def _read_movielens_dat_fast(path: Path, options: PrepareOptions) -> pd.DataFrame | None:
    # 'user::item::rating::timestamp' read with ':' as the separator: the odd fields must be
    # empty (pyarrow's null type refuses anything else), so a ':' inside a value fails the read.
    if _gzipped(path):  # read by pandas, which decompresses
        return None
    names = [f"c{i}" for i in range(7)]
    roles = dict(zip(("user", "item", "rating", "timestamp"), names[0::2], strict=True))
    if options.min_rating is None:
        del roles["rating"]
    texts = _arrow_csv(
        str(path), names, roles, skip_rows=0, separators=names[1::2],
        parse=pacsv.ParseOptions(delimiter=":", quote_char=False),
    )
    # pandas reads quotes and splits at tabs, which the ':' read keeps inside values.
    return _fast_frame(texts, forbidden="[\"\t]") if texts is not None else None


def _line_offset(path: Path, lines: int) -> int | None:
    """Byte offset of line ``lines`` (0-based), or None where a lone '\r' ends a line."""
    offset = 0
    with open(path, "rb") as f:
        for _ in range(lines):
            line = f.readline()
            if b"\r" in line.rstrip(b"\r\n"):
                return None
            offset += len(line)
    return offset


def _arrow_csv(
    source: Any, names: list[str], roles: dict[str, str], skip_rows: int, parse: Any,
    separators: list[str] | None = None,
) -> dict[str, Any] | None:
    """The columns of ``roles`` (role -> column name) as text, or None where pyarrow fails."""
    types = {name: pa.string() for name in roles.values()}
    if "rating" in roles and list(roles.values()).count(roles["rating"]) == 1:
        # A handful of distinct values: each is checked and converted once.
        types[roles["rating"]] = pa.dictionary(pa.int32(), pa.string())
    types.update({name: pa.null() for name in separators or []})
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=skip_rows, block_size=_BLOCK_BYTES
            ),
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(
                include_columns=list(types), column_types=types, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, OSError):
        return None
    if table.num_rows == 0:
        return None
    return {role: table.column(name) for role, name in roles.items()}


def _fast_frame(texts: dict[str, Any], forbidden: str | None) -> pd.DataFrame | None:
    """The frame the pandas reader would give, from text columns, or None where it may differ.
    Each text column is dropped from ``texts`` once converted, to free its memory."""
    frame: dict[str, Any] = {}
    for role in list(texts):
        text = texts.pop(role)
        if text.null_count:
            return None
        converted = _fast_ids(text, forbidden) if role in ("user", "item") else _fast_numbers(text)
        if converted is None:
            return None
        frame[role] = converted
        del text, converted
    return pd.DataFrame(frame, copy=False)


def _fast_ids(text: Any, forbidden: str | None) -> Any:
    """int64 ids where every one is a canonical integer, else the text (as _typed_ids)."""
    if _all(pc.ascii_is_decimal(text)):  # digits only: canonical unless '0' leads ('007')
        leading_zero = pc.and_(pc.starts_with(text, "0"), pc.greater(pc.binary_length(text), 1))
        canonical = not _any(leading_zero)
    else:  # a sign or other characters: the full rule
        canonical = _all(pc.match_substring_regex(text, _INT_TOKEN.pattern))
    if canonical:
        numbers = _cast_to_numpy(text, pa.int64())
        if numbers is not None:
            return numbers
        # beyond int64: text, as _typed_ids does
    if _any(pc.is_in(text, value_set=_NA_WORDS)):
        return None
    if forbidden is not None and _any(pc.match_substring_regex(text, forbidden)):
        return None
    return pd.Series(text.to_pandas()).astype(str).array


def _fast_numbers(text: Any) -> np.ndarray | None:
    """Numbers as pd.to_numeric reads them: int64 when all are integers, else float64; None
    for any other text (dates, signs, exponents, missing-value words), or beyond int64."""
    if pa.types.is_dictionary(text.type):
        check = pa.chunked_array([chunk.dictionary for chunk in text.chunks], pa.string())
    else:
        check = text
    if _all(pc.ascii_is_decimal(check)):
        kind = pa.int64()
    elif _any(pc.match_substring(check, ".")):
        if not _all(pc.match_substring_regex(check, _DECIMAL)):
            return None
        kind = pa.float64()
    elif _all(pc.match_substring_regex(check, _INTEGER)):
        kind = pa.int64()
    else:
        return None
    return _cast_to_numpy(text, kind)


def _cast_to_numpy(text: Any, kind: Any) -> np.ndarray | None:
    """Text (or dictionary-encoded text) cast to numbers, chunk by chunk into one array so that
    no second full-size copy is made; None where a value does not fit the type."""
    out = np.empty(len(text), dtype=kind.to_pandas_dtype())
    start = 0
    try:
        for chunk in text.chunks:
            if pa.types.is_dictionary(chunk.type):
                values = pc.cast(chunk.dictionary, kind).to_numpy()
                out[start : start + len(chunk)] = values[chunk.indices.to_numpy()]
            else:
                out[start : start + len(chunk)] = pc.cast(chunk, kind).to_numpy()
            start += len(chunk)
    except pa.ArrowInvalid:
        return None
    return out


def _all(mask: Any) -> bool:
    return bool(pc.all(mask).as_py())


def _any(mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


# ----------------------------------------------------------------------------------------------
# Preparation


def prepare_frame(
    frame: pd.DataFrame, options: PrepareOptions | None = None, source: str = "data frame",
    synthetic: bool = False,
) -> Interactions:
    """Turn a frame of (user, item[, timestamp][, rating]) rows into prepared interactions."""
    options = options or PrepareOptions()
    if "user" not in frame.columns or "item" not in frame.columns:
        frame = select_columns(frame, options, where=source)
    elif frame["user"].isna().any() or frame["item"].isna().any():
        raise DataError(f"{source}: missing user or item values")
    users = _typed_id_column(frame["user"])
    items = _typed_id_column(frame["item"])
    times = frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None
    if options.min_rating is not None:
        if "rating" not in frame.columns:
            raise DataError(f"{source}: --min-rating given but the data has no rating column")
        high = (frame["rating"] >= options.min_rating).to_numpy()
        users, items = users[high], items[high]
        times = times[high] if times is not None else None
    if len(users) == 0:
        raise DataError(f"{source}: no interactions left after the rating filter")

    user_codes, user_ids = _factorize(users)
    item_codes, item_ids = _factorize(items)
    # Counts once on the whole log, both filters together (the papers' scripts).
    user_ok = np.bincount(user_codes) >= options.min_user_count
    item_ok = np.bincount(item_codes) >= options.min_item_count
    if not (user_ok.all() and item_ok.all()):
        keep = user_ok[user_codes] & item_ok[item_codes]
        if not keep.any():
            raise DataError(
                f"{source}: nothing left after filtering (users >= {options.min_user_count}, "
                f"items >= {options.min_item_count} interactions); lower --min-user-count / "
                "--min-item-count"
            )
        user_codes, user_ids = _drop_unused(user_codes[keep], user_ids)
        item_codes, item_ids = _drop_unused(item_codes[keep], item_ids)
        times = times[keep] if times is not None else None

    counts = np.bincount(user_codes, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    ordered = _ordered_items(user_codes, item_codes, times, len(user_ids), len(item_ids))
    ordered += 1
    return Interactions(
        user_ids=user_ids,
        vocab=ItemVocab(item_ids),
        offsets=offsets,
        items=ordered,
        source=source,
        synthetic=synthetic,
    )


def _ordered_items(
    user_codes: np.ndarray, item_codes: np.ndarray, times: np.ndarray | None,
    num_users: int, num_items: int,
) -> np.ndarray:
    """Item codes (int32) in user order, each user's in time order, file order among equal
    timestamps: a stable sort by time, then a stable sort by user."""
    n = len(user_codes)
    rows = np.arange(n, dtype=np.int64)
    if times is None:
        rank = rows
    else:  # each row's place in time order
        by_time = _stable_argsort(times, rows)
        rank = np.empty_like(rows)
        rank[by_time] = rows
        del by_time
    del rows
    user_bits, row_bits, item_bits = ((k - 1).bit_length() for k in (num_users, n, num_items))
    if user_bits + row_bits + item_bits > 63:
        return item_codes[np.lexsort((rank, user_codes))]
    # One sort of (user, rank, item) packed into an int64, most significant first: ranks never
    # tie, so the order is the stable one, and each row's item comes out in the low bits.
    key = rank  # reused in place: the ranks become the middle bits of the key
    key <<= item_bits
    key |= item_codes
    users = user_codes.astype(np.int64)
    users <<= row_bits + item_bits
    key |= users
    del users
    key.sort()
    key &= (1 << item_bits) - 1
    return key.astype(np.int32)


def _factorize(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``0..k-1`` (int32) of the ids, numbered in sorted order of the k distinct ids."""
    if ids.dtype.kind in "iu" and len(ids):
        values = ids.to_numpy()
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < max(len(values), 1 << 20):
            # Small non-negative integers (MovieLens ids): counting, no hashing or sorting.
            present = np.bincount(values, minlength=high + 1) > 0
            code_of = np.cumsum(present, dtype=np.int32)
            code_of -= 1
            return code_of[values], np.flatnonzero(present).astype(np.int64)
    codes, uniques = pd.factorize(ids, sort=True)
    return codes.astype(np.int32), np.asarray(uniques)


def _drop_unused(codes: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes after rows were dropped, keeping only the ids still used (in order)."""
    used = np.bincount(codes, minlength=len(ids)) > 0
    code_of = np.cumsum(used, dtype=np.int32)
    code_of -= 1
    return code_of[codes], ids[used]


def _stable_argsort(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, several times faster for integer keys; ``rows`` is
    ``np.arange(len(keys))``.

    Each key is packed with its row number into one int64 (key in the high bits, row in the
    low ones), so that keys never tie and a plain sort of values, which numpy vectorises,
    yields the stable order; the low bits of the sorted values are then that order.
    """
    n = len(keys)
    if keys.dtype.kind in "iu" and n > 1:
        low, high = int(keys.min()), int(keys.max())
        row_bits = (n - 1).bit_length()
        if high < 1 << 63 and (high - low) < 1 << (63 - row_bits):
            packed = keys.astype(np.int64)
            packed -= low
            packed <<= row_bits
            packed |= rows
            packed.sort()
            packed &= (1 << row_bits) - 1
            return packed
    return np.argsort(keys, kind="stable")


def cache_dir() -> Path:
    """Where prepared data and downloads are kept: ``$BERT4REC_CACHE`` or ``~/.cache/bert4rec``."""
    root = os.environ.get("BERT4REC_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "bert4rec"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_interactions(
    data: str | Path | pd.DataFrame, options: PrepareOptions | None = None, use_cache: bool = True
) -> Interactions:
    """Read and prepare a log (a path or a frame). Prepared files are cached by content hash."""
    options = options or PrepareOptions()
    if isinstance(data, pd.DataFrame):
        # Columns by name as for a file, so --time-col and names like 'ts' are honoured.
        return prepare_frame(select_columns(data, options), options)
    path = Path(data)
    if not path.is_file():
        read_log(path, options)  # raises the specific error
    key = hashlib.sha256(
        json.dumps([file_digest(path), options.to_dict(), PREPARED_FORMAT]).encode()
    ).hexdigest()[:32]
    cached = cache_dir() / "prepared" / f"{key}.npz"
    if use_cache and cached.exists():
        try:
            return _load_prepared(cached, source=str(path))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry (truncated, emptied) is rebuilt below
    frame = read_log(path, options)
    interactions = prepare_frame(frame, options, source=str(path), synthetic=_is_synthetic(path))
    if use_cache:
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            _save_prepared(interactions, cached)
    return interactions


def _id_arrays(name: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Ids as arrays to save: integers as they are, text as its UTF-8 bytes end to end and
    where each id ends (a fixed-width string array is as wide as the longest id, every row)."""
    if ids.dtype.kind in "iu":
        return {name: ids.astype(np.int64)}
    encoded = [str(v).encode() for v in ids.tolist()]
    return {
        f"{name}_text": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        f"{name}_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64),
    }


def _saved_ids(f: Any, name: str) -> np.ndarray:
    if name in f.files:
        return np.asarray(f[name])
    text, ends = f[f"{name}_text"].tobytes(), f[f"{name}_ends"].tolist()
    starts = [0, *ends[:-1]]
    return np.array([text[a:b].decode() for a, b in zip(starts, ends, strict=True)], dtype=object)


def _save_prepared(data: Interactions, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        arrays: dict[str, Any] = {
            "offsets": data.offsets, "items": data.items, "synthetic": np.array(data.synthetic),
            **_id_arrays("user_ids", data.user_ids), **_id_arrays("item_ids", data.vocab.item_ids),
        }
        np.savez(tmp, **arrays)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_prepared(path: Path, source: str) -> Interactions:
    with np.load(path, allow_pickle=False) as f:
        return Interactions(
            user_ids=_saved_ids(f, "user_ids"), vocab=ItemVocab(_saved_ids(f, "item_ids")),
            offsets=f["offsets"], items=f["items"], source=source,
            synthetic=bool(f["synthetic"]),
        )
