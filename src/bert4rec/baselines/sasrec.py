"""SASRec (Kang & McAuley, ICDM 2018): self-attention over a user's history in which every
position reads only itself and earlier items, trained to predict the next item at every position.

Read top to bottom: config, the pre-LN causal block, the model with its losses and the
recommender contract, then ``fit``.

Two losses, chosen by ``SASRecConfig.loss``:

* ``"bce"``, model name ``sasrec``, as published (section III-E): binary cross-entropy of the
  next item against one negative per position, drawn uniformly from items the user has not
  interacted with.
* ``"ce"``, model name ``sasrec-ce``: full softmax cross-entropy over every item at every
  position (Klenitskiy & Vasilev, RecSys 2023), which they found beats BERT4Rec on ML-1m.

Inputs are left-padded and positions count from the right end, as in :mod:`bert4rec.model`, so
padding never changes a score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bert4rec.baselines.common import (
    FitConfig,
    FitResult,
    Settings,
    fit_loop,
    start_fit,
)
from bert4rec.baselines.next_item import NextItemModel, next_item_batch, next_item_windows
from bert4rec.checks import check_types
from bert4rec.data import Interactions
from bert4rec.errors import ConfigError
from bert4rec.losses import linear_cross_entropy
from bert4rec.split import train_sequences

LOSSES = {"bce": "sasrec", "ce": "sasrec-ce"}  # config.loss -> model name

# The paper's optimisation for ML-1m (section IV-B): Adam, learning rate 0.001, batch 128.
PAPER_FIT = FitConfig(lr=1e-3, batch_size=128)


@dataclass(frozen=True)
class SASRecConfig(Settings):
    """Architecture and loss. Defaults are the paper's ML-1m settings (section IV-B), except
    d = 64 rather than 50, the hidden size BERT4Rec uses."""

    label = "SASRec"

    num_items: int
    loss: str = "bce"  # "bce" (published) or "ce" (full softmax)
    max_len: int = 200  # n
    hidden_size: int = 64  # d
    num_layers: int = 2  # b, self-attention blocks
    num_heads: int = 1
    dropout: float = 0.2  # embeddings, attention weights, residual branches
    layer_norm_eps: float = 1e-8  # the released code's value

    def __post_init__(self) -> None:
        check_types(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown SASRec loss {self.loss!r}; choose bce or ce")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_items < 1 or self.max_len < 1:
            raise ConfigError("num_items and max_len must be >= 1")

    @property
    def name(self) -> str:
        return LOSSES[self.loss]


class CausalBlock(nn.Module):
    """Pre-LN block (sections III-B and III-C, with ``g(x) = x + Dropout(g(LayerNorm(x)))``):
    causal self-attention, then a point-wise two-layer ReLU network of width d."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.attention_dropout = config.dropout
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        # Q, K and V projections; the paper has no output projection after attention.
        self.qkv = nn.Linear(d, 3 * d)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(d, d)
        self.ffn_out = nn.Linear(d, d)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``h``: (B, T, d); ``attend``: (B, 1, T, T) bool, True where query t may read key s."""
        b, t, d = h.shape
        qkv = self.qkv(self.norm1(h)).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))  # (B, heads, T, d_head)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        h = h + self.dropout(a.transpose(1, 2).reshape(b, t, d))  # (B, T, d)
        return h + self.dropout(self.ffn_out(self.dropout(F.relu(self.ffn_in(self.norm2(h))))))


def binary_cross_entropy(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """SASRec's loss (section III-E) from the scores (N,) of the next items and of one negative
    each: the mean of ``-log sigmoid(r_pos) - log(1 - sigmoid(r_neg))``."""
    return -(F.logsigmoid(positive) + F.logsigmoid(-negative)).mean()


def unseen_negatives(
    seen: torch.Tensor, num_items: int, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, count) items drawn uniformly, with replacement, from the items ``1..num_items`` not in
    their row of ``seen`` (B, L); a row that holds every item draws from all of them."""
    allowed = torch.ones(len(seen), num_items + 1)  # (B, n + 1) sampling weights
    allowed.scatter_(1, seen, 0.0)
    allowed[:, 0] = 0.0  # padding
    allowed[allowed.sum(dim=1) == 0, 1:] = 1.0
    return torch.multinomial(allowed, count, replacement=True, generator=generator)


