"""NCF / NeuMF (He et al., WWW 2017): a GMF branch and an MLP branch fused by one output layer.

NeuMF (section 3.4) scores a (user, item) pair by ``sigmoid(h^T [p_u ⊙ q_i ; MLP([p'_u ; q'_i])])``
with separate user and item embeddings for the two branches. The recommender contract scores a
history, not a user id, so each branch's user embedding is replaced by the mean of that
branch's learned "history item" embeddings over the last ``max_history`` items of the history
(as FISM factors a user through their items; see :mod:`bert4rec.baselines.history`). Training
is the paper's pointwise log loss on each observed next item and ``negatives`` items
sampled uniformly per positive (4, section 4.1), from the training sequences only. The branches
are trained jointly from scratch (the paper's NeuMF without pre-training).

The MLP is a halving tower (section 3.3). Its first layer on ``[p'_u ; q'_i]`` is applied as a
user half plus an item half, the same linear map, so that full ranking computes the user half
once per history and the item half once per item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

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

# Full ranking evaluates the MLP on every (history, item) pair: score items in chunks so that a
# chunk's (B * K, hidden) activations stay near this many elements (4 MB in fp32; larger
# chunks fall out of cache and run slower on CPU).
_SCORE_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class NCFConfig(Settings):
    """Architecture. Embedding sizes are 64 for comparability; the paper's released default
    tower [64, 32, 16, 8] (concatenation, then three layers) is doubled to match."""

    label = "ncf"

    num_items: int
    embedding_size: int = 64  # GMF factors
    mlp_embedding_size: int = 64  # per side; the MLP input is twice this
    mlp_layers: tuple[int, ...] = (64, 32, 16)  # hidden sizes; the last is the MLP's factors
    negatives: int = 4  # sampled per positive (section 4.1)
    max_history: int = 200  # most recent history items averaged into the user vectors
    init_std: float = 0.01  # embeddings ~ N(0, 0.01^2) (section 4.1)

    def __post_init__(self) -> None:
        check_types(self)
        if min(self.num_items, self.embedding_size, self.mlp_embedding_size, self.negatives,
               self.max_history) < 1:
            raise ConfigError("num_items, embedding sizes, negatives and max_history must be >= 1")
        if not self.mlp_layers or min(self.mlp_layers) < 1:
            raise ConfigError("mlp_layers needs at least one layer, each of size >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NCFConfig:
        values = dict(values)
        if "mlp_layers" in values:  # JSON and TOML give a list
            values["mlp_layers"] = tuple(values["mlp_layers"])
        return super().from_dict(values)


class NCF(BaselineModel):
    """History-factored NeuMF."""

    name = "ncf"
    settings_class = NCFConfig
    settings: NCFConfig

    def __init__(self, config: NCFConfig) -> None:
        super().__init__(config)
        n, d, m = config.num_items, config.embedding_size, config.mlp_embedding_size
        # GMF branch: p (history items) and q (target items).
        self.gmf_history = nn.Embedding(n + 1, d, padding_idx=0)
        self.gmf_item = nn.Embedding(n + 1, d)
        # MLP branch: p' and q', then the tower. The first layer W [p' ; q'] + b is split into
        # W_user p' + b and W_item q' (same map, see the module docstring).
        self.mlp_history = nn.Embedding(n + 1, m, padding_idx=0)
        self.mlp_item = nn.Embedding(n + 1, m)
        first = config.mlp_layers[0]
        self.mlp_user_in = nn.Linear(m, first)
        self.mlp_item_in = nn.Linear(m, first, bias=False)
        sizes = config.mlp_layers
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.output = nn.Linear(d + sizes[-1], 1)  # h, on [GMF ; MLP]
        for table in (self.gmf_history, self.gmf_item, self.mlp_history, self.mlp_item):
            nn.init.normal_(table.weight, std=config.init_std)
        for layer in (self.mlp_user_in, self.mlp_item_in, *self.tower, self.output):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def user(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GMF user vectors (B, d) and the user half of the first MLP layer (B, hidden) of
        left-padded histories (B, T)."""
        gmf = history_mean(self.gmf_history, tokens)
        mlp = self.mlp_user_in(history_mean(self.mlp_history, tokens))
        return gmf, mlp

    def pair_logits(self, user: tuple[torch.Tensor, torch.Tensor], items: torch.Tensor
                    ) -> torch.Tensor:
        """Logits (B, K) of the users from :meth:`user` and item ids (B, K), or (1, K) for the
        same items in every row."""
        gmf_user, mlp_user = user
        gmf = gmf_user.unsqueeze(1) * self.gmf_item(items)  # (B, K, d)
        h = F.relu(mlp_user.unsqueeze(1) + self.mlp_item_in(self.mlp_item(items)))  # (B, K, h1)
        for layer in self.tower:
            h = F.relu(layer(h))  # (B, K, h_last) after the last layer
        return self.output(torch.cat([gmf, h], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Logits (B, num_items + 1) on the model's device; column 0 (padding) is -inf.

        The same function as :meth:`pair_logits` over every item, arranged for full ranking: the
        output layer is linear, so the GMF branch's share is one matrix product, and only the
        MLP tower runs per (history, item) pair, in chunks small enough to stay in cache."""
        rows = len(histories)
        if rows == 0:
            return torch.empty((0, self.num_items + 1), device=self.device)
        tokens = left_pad(histories, self.settings.max_history).to(self.device)
        gmf_user, mlp_user = self.user(tokens)
        d = self.settings.embedding_size
        weight = self.output.weight[0]  # h over [GMF ; MLP]
        scores = torch.addmm(self.output.bias, gmf_user * weight[:d], self.gmf_item.weight[1:].T)
        item_in = self.mlp_item_in(self.mlp_item.weight[1:])  # (num_items, hidden)
        widest = max(self.settings.mlp_layers)
        chunk = max(1, _SCORE_CHUNK_ELEMENTS // (rows * widest))
        for start in range(0, self.num_items, chunk):
            h = mlp_user.unsqueeze(1) + item_in[start:start + chunk]  # (B, K, hidden)
            h = h.relu_().flatten(0, 1)  # (B * K, hidden): the tower sees pairs as rows
            for layer in self.tower:
                h = layer(h).relu_()
            scores[:, start:start + chunk] += (h @ weight[d:]).view(rows, -1)  # (B, K)
        pad = torch.full((rows, 1), -math.inf, device=self.device)
        return torch.cat([pad, scores], dim=1)


def pointwise_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """The pointwise log loss averaged over every instance: label 1 for the (B, 1) positive logits,
    0 for the (B, negatives) sampled ones."""
    logits = torch.cat([positive, negative], dim=1)
    labels = torch.zeros_like(logits)
    labels[:, : positive.shape[1]] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def fit(
    data: Interactions,
    config: NCFConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[NCF, FitResult]:
    """Train on ``data``'s training sequences; the model comes back with its best validation
    weights, on the device ``fit.device`` chose."""
    examples = training_examples(data, config.num_items)
    model, device = start_fit(data, config, fit, NCF)

    def loss_fn(rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        tokens = examples.history(rows, config.max_history).to(device)  # (B, T)
        positive = examples.next_items(rows, 1).to(device)  # (B, 1)
        negative = uniform_items(generator, (len(rows), config.negatives),
                                 config.num_items).to(device)  # (B, negatives)
        user = model.user(tokens)
        return pointwise_loss(model.pair_logits(user, positive), model.pair_logits(user, negative))

    result = fit_loop(model, data, fit, len(examples), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
