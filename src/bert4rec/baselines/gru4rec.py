"""GRU4Rec (Hidasi et al., ICLR 2016) and GRU4Rec+ (Hidasi & Karatzoglou, CIKM 2018): a GRU
reads a user's items in order and scores every item as the next one.

Read top to bottom: config, the two ranking losses, the model with the recommender contract, then
``fit``.

Three losses, chosen by ``GRU4RecConfig.loss``:

* ``"top1"``, model name ``gru4rec`` (the 2016 paper, the GRU4Rec that BERT4Rec's paper
  compares with): each step's target is ranked against the targets of the other sequences in
  the mini-batch at the same step, with the TOP1 loss (section 3.1.2 of that paper).
* ``"bpr-max"``, model name ``gru4rec+`` (the 2018 paper): the same in-batch negatives plus
  ``n_negatives`` extra items drawn in proportion to ``count ** sample_alpha``, with the
  BPR-max loss and its score regularisation (section 3 of that paper).
* ``"ce"``, model name ``gru4rec-ce``: full softmax cross-entropy over every item at every step,
  as SASRec-CE is SASRec with that loss. Neither paper trains GRU4Rec this way; it is the
  strongest of the three on ML-1m (docs/RESULTS.md).

Training reads each user's training sequence in windows of ``max_len`` steps, the hidden state
starting from zero in every window (the papers carry it through whole sessions instead).
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

LOSSES = {"top1": "gru4rec", "bpr-max": "gru4rec+", "ce": "gru4rec-ce"}  # loss -> name


@dataclass(frozen=True)
class GRU4RecConfig(Settings):
    """Architecture, loss and sampling. Defaults follow the 2018 paper and its released code:
    one layer of 100 units, 2048 extra negatives, sample_alpha 0.5, bpreg 1. The extra
    negatives are drawn for ``bpr-max`` only; ``top1`` ranks against the mini-batch alone, as
    in the 2016 paper."""

    label = "GRU4Rec"

    num_items: int
    loss: str = "top1"  # "top1" (GRU4Rec), "bpr-max" (GRU4Rec+) or "ce" (GRU4Rec-CE)
    max_len: int = 200  # steps per training window; the last max_len items of a history
    hidden_size: int = 100
    num_layers: int = 1
    embedding_size: int | None = None  # input item embedding; None: hidden_size
    embedding_dropout: float = 0.0  # dropout_p_embed
    dropout: float = 0.0  # dropout_p_hidden: on every GRU layer's output
    n_negatives: int = 2048  # bpr-max: extra negatives per mini-batch, shared by all its steps
    sample_alpha: float = 0.5  # bpr-max: extra negatives drawn in proportion to count ** alpha
    bpreg: float = 1.0  # bpr-max: weight of the score regularisation

    def __post_init__(self) -> None:
        check_types(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown GRU4Rec loss {self.loss!r}; choose "
                              f"{', '.join(LOSSES)}")
        if self.num_items < 1 or self.max_len < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ConfigError("num_items, max_len, hidden_size and num_layers must be >= 1")
        if self.n_negatives < 0 or self.sample_alpha < 0 or self.bpreg < 0:
            raise ConfigError("n_negatives, sample_alpha and bpreg must be >= 0")

    @property
    def name(self) -> str:
        return LOSSES[self.loss]

    @property
    def input_size(self) -> int:
        return self.embedding_size or self.hidden_size


def top1_loss(positive: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """TOP1 (Hidasi et al. 2016, section 3.1.2), mean over rows: the mean over the ``valid``
    (N, M) negatives of ``sigmoid(r_j - r_i) + sigmoid(r_j^2)``, where ``r_i`` (N,) is the
    target's score and ``r_j`` (N, M) the negatives'. The first term is a relative rank; the
    second keeps the negatives' scores near zero. Rows without a valid negative are left out;
    at least one row must have one."""
    keep = valid.any(dim=1)
    positive, negatives, valid = positive[keep], negatives[keep], valid[keep]
    terms = torch.sigmoid(negatives - positive[:, None]) + torch.sigmoid(negatives * negatives)
    per_row = (terms * valid).sum(dim=1) / valid.sum(dim=1)
    return per_row.mean()


def bpr_max_loss(
    positive: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor, bpreg: float
) -> torch.Tensor:
    """BPR-max with its score regularisation (Hidasi & Karatzoglou 2018, section 3.2), mean
    over rows: ``-log sum_j s_j sigmoid(r_i - r_j) + bpreg * sum_j s_j r_j^2``, where ``r_i``
    (N,) is the target's score, ``r_j`` (N, M) the negatives' and ``s_j`` their softmax over
    the ``valid`` (N, M) ones. Rows without a valid negative are left out; at least one row
    must have one."""
    keep = valid.any(dim=1)
    positive, negatives, valid = positive[keep], negatives[keep], valid[keep]
    log_weights = negatives.masked_fill(~valid, -torch.inf).log_softmax(dim=1)  # log s_j
    # The sum in log space: it underflows when the target scores far below its negatives.
    ranking = -torch.logsumexp(log_weights + F.logsigmoid(positive[:, None] - negatives), dim=1)
    # negatives * negatives, not square(): pow is several times slower on CPU.
    regularisation = (log_weights.exp() * negatives * negatives).sum(dim=1)
    return (ranking + bpreg * regularisation).mean()


class GRU4Rec(NextItemModel):
    """Item embedding, a GRU, and an output layer of its own (item vectors and biases)."""

    name = "gru4rec"  # TOP1; each instance takes its own loss's name (LOSSES)
    settings_class = GRU4RecConfig
    settings: GRU4RecConfig

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__(config)
        self.name = config.name
        # An embedding stands in for the first paper's one-hot input (the same product).
        self.item_embedding = nn.Embedding(config.num_items + 1, config.input_size, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.gru = nn.GRU(config.input_size, config.hidden_size, config.num_layers,
                          batch_first=True,
                          dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        # Output item vectors and biases; row 0 (padding) is never a target.
        self.output_embedding = nn.Embedding(config.num_items + 1, config.hidden_size)
        self.output_bias = nn.Parameter(torch.zeros(config.num_items + 1))
        # Uniform in +-sqrt(6 / (rows + columns)), as the released code initialises its matrices.
        for table in (self.item_embedding, self.output_embedding):
            bound = math.sqrt(6.0 / sum(table.weight.shape))
            nn.init.uniform_(table.weight, -bound, bound)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """GRU outputs (B, T, H) of left-padded tokens (B, T), zero at padding. The GRU starts
        at each row's first item, so padding never reaches its state."""
        b, t = tokens.shape
        lengths = (tokens != 0).sum(dim=1)  # (B,)
        pad = (t - lengths)[:, None]  # (B, 1)
        steps = torch.arange(t, device=tokens.device)[None]  # (1, T)
        # Shift every row left so that it starts at slot 0: the padding then comes after a
        # row's items and cannot reach their states. (Cheaper than a packed sequence, whose
        # backward pass on CPU refills a whole-batch gradient at every step.)
        aligned = tokens.gather(1, (steps + pad) % t)  # (B, T), items first, then padding
        x = self.embedding_dropout(self.item_embedding(aligned))  # (B, T, E)
        out, _ = self.gru(x)  # (B, T, H)
        out = out * (steps < lengths[:, None]).unsqueeze(2)  # zero after each row's end
        # Shift back right: slot (s - pad) mod T holds step s; padding slots read zeros.
        back = ((steps - pad) % t)[..., None].expand(b, t, out.shape[2])  # (B, T, H)
        return self.dropout(out.gather(1, back))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (N, num_items + 1) of every item for outputs (N, H); column 0 is padding,
        whatever its value."""
        return hidden @ self.output_embedding.weight.T + self.output_bias

    def loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean loss over the steps with a next item (``targets > 0``). ``inputs`` and
        ``targets`` are (B, T); for ``bpr-max``, ``extra`` (K,) holds the sampled negatives.
        ``top1`` and ``bpr-max`` rank each target against the mini-batch's other targets."""
        hidden = self.encode(inputs)  # (B, T, H)
        where = targets > 0
        if self.settings.loss == "ce":
            # The logits of self.logits less padding's, never all in memory at once.
            return linear_cross_entropy(hidden[where], self.output_embedding.weight[1:],
                                        self.output_bias[1:], targets[where] - 1)
        rows, steps = where.nonzero(as_tuple=True)  # (N,): the steps with a next item
        target_vectors = self.output_embedding(targets)  # (B, T, H)
        target_bias = self.output_bias[targets]  # (B, T)
        # In-batch negatives, GRU4Rec's mini-batch of parallel sessions: at step t, row b is
        # scored against the target of every other row c at the same step.
        per_step = torch.bmm(hidden.transpose(0, 1), target_vectors.permute(1, 2, 0))  # (T, B, B)
        in_batch = per_step[steps, rows] + target_bias.T[steps]  # (N, B)
        hidden = hidden[rows, steps]  # (N, H)
        positive = (hidden * target_vectors[rows, steps]).sum(dim=1) + target_bias[rows, steps]
        other = rows[:, None] != torch.arange(len(targets), device=targets.device)  # (N, B)
        in_batch_valid = other & where.T[steps]  # another row's real target
        negatives, valid = in_batch, in_batch_valid
        if extra is not None and len(extra):
            sampled = hidden @ self.output_embedding(extra).T + self.output_bias[extra]  # (N, K)
            negatives = torch.cat([in_batch, sampled], dim=1)  # (N, B + K)
            valid = torch.cat([in_batch_valid, torch.ones_like(sampled, dtype=torch.bool)], dim=1)
        if not valid.any():
            # One sequence and no sampled negatives: nothing to rank against. A zero that
            # trains nothing, not a mean over no rows (NaN weights).
            return (positive.sum() + negatives.sum()) * 0.0
        if self.settings.loss == "top1":
            return top1_loss(positive.float(), negatives.float(), valid)
        return bpr_max_loss(positive.float(), negatives.float(), valid, self.settings.bpreg)


