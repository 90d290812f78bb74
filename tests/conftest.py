"""Shared tiny data for the harness tests. Every test makes its own files under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from bert4rec.data import Interactions, PrepareOptions, prepare_frame
from bert4rec.synthetic import generate

# Four users over items a..f (internal ids 1..6, sorted). carol has two items, so she is never
# evaluated; dave repeats b, so item ids alone cannot tell training from held-out positions.
TINY_ROWS = [
    ("alice", "a", 1), ("alice", "b", 2), ("alice", "c", 3), ("alice", "d", 4), ("alice", "e", 5),
    ("bob", "c", 1), ("bob", "a", 2), ("bob", "e", 3), ("bob", "b", 4),
    ("carol", "e", 1), ("carol", "d", 2),
    ("dave", "b", 1), ("dave", "c", 2), ("dave", "b", 3), ("dave", "f", 4),
]
KEEP_ALL = PrepareOptions(min_user_count=0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared-data cache of each test in its own folder, never the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BERT4REC_CACHE", str(cache))
    return cache


@pytest.fixture
def watch_checkpoints(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[int]], list[int]]:
    """``watch_checkpoints(stops)``: from now on, the epoch of every checkpoint a trainer
    (BERT4Rec's, or any baseline's) writes goes into the list returned; just after the one of
    epoch ``stops[0]``, a Ctrl-C (``stops[0]`` is then taken out)."""
    from bert4rec import checkpoints

    original = checkpoints.write_checkpoint

    def watch(stops: list[int]) -> list[int]:
        written: list[int] = []

        def write(run_dir: Path, tensors: Any, meta: dict[str, Any], step: int) -> None:
            original(run_dir, tensors, meta, step)
            written.append(meta["result"]["epochs"] if "result" in meta
                           else meta["state"]["epoch"])
            if stops and written[-1] == stops[0]:
                stops.pop(0)
                raise KeyboardInterrupt

        monkeypatch.setattr(checkpoints, "write_checkpoint", write)
        return written

    return watch


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write_file(name, text)`` writes a small text file under ``tmp_path`` and returns it."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def tiny_frame() -> pd.DataFrame:
    return pd.DataFrame(TINY_ROWS, columns=["user", "item", "timestamp"])


@pytest.fixture
def tiny(tiny_frame: pd.DataFrame) -> Interactions:
    return prepare_frame(tiny_frame, KEEP_ALL)


@pytest.fixture(scope="session")
def medium() -> Interactions:
    """60 users over 40 items with 5-15 items each: room enough to sample negatives."""
    frame = generate(num_users=60, num_items=40, min_length=5, max_length=15, seed=1)
    return prepare_frame(frame, KEEP_ALL)


class OracleRecommender:
    """Scores the item that follows each history in the data highest (2), everything else 0.

    A history is looked up as a prefix of some user's sequence; in the tiny data every user
    starts with a different item, so a non-empty prefix tells the user.
    """

    def __init__(self, data: Interactions) -> None:
        self._num_items = data.num_items
        self.next_item: dict[tuple[int, ...], int] = {}
        for seq in data.sequences():
            for t in range(1, len(seq)):
                key = tuple(seq[:t].tolist())
                assert self.next_item.setdefault(key, int(seq[t])) == int(seq[t]), key
        self.seen: list[list[int]] = []

    @property
    def num_items(self) -> int:
        return self._num_items

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        scores = torch.zeros(len(histories), self._num_items + 1)
        for row, history in enumerate(histories):
            self.seen.append([int(v) for v in history])
            scores[row, self.next_item[tuple(int(v) for v in history)]] = 2.0
        return scores


class ConstantRecommender:
    """Scores every item alike: every metric must come out at chance level."""

    def __init__(self, num_items: int) -> None:
        self._num_items = num_items

    @property
    def num_items(self) -> int:
        return self._num_items

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.ones(len(histories), self._num_items + 1)


@pytest.fixture
def oracle() -> type[OracleRecommender]:
    return OracleRecommender


@pytest.fixture
def constant() -> type[ConstantRecommender]:
    return ConstantRecommender
