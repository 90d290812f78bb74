"""The Cloze task (paper section 3.6), as pure, vectorised functions.

Training windows are cut from each user's training sequence; each epoch every window gets a
fresh random mask (the released code fixes ten copies once; fresh masks are the usual
improvement). A share of samples masks only the last item, which the paper adds because it
"works like fine-tuning" for next-item prediction.
"""

from __future__ import annotations

import numpy as np
import torch


def window_bounds(
    lengths: np.ndarray, max_len: int, step: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows over each sequence: ``(user, start, end)`` arrays, positions within the sequence.

    ``step=None`` keeps only the most recent window of every user. Otherwise a sequence longer
    than ``max_len`` is cut as in the paper's data script: windows start at ``n - max_len``,
    then every ``step`` items earlier while above 0, plus one window starting at 0.
    """
    users: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    for user, n in enumerate(np.asarray(lengths).tolist()):
        if n == 0:
            continue
        if step is None or n <= max_len:
            begin = np.array([max(0, n - max_len)])
        else:
            begin = np.append(np.arange(n - max_len, 0, -step), 0)
        starts.append(begin)
        users.append(np.full(len(begin), user))
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    start = np.concatenate(starts).astype(np.int64)
    user_of = np.concatenate(users).astype(np.int64)
    end = np.minimum(start + max_len, np.asarray(lengths, dtype=np.int64)[user_of])
    return user_of, start, end


def gather_windows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> torch.Tensor:
    """Left-padded tokens (B, T) of ``flat[start:end]`` per row, T = the longest window."""
    width = int((ends - starts).max()) if len(starts) else 1
    index = ends[:, None] - width + np.arange(width)[None, :]  # (B, T) positions in flat
    valid = index >= starts[:, None]
    tokens = np.where(valid, flat[np.maximum(index, 0)], 0)
    return torch.from_numpy(tokens.astype(np.int64))


def cloze_mask(
    tokens: torch.Tensor,
    mask_id: int,
    mask_prob: float,
    max_predictions: int,
    last_only: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch of left-padded sequences for the Cloze task.

    Each row masks ``min(max_predictions, max(1, round(len * mask_prob)))`` of its items chosen
    uniformly, always replaced by ``[MASK]`` (no 80/10/10, as the paper). Rows where
    ``last_only`` is True mask just their last item. Returns ``(inputs, labels)``: labels hold
    the original item at masked positions and 0 elsewhere, so the loss can skip the rest.
    """
    real = tokens != 0  # (B, T)
    lengths = real.sum(dim=1)
    count = torch.floor(lengths.float() * mask_prob + 0.5).long()
    count = torch.minimum(count.clamp(min=1, max=max_predictions), lengths)
    noise = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    noise = noise.masked_fill(~real, 2.0)  # padding sorts last, never chosen
    rank = noise.argsort(dim=1).argsort(dim=1)  # (B, T): rank of each slot's noise in its row
    chosen = rank < count[:, None]
    if last_only is not None:
        # Left padding puts every row's last item in the final slot.
        last = torch.zeros_like(chosen)
        last[:, -1] = True
        chosen = torch.where(last_only[:, None], last & real, chosen)
    labels = torch.where(chosen, tokens, torch.zeros_like(tokens))
    inputs = torch.where(chosen, torch.full_like(tokens, mask_id), tokens)
    return inputs, labels