def fit(
    data: Interactions,
    config: GRU4RecConfig,
    fit: FitConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[GRU4Rec, FitResult]:
    """Train GRU4Rec with :func:`bert4rec.baselines.common.fit_loop` on every next item of every
    user's training sequence, cut into windows of ``max_len`` steps."""
    model, device = start_fit(data, config, fit, GRU4Rec)
    train = train_sequences(data)
    users, starts, ends = next_item_windows(train.lengths, config.max_len, every=True)
    starts, ends = train.offsets[users] + starts, train.offsets[users] + ends  # in train.items
    # Training counts, never validation or test items; item 0 (padding) is never drawn.
    counts = np.bincount(train.items, minlength=config.num_items + 1).astype(np.float64)
    weights = torch.from_numpy(counts**config.sample_alpha)
    weights[0] = 0.0
    draw = config.loss == "bpr-max" and config.n_negatives > 0

    def loss_fn(batch: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        inputs, targets = next_item_batch(train.items, starts[batch], ends[batch])  # (B, T)
        extra = None
        if draw:
            extra = torch.multinomial(weights, config.n_negatives, replacement=True,
                                      generator=generator).to(device)  # (K,)
        return model.loss(inputs.to(device), targets.to(device), extra)

    result = fit_loop(model, data, fit, len(starts), loss_fn, progress=progress, log=log,
                      run_dir=run_dir)
    return model, result
