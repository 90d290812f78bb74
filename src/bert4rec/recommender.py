"""The one inference contract shared by evaluation, the CLI, serving and explanations.

A recommender scores every item for a batch of histories (internal item ids, oldest first).
Column ``i`` of the result is item ``i``; column 0 (padding) is ignored. Everything else, top-k,
excluding seen items, restricting to candidates, ranking a held-out item, is built on that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Recommender(Protocol):
    """What every model implements."""

    @property
    def num_items(self) -> int: ...

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores of shape ``(len(histories), num_items + 1)`` on any device; higher is better."""
        ...


def mask_seen(scores: torch.Tensor, histories: Sequence[np.ndarray]) -> torch.Tensor:
    """Set the score of every history item (and padding) to -inf, in place."""
    scores[:, 0] = -torch.inf
    lengths = [len(h) for h in histories]
    if sum(lengths):
        rows = np.repeat(np.arange(len(histories)), lengths)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        device = scores.device
        scores[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = (
            -torch.inf
        )
    return scores


def recommend(
    model: Recommender,
    histories: Sequence[np.ndarray],
    k: int = 10,
    exclude_seen: bool = True,
    candidates: np.ndarray | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k internal item ids and their scores for each history, best first.

    ``candidates`` restricts the ranking to those internal ids. Where fewer than ``k`` items are
    eligible, the rows are padded with id 0 and score -inf.
    """
    ids_out = np.zeros((len(histories), k), dtype=np.int64)
    scores_out = np.full((len(histories), k), -np.inf, dtype=np.float32)
    allowed: torch.Tensor | None = None
    if candidates is not None:
        allowed = torch.zeros(model.num_items + 1, dtype=torch.bool)
        allowed[torch.as_tensor(np.asarray(candidates, dtype=np.int64))] = True
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        with torch.inference_mode():
            scores = model.score(batch).float().clone()
            if exclude_seen:
                mask_seen(scores, batch)
            else:
                scores[:, 0] = -torch.inf
            if allowed is not None:
                scores[:, ~allowed.to(scores.device)] = -torch.inf
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        n = top.indices.shape[1]
        values = top.values.cpu().numpy()
        ids = top.indices.cpu().numpy().copy()
        ids[~np.isfinite(values)] = 0
        ids_out[start : start + len(batch), :n] = ids
        scores_out[start : start + len(batch), :n] = values
    return ids_out, scores_out
