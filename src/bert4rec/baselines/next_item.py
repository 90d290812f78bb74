"""Next-item examples shared by the sequential baselines (SASRec, GRU4Rec).

A training example is a window of consecutive items cut from one user's training sequence
(:func:`bert4rec.split.train_sequences`, so never a validation or test target): the model reads
``window[:-1]`` and predicts ``window[1:]``, the next item at every position. Windows and
histories are left-padded like every model input in this package, so a sequence's most recent
item always sits in the last slot, whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bert4rec.baselines.common import BaselineModel
from bert4rec.baselines.history import left_pad
from bert4rec.masking import gather_windows


class NextItemModel(BaselineModel):
    """A sequential baseline that reads a left-padded history and predicts the next item from
    its last slot. A subclass gives ``encode`` and ``logits``; its settings have ``max_len``."""

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, d) of left-padded ``tokens`` (B, L)."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., num_items + 1) of every item for hidden states (..., d)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores (B, num_items + 1) of the item after each history (its last ``max_len``
        items), on the model's device; column 0 (padding) is -inf."""
        was_training = self.training
        self.eval()
        try:
            max_len: int = self.settings.max_len  # type: ignore[attr-defined]
            tokens = left_pad(histories, max_len).to(self.device)
            scores = self.logits(self.encode(tokens)[:, -1]).float()  # (B, n + 1)
        finally:
            self.train(was_training)
        scores[:, 0] = -torch.inf
        return scores


def next_item_windows(
    lengths: np.ndarray, max_len: int, every: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user, start, end)`` of windows of at most ``max_len + 1`` items (``max_len`` inputs,
    each with its next item), positions within each user's sequence.

    A user's most recent window ends at its last item. ``every=False`` keeps only that one.
    ``every=True`` cuts the whole sequence from the end into windows that overlap by exactly one
    item, so every ``item -> next item`` pair is a target exactly once. Sequences of fewer than
    two items give no window.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    pairs = np.maximum(lengths - 1, 0)  # next-item targets of each user
    count = -(-pairs // max_len) if every else np.minimum(pairs, 1)  # windows per user (ceil)
    user = np.repeat(np.arange(len(lengths)), count)
    # k-th window counted back from the end of its user's sequence: 0 is the most recent.
    k = np.arange(len(user)) - np.repeat(np.cumsum(count) - count, count)
    end = lengths[user] - k * max_len
    start = np.maximum(end - max_len - 1, 0)
    return user, start, end


def next_item_batch(
    flat: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of the windows ``flat[start:end]``, both (B, T) and left-padded:
    ``targets[:, t]`` is the item after ``inputs[:, t]``, or 0 where there is nothing to
    predict. T is one less than the longest window of the batch."""
    window = gather_windows(flat, starts, ends)  # (B, T + 1)
    inputs, targets = window[:, :-1], window[:, 1:]
    # The slot just before a window's first item is padding: it has no input to predict from.
    return inputs, torch.where(inputs > 0, targets, 0)


