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
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bert4rec.errors import DataError

FORMATS = ("auto", "pairs", "sequences", "movielens-dat", "csv", "parquet", "recbole")
SYNTHETIC_MARKER = "# synthetic"
PREPARED_FORMAT = 1  # bump when the prepared layout or the preparation rules change

_USER_COLUMNS = ("user", "user_id", "userid", "uid", "customer_id", "visitor_id", "session_id")
_ITEM_COLUMNS = ("item", "item_id", "itemid", "iid", "movieid", "movie_id", "product_id", "asin")
_TIME_COLUMNS = ("timestamp", "time", "ts", "datetime", "date", "event_time", "unix_time")
_RATING_COLUMNS = ("rating", "score", "value")
_INT_TOKEN = re.compile(r"^-?(0|[1-9][0-9]*)$")


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
        numeric = self.item_ids.dtype.kind in "iu"
        for raw in items:
            key = raw
            if numeric and isinstance(raw, str) and _INT_TOKEN.match(raw.strip()):
                key = int(raw)
            elif not numeric and not isinstance(raw, str):
                key = str(raw)
            found = index.get(key)
            if found is None:
                unknown.append(raw)
            else:
                known.append(found)
        return np.asarray(known, dtype=np.int64), unknown

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
    if suffix in (".parquet", ".pq"):
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


def _head_lines(path: Path, n: int) -> list[str]:
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                lines.append(stripped)
                if len(lines) >= n:
                    break
    return lines


def _looks_like_header(line: str) -> bool:
    tokens = re.split(r"[\t;]", line)
    return len(tokens) >= 2 and any(t.strip().lower() in _USER_COLUMNS for t in tokens)


def _is_synthetic(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().startswith(SYNTHETIC_MARKER)


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
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt == "pairs":
        frame = _read_pairs(path)
    elif fmt == "sequences":
        frame = _read_sequences(path)
    elif fmt == "movielens-dat":
        frame = _read_movielens_dat(path)
    elif fmt == "recbole":
        frame = _read_delimited(path, sep="\t", options=options, strip_types=True)
    elif fmt == "csv":
        frame = _read_delimited(path, sep=_sniff_separator(path), options=options)
    elif fmt == "parquet":
        try:
            raw = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        frame = select_columns(raw, options, where=str(path))
    else:  # pragma: no cover - PrepareOptions validates the name
        raise DataError(f"unknown format {fmt!r}")
    if frame.empty:
        raise DataError(f"{path}: no interactions in the file")
    return frame


def _first_bad_line(path: Path, check: Any) -> tuple[int, str] | None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not check(stripped):
                return number, stripped[:80]
    return None


def _read_pairs(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            path, sep=r"\s+", header=None, names=["user", "item"], dtype=str, comment="#",
            engine="c",
        )
    except (pd.errors.ParserError, ValueError):
        frame = None
    if frame is None or frame["item"].isna().any():
        bad = _first_bad_line(path, lambda line: len(line.split()) == 2)
        where = f" line {bad[0]}: {bad[1]!r}" if bad else ""
        raise DataError(f"{path}:{where} expected two fields 'user item' per line")
    return _typed_ids(frame)


def _read_sequences(path: Path) -> pd.DataFrame:
    users: list[str] = []
    items: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) < 2:
                raise DataError(
                    f"{path}: line {number}: {line.strip()[:80]!r} has a user but no items; "
                    "expected 'user item1 item2 ...'"
                )
            users.extend([tokens[0]] * (len(tokens) - 1))
            items.extend(tokens[1:])
    return _typed_ids(pd.DataFrame({"user": users, "item": items}))


def _read_movielens_dat(path: Path) -> pd.DataFrame:
    # '::' is a multi-character separator, which only pandas' slow Python engine accepts;
    # swapping it for a tab keeps the fast C parser on the 25M-line files.
    text = path.read_bytes().replace(b"::", b"\t")
    try:
        frame = pd.read_csv(
            io.BytesIO(text), sep="\t", header=None, dtype=str, engine="c",
            names=["user", "item", "rating", "timestamp"],
        )
    except (pd.errors.ParserError, ValueError):
        frame = None
    if frame is None or frame["timestamp"].isna().any():
        bad = _first_bad_line(path, lambda line: len(line.split("::")) == 4)
        where = f" line {bad[0]}: {bad[1]!r}" if bad else ""
        raise DataError(f"{path}:{where} expected 'user::item::rating::timestamp'")
    frame["rating"] = _numeric(frame["rating"], path, "rating", header_lines=0)
    frame["timestamp"] = _numeric(frame["timestamp"], path, "timestamp", header_lines=0)
    return _typed_ids(frame)


def _sniff_separator(path: Path) -> str:
    first = _head_lines(path, 1)[0]
    for sep in (",", "\t", ";"):
        if sep in first:
            return sep
    return ","


def _read_delimited(
    path: Path, sep: str, options: PrepareOptions, strip_types: bool = False
) -> pd.DataFrame:
    # Only comment lines above the header are skipped (the synthetic marker): pandas' comment=
    # would also cut every field at a '#' ('C#') and shift the line numbers of errors.
    skipped = _leading_comment_lines(path)
    try:
        raw = pd.read_csv(path, sep=sep, dtype=str, skiprows=skipped, engine="c")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse as delimited text ({exc})") from exc
    if strip_types:  # RecBole headers are 'name:type'
        raw.columns = [str(c).split(":")[0] for c in raw.columns]
    return select_columns(raw, options, where=str(path), header_lines=1 + skipped)


def _leading_comment_lines(path: Path) -> int:
    count = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                break
            count += 1
    return count


