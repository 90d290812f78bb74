"""Caser (Tang & Wang, WSDM 2018): convolutions over the embeddings of the last L items.

The last ``L`` item embeddings form an (L, d) "image". Horizontal filters of every height
``1..L`` slide over it and are max-pooled over time (union-level and point-level sequential
patterns); vertical filters take weighted sums of the L rows. Both feed a fully connected layer
to ``z`` (size d), which is joined with a user embedding and scored against a second item
embedding with a bias: ``y_i = <[z ; P_u], W'_i> + b'_i``. Training predicts the next ``T``
items at once with binary cross-entropy against ``negatives`` sampled items per target.

The recommender contract scores a history, not a user id, so ``P_u`` is the mean of learned
"history item" embeddings over the last ``max_history`` items of the history (as FISM factors a
user; see :mod:`bert4rec.baselines.history`). Examples come from the training sequences only:
every position with at least one item before it, whose L-window is left-padded with id 0 (a
zero embedding) where the history is shorter, as at inference, and whose targets past the end
of the training sequence are ignored by the loss. Negatives are uniform over the catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
    history_mean,
    left_pad,
    training_examples,
    uniform_items,
)
from bert4rec.checks import check_types
from bert4rec.data import Interactions
from bert4rec.errors import ConfigError


@dataclass(frozen=True)
class CaserConfig(Settings):
    """Architecture. Defaults are the paper's (and its released code's), except the embedding
    size, 64 instead of 50 for comparability."""

    label = "caser"

    num_items: int
    embedding_size: int = 64  # d
    window: int = 5  # L: items the convolutions see
    targets: int = 3  # T: next items predicted per example
    horizontal_filters: int = 16  # n_h, per height 1..L
    vertical_filters: int = 4  # n_v
    dropout: float = 0.5  # on the convolution features, before the fully connected layer
    negatives: int = 3  # sampled per target (the paper's 3)
    max_history: int = 200  # most recent history items averaged into the user vector

    def __post_init__(self) -> None:
        check_types(self)
        if min(self.num_items, self.embedding_size, self.window, self.targets,
               self.horizontal_filters, self.vertical_filters, self.negatives,
               self.max_history) < 1:
            raise ConfigError("every caser size and count must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)")


class Caser(BaselineModel):
    """Convolutional sequence embedding with a history-mean user vector."""

    name = "caser"
    settings_class = CaserConfig
    settings: CaserConfig

    def __init__(self, config: CaserConfig) -> None:
        super().__init__(config)
        n, d, window = config.num_items, config.embedding_size, config.window
        # Row 0 is padding; the window is left-padded with it and encode zeroes its rows.
        self.item_embedding = nn.Embedding(n + 1, d, padding_idx=0)  # Q, the window's rows
        self.history_embedding = nn.Embedding(n + 1, d, padding_idx=0)  # for P_u
        # A vertical filter (L x 1) weights the L rows of every embedding column alike: a linear
        # map over the time axis. A horizontal filter (h x d) spans the full embedding width: a
        # 1-D convolution over time with d input channels. Both equal the paper's 2-D
        # convolutions and run much faster than Conv2d on a CPU.
        self.vertical = nn.Linear(window, config.vertical_filters)
        self.horizontal = nn.ModuleList(
            nn.Conv1d(d, config.horizontal_filters, height) for height in range(1, window + 1)
        )
        self.dropout = nn.Dropout(config.dropout)
        features = config.vertical_filters * d + config.horizontal_filters * window
        self.hidden = nn.Linear(features, d)
        self.output_embedding = nn.Embedding(n + 1, 2 * d)  # W'
        self.output_bias = nn.Embedding(n + 1, 1)  # b'
        # The released code's initialisation: N(0, (1/d)^2) embeddings, W' at 1/(2d), b' zero.
        for table in (self.item_embedding, self.history_embedding):
            nn.init.normal_(table.weight, std=1.0 / d)
        nn.init.normal_(self.output_embedding.weight, std=1.0 / (2 * d))
        nn.init.zeros_(self.output_bias.weight)

    def encode(self, window: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``[z ; P_u]`` (B, 2d) of the last-L window (B, L) and the longer history (B, T), both
        left-padded."""
        e = self.item_embedding(window) * (window != 0).unsqueeze(-1)  # (B, L, d), padding 0
        e = e.transpose(1, 2)  # (B, d, L): channels are embedding dimensions
        vertical = self.vertical(e).flatten(1)  # (B, d, n_v) -> (B, d * n_v), no activation
        pooled = []
        for conv in self.horizontal:
            h = F.relu(conv(e))  # (B, n_h, L - height + 1)
            pooled.append(h.max(dim=2).values)  # (B, n_h): max over time
        features = self.dropout(torch.cat([vertical, *pooled], dim=1))  # (B, d n_v + n_h L)
        z = F.relu(self.hidden(features))  # (B, d)
        return torch.cat([z, history_mean(self.history_embedding, history)], dim=1)

    def pair_logits(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of encodings (B, 2d) and item ids (B, K)."""
        w = self.output_embedding(items)  # (B, K, 2d)
        return (w @ x.unsqueeze(-1)).squeeze(-1) + self.output_bias(items).squeeze(-1)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Logits (B, num_items + 1) on the model's device; column 0 (padding) is -inf."""
        was_training = self.training
        self.eval()
        history = left_pad(histories, self.settings.max_history).to(self.device)
        window = full_window(left_pad(histories, self.settings.window), self.settings.window)
        window = window.to(self.device)
        x = self.encode(window, history)  # (B, 2d)
        self.train(was_training)
        scores = x @ self.output_embedding.weight.T + self.output_bias.weight.T  # (B, n + 1)
        scores[:, 0] = -math.inf
        return scores


def full_window(tokens: torch.Tensor, window: int) -> torch.Tensor:
    """Left-padded (B, T <= L) ids widened to (B, L) with more left padding: the convolutions
    need all L rows."""
    return F.pad(tokens, (window - tokens.shape[1], 0))


def caser_loss(positive: torch.Tensor, negative: torch.Tensor, valid: torch.Tensor
               ) -> torch.Tensor:
    """Binary cross-entropy as the released code: mean ``-ln sigmoid`` over the valid (B, T)
    target logits plus mean ``-ln(1 - sigmoid)`` over the (B, T, negatives) logits sampled
    for them. ``valid`` (B, T) is False for targets past the end of a training sequence."""
    positive_loss = F.softplus(-positive)[valid].mean()
    negative_loss = F.softplus(negative)[valid].mean()
    return positive_loss + negative_loss


def fit(
    data: Interactions,
    config: CaserConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[Caser, FitResult]:
    """Train on ``data``'s training sequences; the model comes back with its best validation
    weights, on the device ``fit.device`` chose."""
    examples = training_examples(data, config.num_items)
    model, device = start_fit(data, config, fit, Caser)

    def loss_fn(rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        history = examples.history(rows, config.max_history).to(device)  # (B, T)
        window = full_window(examples.history(rows, config.window), config.window).to(device)
        targets = examples.next_items(rows, config.targets).to(device)  # (B, T_next)
        negative = uniform_items(generator, (len(rows), config.targets * config.negatives),
                                 config.num_items).to(device)  # (B, T_next * negatives)
        x = model.encode(window, history)  # (B, 2d)
        positive_logits = model.pair_logits(x, targets)  # (B, T_next)
        negative_logits = model.pair_logits(x, negative).view(len(rows), config.targets,
                                                              config.negatives)
        return caser_loss(positive_logits, negative_logits, targets != 0)

    result = fit_loop(model, data, fit, len(examples), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