class SASRec(NextItemModel):
    """Item and position embeddings, causal blocks, and a final LayerNorm; an item's score is
    the dot product of the last position's output with its (shared) input embedding."""

    name = "sasrec"  # the published loss; each instance takes its own loss's name (LOSSES)
    settings_class = SASRecConfig
    settings: SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__(config)
        self.name = config.name
        d = config.hidden_size
        self.item_embedding = nn.Embedding(config.num_items + 1, d, padding_idx=0)  # row 0: pad
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(CausalBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Glorot, as the released code; biases zero, padding row zero.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.xavier_normal_(module.weight)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, d) of left-padded tokens (B, T), T <= max_len. The output at
        position t depends on the items at t and before only."""
        t = tokens.shape[1]
        max_len, d = self.settings.max_len, self.settings.hidden_size
        positions = torch.arange(max_len - t, max_len, device=tokens.device)
        # Item embeddings scaled by sqrt(d) before the positions are added, as the released
        # code does (the paper does not say).
        h = self.item_embedding(tokens) * math.sqrt(d) + self.position_embedding(positions)[None]
        h = self.embedding_dropout(h)  # (B, T, d)
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()  # key <= query
        itself = torch.eye(t, dtype=torch.bool, device=tokens.device)
        # A query reads earlier real items. A padding query reads only itself: no attention row
        # is empty (which would give NaN), and a real position never reads padding.
        attend = causal & ((tokens != 0)[:, None, :] | itself)  # (B, T, T)
        for block in self.blocks:
            h = block(h, attend[:, None])  # (B, 1, T, T): the same mask for every head
        return self.final_norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (N, num_items + 1) of every item for hidden states (N, d); column 0 is
        padding, whatever its value."""
        return hidden @ self.item_embedding.weight.T

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean loss over the positions with a next item (``targets > 0``); ``inputs``,
        ``targets`` and, for ``bce``, ``negatives`` are (B, T)."""
        hidden = self.encode(inputs)
        where = targets > 0
        h = hidden[where]  # (N, d): positions with a next item
        if self.settings.loss == "ce":
            items = self.item_embedding.weight[1:]  # the logits of self.logits, less padding
            return linear_cross_entropy(h, items, None, targets[where] - 1)
        if negatives is None:
            raise ValueError("the bce loss needs one negative per position")
        positive = (h * self.item_embedding(targets[where])).sum(dim=1)  # (N,)
        negative = (h * self.item_embedding(negatives[where])).sum(dim=1)  # (N,)
        return binary_cross_entropy(positive.float(), negative.float())


def fit(
    data: Interactions,
    config: SASRecConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[SASRec, FitResult]:
    """Train SASRec with :func:`bert4rec.baselines.common.fit_loop`. One example per user: the
    most recent window of its training sequence, the next item as target at every position
    (the paper's training sequence, cut to the last ``max_len`` positions)."""
    model, device = start_fit(data, config, fit, SASRec)
    train = train_sequences(data)
    users, starts, ends = next_item_windows(train.lengths, config.max_len, every=False)
    starts, ends = train.offsets[users] + starts, train.offsets[users] + ends  # in train.items

    def loss_fn(batch: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        inputs, targets = next_item_batch(train.items, starts[batch], ends[batch])  # (B, T)
        negatives = None
        if config.loss == "bce":
            # The released code avoids the user's whole training set; the window is that set
            # for every user whose sequence fits in max_len + 1 items.
            seen = torch.cat([inputs, targets], dim=1)
            negatives = unseen_negatives(seen, config.num_items, inputs.shape[1], generator)
            negatives = negatives.to(device)
        return model.loss(inputs.to(device), targets.to(device), negatives)

    result = fit_loop(model, data, fit, len(starts), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
