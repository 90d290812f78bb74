"""The Cloze task's windows and masks, corner cases included."""

from __future__ import annotations

import numpy as np
import torch

from bert4rec.masking import cloze_mask, gather_windows, window_bounds

MASK = 99


def test_windows_last_only() -> None:
    users, starts, ends = window_bounds(np.array([3, 10, 0]), max_len=4, step=None)
    assert users.tolist() == [0, 1]
    assert starts.tolist() == [0, 6]
    assert ends.tolist() == [3, 10]


def test_sliding_windows_as_the_paper_cuts_them() -> None:
    # n = 10, N = 4, step 2: starts 6, 4, 2 (> 0), then 0.
    users, starts, ends = window_bounds(np.array([10, 3]), max_len=4, step=2)
    assert users.tolist() == [0, 0, 0, 0, 1]
    assert starts.tolist() == [6, 4, 2, 0, 0]
    assert ends.tolist() == [10, 8, 6, 4, 3]


def test_gather_windows_left_pads() -> None:
    flat = np.array([1, 2, 3, 4, 5, 6])
    tokens = gather_windows(flat, np.array([0, 3]), np.array([2, 6]))
    assert tokens.tolist() == [[0, 1, 2], [4, 5, 6]]


def test_mask_counts_follow_the_paper() -> None:
    tokens = torch.tensor([[0] * 5 + list(range(1, 6)), list(range(1, 11)), [0] * 9 + [7]])
    gen = torch.Generator().manual_seed(0)
    inputs, labels = cloze_mask(tokens, MASK, mask_prob=0.2, max_predictions=40, generator=gen)
    # round(5 * 0.2) = 1, round(10 * 0.2) = 2, and at least one for a single item.
    assert (labels > 0).sum(dim=1).tolist() == [1, 2, 1]
    assert ((inputs == MASK) == (labels > 0)).all()
    assert (labels[labels > 0] == tokens[labels > 0]).all()
    assert (inputs[labels == 0] == tokens[labels == 0]).all()


def test_mask_cap_and_never_padding() -> None:
    tokens = torch.cat([torch.zeros(4, 10, dtype=torch.long),
                        torch.arange(1, 41).repeat(4, 1)], dim=1)
    gen = torch.Generator().manual_seed(1)
    inputs, labels = cloze_mask(tokens, MASK, mask_prob=0.9, max_predictions=5, generator=gen)
    assert (labels > 0).sum(dim=1).tolist() == [5, 5, 5, 5]
    assert (labels[:, :10] == 0).all() and (inputs[:, :10] == 0).all()


def test_last_item_only_rows() -> None:
    tokens = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    inputs, labels = cloze_mask(tokens, MASK, 0.5, 10, last_only=torch.tensor([True, False]),
                                generator=torch.Generator().manual_seed(0))
    assert labels[0].tolist() == [0, 0, 0, 3]
    assert inputs[0].tolist() == [0, 1, 2, MASK]
    assert (labels[1] > 0).sum() == 2


def test_fresh_masks_each_call_and_uniform_positions() -> None:
    tokens = torch.arange(1, 11).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    _, first = cloze_mask(tokens, MASK, 0.2, 40, generator=gen)
    _, second = cloze_mask(tokens, MASK, 0.2, 40, generator=gen)
    assert not torch.equal(first, second)
    share = (first > 0).float().mean(dim=0)  # each position masked with probability 0.2
    assert torch.allclose(share, torch.full((10,), 0.2), atol=0.04)