def select_columns(
    raw: pd.DataFrame, options: PrepareOptions, where: str = "data frame", header_lines: int = 0
) -> pd.DataFrame:
    """Pick the user, item and optional timestamp/rating columns of a frame by name."""
    lowered = {str(c).lower(): c for c in raw.columns}

    def pick(named: str | None, candidates: tuple[str, ...], role: str, required: bool) -> Any:
        if named is not None:
            if named not in raw.columns:
                raise DataError(
                    f"{where}: no column {named!r} for {role}; columns are {list(raw.columns)}"
                )
            return named
        for name in candidates:
            if name in lowered:
                return lowered[name]
        if required:
            raise DataError(
                f"{where}: cannot find the {role} column among {list(raw.columns)}; "
                f"name it with --{role}-col"
            )
        return None

    user = pick(options.user_col, _USER_COLUMNS, "user", True)
    item = pick(options.item_col, _ITEM_COLUMNS, "item", True)
    time = pick(options.time_col, _TIME_COLUMNS, "time", False)
    rating = pick(None, _RATING_COLUMNS, "rating", False)
    frame = pd.DataFrame({"user": raw[user].to_numpy(), "item": raw[item].to_numpy()})
    missing = frame["user"].isna() | frame["item"].isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError(f"{where}: line {row + 1 + header_lines}: missing user or item")
    if time is not None:
        frame["timestamp"] = _timestamps(raw[time], where, header_lines)
    if rating is not None:
        frame["rating"] = _numeric(raw[rating], where, "rating", header_lines)
    return _typed_ids(frame)


def _numeric(column: pd.Series, where: Any, name: str, header_lines: int) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any() or values.isna().any():
        row = int(np.flatnonzero((bad | values.isna()).to_numpy())[0])
        raise DataError(
            f"{where}: line {row + 1 + header_lines}: {name} {column.iloc[row]!r} is not a number"
        )
    return values


def _timestamps(column: pd.Series, where: str, header_lines: int) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        values = column
    else:
        values = pd.to_numeric(column, errors="coerce")
        if values.isna().any():  # not numbers: try dates
            with warnings.catch_warnings():  # unparseable values are reported below
                warnings.simplefilter("ignore", UserWarning)
                dates = pd.to_datetime(column, errors="coerce", utc=True)
            # Keep the reading that parses more rows, so the error names the odd one out
            # (a typo in a number column is not reported as its first, valid row).
            if dates.notna().sum() > values.notna().sum():
                values = dates
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(
            f"{where}: line {row + 1 + header_lines}: timestamp {column.iloc[row]!r} is neither "
            "a number nor a date"
        )
    if pd.api.types.is_datetime64_any_dtype(values):
        values = values.astype("int64")
    return values


def _typed_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids read as text become integers when every one is a canonical integer ('7', not '007'),
    so that they round-trip exactly either way."""
    for col in ("user", "item"):
        column = frame[col]
        if column.dtype.kind in "iu":
            frame[col] = column.astype(np.int64)
            continue
        as_str = column.astype(str)
        if as_str.str.fullmatch(_INT_TOKEN.pattern).all():
            try:
                frame[col] = as_str.astype(np.int64)
                continue
            except OverflowError:
                pass
        frame[col] = as_str
    return frame


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
    else:
        frame = _typed_ids(frame.copy())
    if options.min_rating is not None:
        if "rating" not in frame.columns:
            raise DataError(f"{source}: --min-rating given but the data has no rating column")
        frame = frame[frame["rating"] >= options.min_rating]
    if frame.empty:
        raise DataError(f"{source}: no interactions left after the rating filter")

    # Counts once on the whole log, both filters together (the papers' scripts).
    keep = np.ones(len(frame), dtype=bool)
    if options.min_user_count > 1:
        keep &= frame["user"].map(frame["user"].value_counts()).to_numpy() >= options.min_user_count
    if options.min_item_count > 1:
        keep &= frame["item"].map(frame["item"].value_counts()).to_numpy() >= options.min_item_count
    frame = frame[keep]
    if frame.empty:
        raise DataError(
            f"{source}: nothing left after filtering (users >= {options.min_user_count}, "
            f"items >= {options.min_item_count} interactions); lower --min-user-count / "
            "--min-item-count"
        )

    user_codes, user_ids = pd.factorize(frame["user"], sort=True)
    item_codes, item_ids = pd.factorize(frame["item"], sort=True)
    # Two stable sorts: by time, then by user, keep file order among equal timestamps.
    order = np.arange(len(frame))
    if "timestamp" in frame.columns:
        order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    order = order[np.argsort(user_codes[order], kind="stable")]
    counts = np.bincount(user_codes, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Interactions(
        user_ids=np.asarray(user_ids),
        vocab=ItemVocab(np.asarray(item_ids)),
        offsets=offsets,
        items=(item_codes[order] + 1).astype(np.int32),
        source=source,
        synthetic=synthetic,
    )


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
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    frame = read_log(path, options)
    interactions = prepare_frame(frame, options, source=str(path), synthetic=_is_synthetic(path))
    if use_cache:
        with contextlib.suppress(OSError):  # a read-only cache only costs speed
            _save_prepared(interactions, cached)
    return interactions


def _id_array(ids: np.ndarray) -> np.ndarray:
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)


def _save_prepared(data: Interactions, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(
            tmp, offsets=data.offsets, items=data.items, user_ids=_id_array(data.user_ids),
            item_ids=_id_array(data.vocab.item_ids), synthetic=np.array(data.synthetic),
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_prepared(path: Path, source: str) -> Interactions:
    with np.load(path, allow_pickle=False) as f:
        return Interactions(
            user_ids=f["user_ids"], vocab=ItemVocab(f["item_ids"]), offsets=f["offsets"],
            items=f["items"], source=source, synthetic=bool(f["synthetic"]),
        )
