"""The one inference contract shared by evaluation, the CLI, serving and explanations.

A recommender scores every item for a batch of histories (internal item ids, oldest first).
Column ``i`` of the result is item ``i``; column 0 (padding) is ignored. Everything else, top-k,
excluding seen items, restricting to candidates, ranking a held-out item, is built on that.

A model may also score in column blocks (:class:`ChunkedRecommender`); top-k and evaluation then
work block by block, so a batch against a catalogue of millions of items never holds more than
one block of scores. A catalogue that fits in one block is scored exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


# Item ids scored at once by a ChunkedRecommender: 256 histories then hold 64 MiB of scores.
ITEM_CHUNK = 65_536


@runtime_checkable
class ChunkedRecommender(Recommender, Protocol):
    """A recommender that can also score a catalogue in column blocks."""

    def score_chunks(
        self, histories: Sequence[np.ndarray], chunk: int
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, block)`` pairs, block (B, width <= chunk), column j being item
        ``start + j``; concatenated in order they are ``score(histories)``."""
        ...


def score_blocks(
    model: Recommender, histories: Sequence[np.ndarray], chunk: int = ITEM_CHUNK
) -> Iterator[tuple[int, torch.Tensor]]:
    """The scores of ``histories`` as ``(start, block)`` column blocks: in blocks of at most
    ``chunk`` items when the model can (:class:`ChunkedRecommender`), else one block."""
    if isinstance(model, ChunkedRecommender):
        yield from model.score_chunks(histories, chunk)
    else:
        yield 0, model.score(histories)


def mask_seen(
    scores: torch.Tensor, histories: Sequence[np.ndarray], start: int | None = None
) -> torch.Tensor:
    """Set the score of every history item (and padding) to -inf, in place. With ``start``,
    ``scores`` is the block of columns ``start .. start + width - 1`` (see
    :func:`score_blocks`) and only the history items inside it are masked."""
    if not start:
        scores[:, 0] = -torch.inf
    lengths = [len(h) for h in histories]
    if sum(lengths):
        rows = np.repeat(np.arange(len(histories)), lengths)
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        if start is not None:
            inside = (cols >= start) & (cols < start + scores.shape[1])
            rows, cols = rows[inside], cols[inside] - start
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
    item_chunk: int = ITEM_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k internal item ids and their scores for each history, best first.

    ``candidates`` restricts the ranking to those internal ids. Where fewer than ``k`` items are
    eligible, the rows are padded with id 0 and score -inf. A :class:`ChunkedRecommender` is
    scored ``item_chunk`` items at a time, keeping a running top-k, so memory is bounded by
    ``batch_size x item_chunk`` scores whatever the catalogue size.
    """
    ids_out = np.zeros((len(histories), k), dtype=np.int64)
    scores_out = np.full((len(histories), k), -np.inf, dtype=np.float32)
    allowed: torch.Tensor | None = None
    if candidates is not None:
        allowed = torch.zeros(model.num_items + 1, dtype=torch.bool)
        allowed[torch.as_tensor(np.asarray(candidates, dtype=np.int64))] = True
    for start in range(0, len(histories), batch_size):
        batch = histories[start : start + batch_size]
        best: tuple[torch.Tensor, torch.Tensor] | None = None  # (values, ids), each (B, <= k)
        with torch.inference_mode():
            for offset, block in score_blocks(model, batch, item_chunk):
                scores = block.float().clone()
                width = scores.shape[1]
                if exclude_seen:  # a block, or (start None) the whole catalogue
                    whole = offset == 0 and width == model.num_items + 1
                    mask_seen(scores, batch, None if whole else offset)
                elif offset == 0:
                    scores[:, 0] = -torch.inf
                if allowed is not None:
                    scores[:, ~allowed[offset : offset + width].to(scores.device)] = -torch.inf
                values, ids = _block_top_k(scores, k, offset)
                if best is not None:  # merge with the best of the blocks before
                    values, ids = torch.cat([best[0], values], 1), torch.cat([best[1], ids], 1)
                    order = torch.argsort(ids, dim=1)  # lower ids first, for the ties
                    values, ids = _best_first(values.gather(1, order), ids.gather(1, order))
                    values, ids = values[:, :k], ids[:, :k]
                best = values, ids
        assert best is not None
        n = best[1].shape[1]
        values_np = best[0].cpu().numpy()
        ids_np = best[1].cpu().numpy().copy()
        ids_np[~np.isfinite(values_np)] = 0
        ids_out[start : start + len(batch), :n] = ids_np
        scores_out[start : start + len(batch), :n] = values_np
    return ids_out, scores_out


def _block_top_k(scores: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best scores of each row of a block (column j: item ``offset + j``) and their
    ids, best first. Ties go to the lower id, so the top-k is the same whatever the blocks
    (``torch.topk`` alone picks among ties as it goes); a NaN score counts as -inf."""
    k = min(k, scores.shape[1])
    top = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    values, columns = top.values[:, :k], top.indices[:, :k]
    # Rows to choose again, exactly: a NaN among the best (topk puts NaN first), or a finite
    # tie across the k-th place (-inf ones are no item and never listed).
    redo = torch.isnan(values).any(dim=1)
    if top.values.shape[1] > k:
        kth = top.values[:, k - 1]
        redo |= (top.values[:, k] == kth) & torch.isfinite(kth)
    rows = torch.nonzero(redo).flatten()
    if len(rows):
        sub = torch.nan_to_num(scores[rows], nan=-torch.inf, posinf=torch.inf,
                               neginf=-torch.inf)
        kth = torch.topk(sub, k, dim=1).values[:, -1:]
        above, tied = sub > kth, sub == kth
        tied &= tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)  # lowest ids first
        columns, values = columns.clone(), values.clone()
        columns[rows] = (above | tied).nonzero()[:, 1].view(len(rows), k)
        values[rows] = sub.gather(1, columns[rows])
    order = torch.argsort(columns, dim=1)  # lower ids first, for the ties
    return _best_first(values.gather(1, order), columns.gather(1, order) + offset)


def _best_first(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` and ``ids`` sorted best first, each row; equal values keep their order."""
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), ids.gather(1, order)


def scores_finite(model: Recommender, histories: Sequence[np.ndarray]) -> bool:
    """Whether ``model`` scores every item finitely after each of ``histories``: weights that
    blew up in training (a learning rate far too high) give inf or NaN scores, though each
    weight may still be finite."""
    with torch.no_grad():
        return all(bool(torch.isfinite(block[:, 1 if start == 0 else 0 :]).all())
                   for start, block in score_blocks(model, histories))
