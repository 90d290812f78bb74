"""Batch scoring: top-k for every user of a log (or a list of them) into Parquet or CSV.

Users are scored ``chunk`` at a time and each chunk is appended to the output as it is done,
so memory stays flat however many users there are. Within a chunk, users are scored in order
of history length, so a batch pads its histories to similar lengths; rows are written back in
the users' order.

``workers`` chunks are scored at once on threads of their own (PyTorch releases the GIL while it
computes). With one torch thread each, that keeps every core busy without the lock-step of
intra-op threads, which stalls whenever another process holds one of the cores.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions
from bert4rec.errors import DataError
from bert4rec.recommender import Recommender, recommend
from bert4rec.runs import RunInfo, atomic_write

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
T = TypeVar("T")
R = TypeVar("R")


def read_users(path: Path) -> list[str]:
    """User ids, one a line (blank lines and surrounding spaces ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the user list {path}: {exc}") from exc
    users = [line.strip() for line in lines if line.strip()]
    if not users:
        raise DataError(f"{path} lists no user; write one user id a line")
    return users


def select_users(data: Interactions, users: Sequence[Any] | None) -> np.ndarray:
    """Internal user indices of ``users`` (original ids, text matches integers), or all."""
    if users is None:
        return np.arange(data.num_users)
    index = {str(k): v for k, v in data.user_index().items()}
    missing = [u for u in users if str(u) not in index]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} of the {len(users)} users are not in "
                        f"{data.source or 'the data'}: {shown}")
    return np.asarray([index[str(u)] for u in users], dtype=np.int64)


def score_users(
    model: Recommender,
    info: RunInfo,
    data: Interactions,
    output: Path,
    users: Sequence[Any] | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    chunk: int = 1024,
    batch_size: int = 256,
    workers: int = 1,
    bf16: bool = False,
    to_run: np.ndarray | None = None,
) -> int:
    """Write the top-k of each user's whole history to ``output`` (.parquet or .csv): columns
    ``user``, ``rank`` (1 = best), ``item`` and ``score``, original ids. Returns the rows
    written; a user with fewer than k eligible items gets fewer rows. ``bf16`` scores under
    bfloat16 autocast (faster on CPUs with AMX or AVX-512 BF16; near-ties may swap).

    ``data`` may be another log than the run's (newer events, new users): histories are read
    through the run's catalogue, and items it does not know are left out of them. ``to_run``
    is ``info.vocab.translation(data.vocab)`` where the caller has it already (see
    :func:`unknown_items`)."""
    kind = FORMATS.get(output.suffix.lower())
    if kind is None:
        raise DataError(f"cannot tell the format of {output}: name it .parquet or .csv")
    if k < 1:
        raise DataError("-k must be at least 1")
    selected = select_users(data, users)
    if to_run is None:  # data's internal item ids -> the run's
        to_run = info.vocab.translation(data.vocab)
    written = 0

    def write(tmp: str) -> None:
        nonlocal written
        writer: Any = None

        def score(users: np.ndarray) -> pa.Table:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return _score_chunk(model, info, data, to_run, users, k, exclude_seen,
                                    batch_size)

        chunks = (selected[start : start + chunk] for start in range(0, len(selected), chunk))
        try:
            for table in _ordered(score, chunks, workers):
                if writer is None:
                    writer = (pq.ParquetWriter(tmp, table.schema) if kind == "parquet"
                              else pa_csv.CSVWriter(tmp, table.schema))
                writer.write_table(table)
                written += table.num_rows
            if writer is None:  # no user: an empty file with the columns
                table = _table([], [], [], [], data, info)
                writer = (pq.ParquetWriter(tmp, table.schema) if kind == "parquet"
                          else pa_csv.CSVWriter(tmp, table.schema))
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()

    atomic_write(output, write)
    return written


def _ordered(fn: Callable[[T], R], items: Iterator[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, never more than ``workers + 1``
    results held at once (so memory stays flat)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="bert4rec-batch") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def empty_histories(to_run: np.ndarray, data: Interactions,
                    users: Sequence[Any] | None = None) -> int:
    """How many of the users scored (``users``, or all) have no item the run knows: batch
    scoring gives them the run's most popular items, as the service does."""
    owner = np.repeat(np.arange(data.num_users), data.lengths)  # the user of each event
    known = np.bincount(owner, weights=to_run[data.items] > 0, minlength=data.num_users)
    return int((known[select_users(data, users)] == 0).sum())


def unknown_items(to_run: np.ndarray, data: Interactions) -> tuple[int, int]:
    """How many of ``data``'s items the run does not know (0 in ``to_run``, the translation of
    ``data``'s item ids to the run's), and how many events they make up: what batch scoring
    leaves out of the histories."""
    missing = to_run == 0
    missing[0] = False
    return int(missing.sum()), int(missing[data.items].sum())


def _score_chunk(model: Recommender, info: RunInfo, data: Interactions, to_run: np.ndarray,
                 users: np.ndarray, k: int, exclude_seen: bool, batch_size: int) -> pa.Table:
    order = np.argsort(data.lengths[users], kind="stable")  # similar lengths share a batch
    histories = [to_run[data.sequence(int(users[i]))] for i in order]
    histories = [h[h > 0] for h in histories]  # unknown to the run: left out
    ids, scores = recommend(model, histories, k=k, exclude_seen=exclude_seen,
                            batch_size=batch_size)
    empty = np.flatnonzero([len(h) == 0 for h in histories])
    popular = PopularityRecommender.of_run(info)
    if len(empty) and popular is not None:  # nothing known: the most popular items
        ids[empty], scores[empty] = recommend(popular, [histories[i] for i in empty], k=k)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    ids, scores = ids[back], scores[back]  # (U, k), the users' order again
    valid = ids > 0
    rows = valid.sum(axis=1)
    user_col = np.repeat(data.user_ids[users], rows)
    rank_col = np.tile(np.arange(1, k + 1), len(users))[valid.ravel()]
    item_col = info.vocab.item_ids[ids[valid] - 1]
    return _table(user_col, rank_col, item_col, scores[valid], data, info)


def _table(users: Any, ranks: Any, items: Any, scores: Any, data: Interactions,
           info: RunInfo) -> pa.Table:
    def ids(values: Any, like: np.ndarray) -> pa.Array:
        kind = pa.int64() if like.dtype.kind in "iu" else pa.string()
        return pa.array(np.asarray(values, dtype=np.int64 if kind == pa.int64() else str)
                        if len(values) else [], type=kind)

    return pa.table({
        "user": ids(users, data.user_ids),
        "rank": pa.array(np.asarray(ranks, dtype=np.int32), type=pa.int32()),
        "item": ids(items, info.vocab.item_ids),
        "score": pa.array(np.asarray(scores, dtype=np.float32), type=pa.float32()),
    })
