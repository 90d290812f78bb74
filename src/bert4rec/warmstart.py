"""Starting points for the item parameters, computed from the training sequences alone.

BERT4Rec starts from random item embeddings and a zero output bias, and on MovieLens-1M it sits
for many epochs at the level of popularity before it learns to read the history. Two opt-in
starts shorten that plateau without changing the model:

- ``popularity_bias``: the output bias at the centred log count of each item, so the first
  predictions are popularity rather than uniform.
- ``cooccurrence_embeddings``: item embeddings from a truncated SVD of the positive pointwise
  mutual information of items that occur near each other in the training sequences (the
  classic word-embedding factorisation, Levy & Goldberg 2014). Items consumed together start
  close together, and since the output layer is tied to these embeddings, so do their scores.

Only training sequences are read (never a validation or test target).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, svds

from bert4rec.errors import ConfigError


def popularity_bias(items: np.ndarray, num_items: int) -> np.ndarray:
    """Centred ``log(count + 1)`` of items ``1..num_items`` in the training ``items``."""
    counts = np.bincount(items, minlength=num_items + 1)[1 : num_items + 1]
    bias = np.log(counts.astype(np.float64) + 1.0)
    return (bias - bias.mean()).astype(np.float32)


def cooccurrence_embeddings(
    items: np.ndarray, lengths: np.ndarray, num_items: int, dim: int, std: float,
    window: int = 3, seed: int = 0,
) -> np.ndarray:
    """Embeddings (num_items, dim) of items ``1..num_items`` (row ``i - 1`` is item ``i``).

    ``items`` holds the training sequences back to back, ``lengths`` their lengths. Two items
    ``k`` positions apart in one sequence (``1 <= k <= window``) count ``1 / k`` in a symmetric
    co-occurrence matrix; its positive PMI is factorised by a truncated SVD, rows ``U sqrt(S)``,
    scaled so that the entries' standard deviation is ``std`` (the model's initialiser's).
    Items never seen near another one get zero rows; the result is deterministic for a seed.
    """
    items = np.asarray(items, dtype=np.int64)
    user = np.repeat(np.arange(len(lengths)), lengths)
    rows, cols, weights = [], [], []
    for lag in range(1, window + 1):
        same = user[:-lag] == user[lag:]
        a, b = items[:-lag][same] - 1, items[lag:][same] - 1
        rows += [a, b]
        cols += [b, a]
        weights += [np.full(2 * len(a), 1.0 / lag, dtype=np.float64)]
    counts = sp.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(num_items, num_items)).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    embeddings = np.zeros((num_items, dim), dtype=np.float32)
    if total <= 0:
        return embeddings
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    pmi = counts.tocoo()
    values = np.log(pmi.data * total / (marginal[pmi.row] * marginal[pmi.col]))
    keep = values > 0
    ppmi = sp.csr_matrix((values[keep], (pmi.row[keep], pmi.col[keep])),
                         shape=(num_items, num_items))
    rank = min(dim, num_items - 1)
    if rank < 1 or ppmi.nnz == 0:
        return embeddings
    start = np.random.default_rng(seed).standard_normal(num_items)
    try:
        u, s, _ = svds(ppmi, k=rank, v0=start)
    except ArpackError as exc:  # ArpackNoConvergence is one
        raise ConfigError(f"the co-occurrence start of the item embeddings failed ({exc}); "
                          "train with item_embedding_init = random") from exc
    order = np.argsort(-s)
    factors = u[:, order] * np.sqrt(s[order])
    spread = factors.std()
    if spread > 0:
        embeddings[:, :rank] = factors * (std / spread)
    return embeddings
