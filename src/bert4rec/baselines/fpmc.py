"""FPMC (Rendle et al., WWW 2010): matrix factorisation plus a factorised first-order Markov
chain, trained with BPR.

FPMC scores the next item ``i`` of user ``u`` after basket ``B`` as

    x_uli = <v_u^{U,I}, v_i^{I,U}> + mean_{l in B} <v_i^{I,L}, v_l^{L,I}>.

Sequences have one item per step, so the basket is the last item ``l``. The recommender
contract scores a history, not a user id, so the MF term's ``v_u^{U,I}`` is the mean of learned
"history item" embeddings over the last ``max_history`` items of the history (as FISM factors a
user; see :mod:`bert4rec.baselines.history`), and an item bias lets an empty history still rank
by a learned popularity. Training is S-BPR on (history prefix, next item, uniformly
sampled negative) triples from the training sequences only.
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
class FPMCConfig(Settings):
    """Architecture; one embedding size for both factorisations (the paper's k_UI = k_IL), 64 for
    comparability."""

    label = "fpmc"

    num_items: int
    embedding_size: int = 64
    max_history: int = 200  # most recent history items averaged into the user vector
    init_std: float = 0.01  # factors start ~ N(0, 0.01^2)

    def __post_init__(self) -> None:
        check_types(self)
        if self.num_items < 1 or self.embedding_size < 1 or self.max_history < 1:
            raise ConfigError("num_items, embedding_size and max_history must be >= 1")


class FPMC(BaselineModel):
    """History-factored MF plus a factorised item-to-item transition."""

    name = "fpmc"
    settings_class = FPMCConfig
    settings: FPMCConfig

    def __init__(self, config: FPMCConfig) -> None:
        super().__init__(config)
        n, d = config.num_items, config.embedding_size
        # Row 0 is padding: an empty history has no last item and contributes zero.
        self.history_embedding = nn.Embedding(n + 1, d, padding_idx=0)  # for v_u^{U,I}
        self.item_user = nn.Embedding(n + 1, d)  # v_i^{I,U}
        self.item_last = nn.Embedding(n + 1, d)  # v_i^{I,L}
        self.last_item = nn.Embedding(n + 1, d, padding_idx=0)  # v_l^{L,I}
        self.item_bias = nn.Embedding(n + 1, 1)
        for table in (self.history_embedding, self.item_user, self.item_last, self.last_item):
            nn.init.normal_(table.weight, std=config.init_std)
        nn.init.zeros_(self.item_bias.weight)

    def context(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors (B, d) and last-item vectors (B, d) of left-padded histories (B, T)."""
        user = history_mean(self.history_embedding, tokens)
        last = self.last_item(tokens[:, -1]) * (tokens[:, -1:] != 0)  # left padding: last slot
        return user, last

    def pair_scores(self, context: tuple[torch.Tensor, torch.Tensor], items: torch.Tensor
                    ) -> torch.Tensor:
        """``x_uli`` (B, K) of the context from :meth:`context` and item ids (B, K)."""
        user, last = context
        mf = (self.item_user(items) @ user.unsqueeze(-1)).squeeze(-1)  # (B, K)
        fmc = (self.item_last(items) @ last.unsqueeze(-1)).squeeze(-1)  # (B, K)
        return mf + fmc + self.item_bias(items).squeeze(-1)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores (B, num_items + 1) on the model's device; column 0 (padding) is -inf."""
        tokens = left_pad(histories, self.settings.max_history).to(self.device)
        user, last = self.context(tokens)
        scores = (user @ self.item_user.weight.T + last @ self.item_last.weight.T
                  + self.item_bias.weight.T)  # (B, n + 1)
        scores[:, 0] = -math.inf
        return scores


def fit(
    data: Interactions,
    config: FPMCConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[FPMC, FitResult]:
    """Train on ``data``'s training sequences; the model comes back with its best validation
    weights, on the device ``fit.device`` chose."""
    examples = training_examples(data, config.num_items)
    model, device = start_fit(data, config, fit, FPMC)

    def loss_fn(rows: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        tokens = examples.history(rows, config.max_history).to(device)  # (B, T)
        positive = examples.next_items(rows, 1).to(device)  # (B, 1)
        negative = uniform_items(generator, (len(rows), 1), config.num_items).to(device)
        context = model.context(tokens)
        return bpr_loss(model.pair_scores(context, positive),
                        model.pair_scores(context, negative))

    result = fit_loop(model, data, fit, len(examples), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
