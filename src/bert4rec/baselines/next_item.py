"""Next-item examples shared by the sequential baselines (SASRec, GRU4Rec).

A training example is a window of consecutive items cut from one user's training sequence
(:func:`bert4rec.split.train_sequences`, so never a validation or test target): the model reads
``window[:-1]`` and predicts ``window[1:]``, the next item at every position. Windows and
histories are left-padded like every model input in this package, so a sequence's most recent
item always sits in the last slot, whatever else is in the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from bert4rec.masking import gather_windows


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


