"""BPR-MF (Rendle et al., UAI 2009): matrix factorisation trained with the pairwise BPR loss.

BPR-MF scores ``x_ui = <w_u, h_i>`` with a learned vector ``w_u`` per user id. The recommender
contract scores a history instead, and a new user has no learned vector, so here the user is
factored through their items as in FISM / asymmetric SVD: ``w_u`` is the mean of learned
"history item" embeddings ``p_j`` over the last ``max_history`` items of the history,

    x_ui = <mean_j p_j, h_i> + b_i,

with an item bias ``b_i`` (FISM's) so that an empty history still ranks by a learned
popularity. Training uses BPR's pairwise loss on (history prefix, next item, uniformly sampled
negative) triples from the training sequences only (see :mod:`bert4rec.baselines.history`);
the prefix never contains the positive or a held-out item. Order within the history is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bert4rec.baselines.common import (
    BaselineModel,
    FitConfig,
    FitResult,
    Settings,
    fit_loop,
    start_fit,
)
from bert4rec.baselines.history import (
    bpr_loss,
    history_mean,
    left_pad,
    training_examples,
    uniform_items,
)
from bert4rec.checks import check_types
from bert4rec.data import Interactions
from bert4rec.errors import ConfigError


@dataclass(frozen=True)
class BPRConfig(Settings):
    """Architecture; the embedding size is 64 as for the other models, for comparability."""

    label = "bpr"

    num_items: int
    embedding_size: int = 64
    max_history: int = 200  # most recent history items averaged into the user vector
    init_std: float = 0.01  # N(0, 0.01^2), a common choice for BPR-MF factors

    def __post_init__(self) -> None:
        check_types(self)
        if self.num_items < 1 or self.embedding_size < 1 or self.max_history < 1:
            raise ConfigError("num_items, embedding_size and max_history must be >= 1")


class BPR(BaselineModel):
    """History-factored BPR-MF."""

    name = "bpr"
    settings_class = BPRConfig
    settings: BPRConfig

    def __init__(self, config: BPRConfig) -> None:
        super().__init__(config)
        n, d = config.num_items, config.embedding_size
        # Row 0 is padding in both tables; history_mean masks it and no score reads it.
        self.history_embedding = nn.Embedding(n + 1, d, padding_idx=0)  # p_j
        self.item_embedding = nn.Embedding(n + 1, d)  # h_i
        self.item_bias = nn.Embedding(n + 1, 1)  # b_i
        for table in (self.history_embedding, self.item_embedding):
            nn.init.normal_(table.weight, std=config.init_std)
        nn.init.zeros_(self.item_bias.weight)

    def user(self, tokens: torch.Tensor) -> torch.Tensor:
        """User vectors (B, d) of left-padded histories (B, T)."""
        return history_mean(self.history_embedding, tokens)

    def pair_scores(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``x_ui`` (B, K) of user vectors (B, d) and item ids (B, K)."""
        q = self.item_embedding(items)  # (B, K, d)
        return (q @ user.unsqueeze(-1)).squeeze(-1) + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores (B, num_items + 1) on the model's device; column 0 (padding) is -inf."""
        tokens = left_pad(histories, self.settings.max_history).to(self.device)
        user = self.user(tokens)  # (B, d)
        scores = user @ self.item_embedding.weight.T + self.item_bias.weight.T  # (B, n + 1)
        scores[:, 0] = -math.inf
        return scores


def fit(
    data: Interactions,
    config: BPRConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[BPR, FitResult]:
    """Train on ``data``'s training sequences; the model comes back with its best validation
    weights, on the device ``fit.device`` chose."""
    examples = training_examples(data, config.num_items)
    model, device = start_fit(data, config, fit, BPR)

    def loss_fn(rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        tokens = examples.history(rows, config.max_history).to(device)  # (B, T)
        positive = examples.next_items(rows, 1).to(device)  # (B, 1)
        negative = uniform_items(generator, (len(rows), 1), config.num_items).to(device)
        user = model.user(tokens)  # (B, d)
        return bpr_loss(model.pair_scores(user, positive), model.pair_scores(user, negative))

    result = fit_loop(model, data, fit, len(examples), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
