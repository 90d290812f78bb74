"""Leave-one-out split (paper section 4.1).

For a user with items ``s_1 .. s_n`` (n >= 3): ``s_n`` is the test target, ``s_{n-1}`` the
validation target and ``s_1 .. s_{n-2}`` the training sequence. Validation sees ``s_1 .. s_{n-2}``;
test sees ``s_1 .. s_{n-1}`` (the validation item included). Users with fewer than three items
train on everything and are not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bert4rec.data import Interactions
from bert4rec.errors import DataError

Split = Literal["valid", "test"]
SPLITS: tuple[Split, ...] = ("valid", "test")
MIN_EVAL_LENGTH = 3


@dataclass(frozen=True)
class TrainSequences:
    """Training part of every user's sequence, CSR layout like :class:`Interactions`."""

    offsets: np.ndarray  # (num_users + 1,) int64
    items: np.ndarray  # (num_train_interactions,) int32

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class EvalCases:
    """One evaluation case per user: the history a model may see and the item to find."""

    users: np.ndarray  # (n,) internal user indices
    targets: np.ndarray  # (n,) internal item ids
    starts: np.ndarray  # (n,) history start in Interactions.items
    ends: np.ndarray  # (n,) history end (exclusive) = position of the target

    def __len__(self) -> int:
        return len(self.users)

    def histories(self, items: np.ndarray, rows: slice | np.ndarray) -> list[np.ndarray]:
        starts, ends = self.starts[rows], self.ends[rows]
        return [items[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def holdout_count(lengths: np.ndarray) -> np.ndarray:
    """Items held out per user: two for users long enough to evaluate, else none."""
    return np.where(lengths >= MIN_EVAL_LENGTH, 2, 0)


def train_sequences(data: Interactions) -> TrainSequences:
    """What a model may train on: ``s_1 .. s_{n-2}`` of every evaluated user, all of the others.
    The validation item reaches a model only as history at test time, never as a target."""
    lengths = data.lengths
    keep = lengths - holdout_count(lengths)
    offsets = np.zeros(data.num_users + 1, dtype=np.int64)
    np.cumsum(keep, out=offsets[1:])
    # Boolean mask over the flat array: position p of user u is kept if p - start < keep[u].
    position = np.arange(data.num_interactions) - np.repeat(data.offsets[:-1], lengths)
    mask = position < np.repeat(keep, lengths)
    return TrainSequences(offsets=offsets, items=data.items[mask])


def eval_cases(data: Interactions, split: Split) -> EvalCases:
    """The validation or test case of every user with at least three items."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose valid or test")
    lengths = data.lengths
    users = np.flatnonzero(lengths >= MIN_EVAL_LENGTH)
    back = 1 if split == "test" else 2
    target_pos = data.offsets[users + 1] - back
    return EvalCases(
        users=users,
        targets=data.items[target_pos].astype(np.int64),
        starts=data.offsets[users],
        ends=target_pos,
    )
