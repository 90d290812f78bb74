"""Pieces the history-based baselines (BPR-MF, NCF, FPMC, Caser) share.

The recommender contract scores a *history*, never a user id, so a user the model has not seen
must still get scores. These baselines therefore replace each paper's learned user vector by a
function of the history: the mean of learned "history item" embeddings, as FISM (Kabbur et al.
2013) and asymmetric SVD (Koren 2008) factor a user through their items.

Training examples are next-item predictions cut from :func:`bert4rec.split.train_sequences`
only: the target is a training position with at least one item before it, and the history is
what precedes it in the same user's training sequence. Validation and test items are never a
target and never part of a history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bert4rec.baselines.common import check_num_items
from bert4rec.data import Interactions
from bert4rec.errors import ConfigError
from bert4rec.masking import gather_windows
from bert4rec.split import TrainSequences, train_sequences


@dataclass(frozen=True)
class NextItemExamples:
    """One example per training position that has an item before it in its sequence.

    ``items[targets[r]]`` is the item to predict in example ``r``; its history is
    ``items[starts[r]:targets[r]]`` and the rest of the sequence ends at ``ends[r]``.
    """

    items: np.ndarray  # (num_train_interactions,) int64: the flat training sequences
    targets: np.ndarray  # (N,) position of each example's target in ``items``
    starts: np.ndarray  # (N,) where the target's sequence starts in ``items``
    ends: np.ndarray  # (N,) where it ends (exclusive)

    def __len__(self) -> int:
        return len(self.targets)

    def history(self, rows: np.ndarray, max_len: int) -> torch.Tensor:
        """Left-padded (B, T) ids of the last ``max_len`` items before each target; T is the
        longest of them, so a batch of short histories stays narrow."""
        starts = np.maximum(self.starts[rows], self.targets[rows] - max_len)
        return gather_windows(self.items, starts, self.targets[rows])

    def next_items(self, rows: np.ndarray, count: int) -> torch.Tensor:
        """(B, count) ids of the target and the items after it, 0 past the sequence end."""
        index = self.targets[rows, None] + np.arange(count)[None, :]  # (B, count)
        valid = index < self.ends[rows, None]
        ids = np.where(valid, self.items[np.minimum(index, len(self.items) - 1)], 0)
        return torch.from_numpy(ids.astype(np.int64))


def next_item_examples(train: TrainSequences) -> NextItemExamples:
    """Every training position but the first of each user's training sequence."""
    lengths = train.lengths
    starts = np.repeat(train.offsets[:-1], lengths)  # (num_train_interactions,)
    ends = np.repeat(train.offsets[1:], lengths)
    positions = np.arange(len(train.items), dtype=np.int64)
    keep = positions > starts
    return NextItemExamples(
        items=train.items.astype(np.int64), targets=positions[keep],
        starts=starts[keep].astype(np.int64), ends=ends[keep].astype(np.int64),
    )


def training_examples(data: Interactions, num_items: int) -> NextItemExamples:
    """The examples of ``data``'s training sequences, for a model of ``num_items`` items."""
    check_num_items(num_items, data)
    examples = next_item_examples(train_sequences(data))
    if not len(examples):
        raise ConfigError("no training examples: every training sequence has fewer than 2 items")
    return examples


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Left-padded (B, T) ids of the last ``max_len`` items of each history at inference;
    T is the longest of them, at least 1, so empty histories become one padding slot."""
    clipped = [np.asarray(h, dtype=np.int64)[len(h) - min(len(h), max_len):] for h in histories]
    width = max([len(h) for h in clipped] + [1])
    tokens = np.zeros((len(clipped), width), dtype=np.int64)
    for row, h in enumerate(clipped):
        tokens[row, width - len(h):] = h
    return torch.from_numpy(tokens)


def history_mean(embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Mean (B, d) of the embeddings of the non-padding ids in ``tokens`` (B, T); the zero
    vector for an empty history, so such a user falls back to the item terms alone."""
    real = (tokens != 0).unsqueeze(-1)  # (B, T, 1)
    total = (embedding(tokens) * real).sum(dim=1)  # (B, d); masked, whatever row 0 holds
    return total / real.sum(dim=1).clamp(min=1)


def uniform_items(generator: torch.Generator, shape: tuple[int, ...], num_items: int
                  ) -> torch.Tensor:
    """Negative item ids drawn uniformly from ``1..num_items`` on the CPU generator. A draw may
    hit a positive; at real catalogue sizes that is rare and only adds a little noise."""
    return torch.randint(1, num_items + 1, shape, generator=generator)


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """BPR-Opt (Rendle et al. 2009) without its prior term: mean ``-ln sigmoid(x_ui - x_uj)``
    over (positive, negative) score pairs of the same shape."""
    return -F.logsigmoid(positive - negative).mean()
