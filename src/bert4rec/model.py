"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer over a user's item history.

Read top to bottom: config, embeddings, a post-LN Transformer block, the output head tied to
the item embeddings, the sampled losses for large catalogues, then the model with its training
loss and its inference contract.

Token ids: ``0`` padding, ``1..num_items`` items, ``num_items + 1`` ``[MASK]``. Sequences are
left-padded so that the most recent item always sits in the last slot; position ids count from
the right end (slot ``max_len - 1`` is the last), so a sequence gets the same positions however
much padding a batch adds, and padding never changes a score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bert4rec.checks import is_kind
from bert4rec.losses import linear_cross_entropy


@dataclass(frozen=True)
class BERT4RecConfig:
    """Architecture. Defaults are the paper's ML-1m settings (section 4.3, released scripts)."""

    num_items: int
    max_len: int = 200  # N
    hidden_size: int = 64  # d
    num_layers: int = 2  # L
    num_heads: int = 2  # h: head size 32, "single head if d < 32"
    inner_size: int | None = None  # FFN inner size, 4d when None
    hidden_dropout: float = 0.2
    attention_dropout: float = 0.2
    init_std: float = 0.02
    layer_norm_eps: float = 1e-12  # BERT's value

    def __post_init__(self) -> None:
        for name in ("num_items", "max_len", "hidden_size", "num_layers", "num_heads",
                     "inner_size"):
            value = getattr(self, name)
            if name == "inner_size" and value is None:
                continue
            if not is_kind(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not is_kind(value, float) or not 0 <= value < 1:
                raise ValueError(f"{name} must be at least 0 and below 1 (got {value!r})")
        for name in ("init_std", "layer_norm_eps"):
            value = getattr(self, name)
            if not is_kind(value, float) or not value > 0:
                raise ValueError(f"{name} must be a positive number (got {value!r})")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_items < 1 or self.max_len < 2:
            raise ValueError("num_items must be >= 1 and max_len >= 2")

    @property
    def ffn_size(self) -> int:
        return self.inner_size or 4 * self.hidden_size

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BERT4RecConfig:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


# ----------------------------------------------------------------------------------------------
# Dropout on the CPU. torch's ``bernoulli_`` draws each mask element from a Mersenne Twister: at
# N = 200 the attention-probability masks (B, heads, T, T) alone took an eighth of a training
# step. These masks come from numpy's SFC64 generator, 16 random bits per element (keep
# probability exact to 1/65536), about twenty times faster; on a GPU torch's own dropout is kept.


class DropoutMasks:
    """A seeded source of CPU dropout masks whose state a checkpoint can carry."""

    def __init__(self, seed: int = 0) -> None:
        self.bits = np.random.SFC64(seed)

    def seed(self, seed: int) -> None:
        self.bits = np.random.SFC64(seed)

    def keep(self, shape: torch.Size, p: float) -> torch.Tensor:
        """A bool tensor of ``shape``, True with probability ``1 - p``."""
        n = math.prod(shape)
        words = self.bits.random_raw((n + 3) // 4)  # four 16-bit draws per 64-bit word
        draws = np.asarray(words, dtype=np.uint64).view(np.uint16)[:n]
        return torch.from_numpy(draws >= round(p * 65536)).view(shape)

    def scaled(self, shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
        """The dropout multiplier: ``1 / (1 - p)`` where kept, 0 where dropped, in ``dtype``
        (built as bit patterns, so one multiplication applies it)."""
        keep = self.keep(shape, p).numpy()
        width = torch.empty((), dtype=dtype).element_size()
        bits = _UNSIGNED[width]
        pattern = int(torch.tensor(1.0 / (1.0 - p), dtype=dtype).view(_SIGNED[width]).item())
        words = keep.astype(bits) * bits(pattern & (1 << 8 * width) - 1)
        return torch.from_numpy(words).view(dtype)

    def get_state(self) -> dict[str, Any]:
        """The generator's state as plain JSON values."""
        state: dict[str, Any] = dict(self.bits.state)
        return {**state, "state": {"state": [int(w) for w in state["state"]["state"]]}}

    def set_state(self, state: dict[str, Any]) -> None:
        words = np.array(state["state"]["state"], dtype=np.uint64)
        restored: Any = {**state, "state": {"state": words}}
        self.bits.state = restored


_UNSIGNED: dict[int, Any] = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def dropout(x: torch.Tensor, p: float, training: bool, masks: DropoutMasks | None) -> torch.Tensor:
    """Inverted dropout; CPU masks from ``masks`` when given, torch's dropout otherwise."""
    if not training or p == 0.0:
        return x
    if masks is None or x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * masks.scaled(x.shape, p, x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` drawing its CPU masks from a shared :class:`DropoutMasks`."""

    def __init__(self, p: float, masks: DropoutMasks) -> None:
        super().__init__()
        self.p = p
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.masks)


def _written_out_pays(q: torch.Tensor, p: float, masks: DropoutMasks | None) -> bool:
    """Whether the written-out attention beats PyTorch's fused CPU kernel here. With dropout
    the fused kernel is unavailable and PyTorch's fallback draws its masks with ``bernoulli_``.
    When training in bf16 the fused kernel's backward is slow: at B = 256, T = 200, two heads
    of 32 or 64, its forward + backward take about 1.5x the written-out one's (a step 13-18 %
    shorter, ``benchmarks/attention_cpu.py``). The price is precision: under CPU autocast the
    written-out scores and softmax are bf16, where the fused kernel keeps its scores in fp32
    (its attention weights are 2-6x closer to exact; a whole model's gradients differ from fp32
    by about 1.0 % against 0.84 %). Forward alone (inference) and fp32 training stay on the
    fused kernel, which is faster there."""
    if q.device.type != "cpu":
        return False  # the GPU's fused kernels apply dropout themselves
    if p > 0.0 and masks is not None:
        return True
    return q.dtype == torch.bfloat16 and q.requires_grad and torch.is_grad_enabled()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend: torch.Tensor, p: float,
              masks: DropoutMasks | None) -> torch.Tensor:
    """Scaled dot-product attention, ``attend`` (B, 1, 1, T) False at padding keys: PyTorch's
    fused kernel, or on the CPU where it is faster (:func:`_written_out_pays`) the same
    computation written out, with this module's fast dropout masks."""
    if not _written_out_pays(q, p, masks):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
    b, heads, tq, d_head = q.shape
    t = k.shape[2]
    # Padding keys get -inf, added inside the matmul together with the 1/sqrt(d) scale: every
    # pass over a (B, heads, T, T) tensor that can be avoided is.
    mask = torch.zeros(attend.shape, dtype=q.dtype, device=q.device)
    mask = mask.masked_fill(~attend, float("-inf")).expand(b, heads, 1, t).reshape(-1, 1, t)
    scores = torch.baddbmm(mask, q.reshape(-1, tq, d_head), k.reshape(-1, t, d_head).mT,
                           alpha=d_head**-0.5)  # (B * heads, Tq, T)
    probs = torch.softmax(scores, dim=-1)  # bf16 under CPU autocast, as the scores
    if torch.is_autocast_enabled("cpu"):  # the autocast dtype for the matmul with V
        probs = probs.to(torch.get_autocast_dtype("cpu"))
    out = dropout(probs, p, True, masks) @ v.reshape(-1, t, d_head)
    return out.view(b, heads, tq, d_head)


class TransformerBlock(nn.Module):
    """Post-LN block (paper eq. 3-5): ``A = LN(H + Drop(MH(H)))``, ``H' = LN(A + Drop(FFN(A)))``."""

    def __init__(self, config: BERT4RecConfig, masks: DropoutMasks) -> None:
        super().__init__()
        d = config.hidden_size
        self.masks = masks
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(d, config.ffn_size)
        self.ffn_out = nn.Linear(config.ffn_size, d)
        self.norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout, masks)

    def forward(self, h: torch.Tensor, attend: torch.Tensor, last_only: bool = False
                ) -> torch.Tensor:
        """``h``: (B, T, d); ``attend``: (B, 1, 1, T) bool, False at padding keys. With
        ``last_only``, only the last slot attends and goes on: (B, 1, d) out."""
        b, t, d = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d_head)
        if last_only:  # every key and value, one query: the [MASK] slot at inference
            q, h = q[:, :, -1:], h[:, -1:]  # (B, heads, 1, d_head), (B, 1, d)
        a = attention(q, k, v, attend, self.attention_dropout if self.training else 0.0,
                      self.masks)
        a = a.transpose(1, 2).reshape(b, h.shape[1], d)  # (B, T or 1, d)
        h = self.norm1(h + self.dropout(self.out(a)))
        # Exact (erf) GELU, as in the paper and BERT.
        return self.norm2(h + self.dropout(self.ffn_out(F.gelu(self.ffn_in(h)))))


# ----------------------------------------------------------------------------------------------
# Sampled losses. The paper's full softmax needs a (masked positions, num_items) logit matrix per
# batch; with a million items that alone is gigabytes. These losses score the target against K
# negatives drawn once per batch and shared by every masked position, so a step costs
# O(masked positions x K) whatever the catalogue size.


@dataclass(frozen=True)
class NegativeSample:
    """Negatives shared by every masked position of a batch, and how the loss uses them."""

    items: torch.Tensor  # (K,) item ids in 1..num_items, drawn with replacement
    # (K,) log of each draw's expected count, log(K q(item)): the logQ correction of the
    # sampled softmax. None: no correction.
    log_expected: torch.Tensor | None = None
    gbce_beta: float | None = None  # set: gBCE with this beta instead of the sampled softmax


def sampled_softmax_loss(
    target_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    accidental: torch.Tensor,
    log_expected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy over rows (Bengio & Senecal 2008; Jean et al. 2015).

    ``target_logits`` (N,), ``negative_logits`` (N, K) for K negatives drawn with replacement
    from a distribution q, ``accidental`` (N, K) True where a negative is the row's own target:
    those are dropped, so the target never counts against itself. ``log_expected`` (K,) is
    ``log(K q(j))`` of each negative. Subtracting it from the negatives' logits (the logQ
    correction, Bengio & Senecal; Yi et al., RecSys 2019) makes ``sum_k exp(s_k) / (K q(k))``
    an unbiased estimate of the softmax denominator's sum over the other items, so the loss
    tends to the full softmax as K grows (the log of that estimate is biased low, Jensen). The
    target's own logit is exact and is not corrected: it is always in the denominator, not
    drawn. With every item drawn once and no correction, this is the full softmax.
    """
    if log_expected is not None:
        negative_logits = negative_logits - log_expected[None, :]  # (N, K)
    negative_logits = negative_logits.masked_fill(accidental, -math.inf)
    logits = torch.cat([target_logits[:, None], negative_logits], dim=1)  # (N, 1 + K)
    # Summed over at least one row: no masked position is a loss of 0, as the full softmax's.
    return (logits.logsumexp(dim=1) - target_logits).sum() / max(len(target_logits), 1)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gBCE's beta (Petrov & Macdonald, RecSys 2023): ``alpha (t (1 - 1/alpha) +
    1/alpha)`` with the sampling rate ``alpha = K / (num_items - 1)``. ``t = 0`` is plain BCE;
    ``t = 1`` calibrates the scores to the full-softmax probabilities."""
    if num_items < 2:
        raise ValueError("gBCE needs at least two items")
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    target_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    accidental: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Generalised binary cross-entropy of gSASRec (Petrov & Macdonald, RecSys 2023):
    ``-(log sigmoid(s+)^beta + sum_k log(1 - sigmoid(s_k))) / (1 + K)`` per row, then the mean
    over rows. Raising the positive's probability to ``beta < 1`` undoes the overconfidence that
    negative sampling teaches BCE. Shapes and ``accidental`` as :func:`sampled_softmax_loss`;
    an accidental hit adds nothing (the average still divides by 1 + K, as gSASRec's mean)."""
    positive = beta * F.softplus(-target_logits)  # (N,): -log sigmoid(s)^beta
    negative = F.softplus(negative_logits).masked_fill(accidental, 0.0)  # -log(1 - sigmoid(s))
    per_row = (positive + negative.sum(dim=1)) / (1 + negative_logits.shape[1])
    return per_row.sum() / max(len(per_row), 1)  # no masked position: 0, not NaN


class BERT4Rec(nn.Module):
    """Embeddings, L bidirectional blocks and the tied output head."""

    name = "bert4rec"

    def __init__(self, config: BERT4RecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.dropout_masks = DropoutMasks()  # reseeded by the trainer
        # Rows: padding, items 1..n, [MASK].
        self.item_embedding = nn.Embedding(config.num_items + 2, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.embedding_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.embedding_dropout = Dropout(config.hidden_dropout, self.dropout_masks)
        self.blocks = nn.ModuleList(TransformerBlock(config, self.dropout_masks)
                                    for _ in range(config.num_layers))
        # Output head (paper eq. 7): GELU(h W_P + b_P) -> LayerNorm, then E^T + b_O.
        self.head_dense = nn.Linear(d, d)
        self.head_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(config.num_items))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear | nn.Embedding):
            # Truncated normal at +-2 std, as BERT's initializer.
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def device(self) -> torch.device:
        return self.output_bias.device

    def encode(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states (B, T, d) of left-padded token ids (B, T), T <= max_len. With
        ``last_only``, the last slot's only, (B, 1, d): the last block then computes one query
        instead of T (inference reads nothing else), the same numbers for a fraction of the
        work."""
        t = tokens.shape[1]
        positions = torch.arange(self.config.max_len - t, self.config.max_len, device=tokens.device)
        h = self.item_embedding(tokens) + self.position_embedding(positions)[None]  # (B, T, d)
        h = self.embedding_dropout(self.embedding_norm(h))
        attend = (tokens != 0)[:, None, None, :]  # (B, 1, 1, T): padding is never attended to
        for i, block in enumerate(self.blocks):
            h = block(h, attend, last_only=last_only and i == len(self.blocks) - 1)
        return h

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head before the item matrix (paper eq. 7): GELU(h W_P + b_P) -> LayerNorm;
        (N, d) -> (N, d). An item's logit is this dotted with its embedding, plus its bias."""
        return self.head_norm(F.gelu(self.head_dense(hidden)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Item logits (N, num_items) for hidden states (N, d); column j is item j + 1."""
        h = self.head(hidden)
        items = self.item_embedding.weight[1 : self.config.num_items + 1]  # tied, (n, d)
        return h @ items.T + self.output_bias

    def loss(
        self, tokens: torch.Tensor, labels: torch.Tensor, negatives: NegativeSample | None = None
    ) -> torch.Tensor:
        """Mean loss over masked positions only (labels > 0); never a softmax at unmasked
        positions. ``labels`` (B, T) holds the original item where masked, else 0.

        Without ``negatives``: the paper's cross-entropy over every item. With them: the
        sampled softmax (or gBCE) against those items only; no (N, num_items) matrix is built.
        """
        hidden = self.encode(tokens)
        where = labels > 0
        if negatives is None:  # cross-entropy over every item, the logits never all in memory
            items = self.item_embedding.weight[1 : self.config.num_items + 1]  # tied, (n, d)
            return linear_cross_entropy(self.head(hidden[where]), items, self.output_bias,
                                        labels[where] - 1)
        targets = labels[where]  # (N,)
        items = negatives.items
        h = self.head(hidden[where])  # (N, d)
        # One gather for targets and negatives: its backward writes one dense gradient of the
        # tied embedding table, not one per gather (256 MB each for a million items at d = 64).
        rows = self.item_embedding.weight[torch.cat([targets, items])]  # (N + K, d), tied
        bias = self.output_bias[torch.cat([targets, items]) - 1]  # (N + K,)
        n = len(targets)
        # The targets' logits as a batched matmul, so that under autocast they get the same
        # precision as the negatives' (an elementwise product would stay in fp32).
        target_logits = (h[:, None, :] @ rows[:n, :, None])[:, 0, 0] + bias[:n]  # (N,)
        negative_logits = h @ rows[n:].T + bias[n:]  # (N, K)
        accidental = targets[:, None] == items[None, :]  # (N, K)
        if negatives.gbce_beta is not None:
            return gbce_loss(target_logits.float(), negative_logits.float(), accidental,
                             negatives.gbce_beta)
        return sampled_softmax_loss(target_logits.float(), negative_logits.float(), accidental,
                                    negatives.log_expected)

    # ------------------------------------------------------------------------------------------
    # Inference: the recommender contract.

    def inference_tokens(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Left-padded (B, T) tokens: the last ``max_len - 1`` items, then ``[MASK]``."""
        return inference_tokens(histories, self.config.max_len, self.config.mask_id)

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Scores (B, num_items + 1) for the item after each history, on the model's device;
        column 0 is padding."""
        was_training = self.training
        self.eval()
        tokens = self.inference_tokens(histories).to(self.device)
        hidden = self.encode(tokens, last_only=True)[:, -1]  # (B, d): the [MASK] slot
        logits = self.logits(hidden).float()
        self.train(was_training)
        pad = torch.full((len(histories), 1), -math.inf, device=logits.device)
        return torch.cat([pad, logits], dim=1)

    @torch.no_grad()
    def score_chunks(
        self, histories: Sequence[np.ndarray], chunk: int
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """:meth:`score` in column blocks of at most ``chunk`` item ids, for catalogues whose
        (B, num_items + 1) matrix is too large: yields ``(start, block)``, block (B, width)
        float32 on the model's device, column j being item ``start + j`` (id 0, padding, is
        -inf). Concatenated in order, the blocks are ``score(histories)``; a catalogue that fits
        in one chunk gets exactly ``score``. The histories are encoded once."""
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        n = self.config.num_items
        if n + 1 <= chunk:
            yield 0, self.score(histories)
            return
        was_training = self.training
        self.eval()
        tokens = self.inference_tokens(histories).to(self.device)
        query = self.head(self.encode(tokens, last_only=True)[:, -1])  # (B, d): the [MASK] slot
        self.train(was_training)
        weight = self.item_embedding.weight
        for start in range(0, n + 1, chunk):
            stop = min(start + chunk, n + 1)
            first = max(start, 1)  # id 0 is padding, never scored
            block = query @ weight[first:stop].T + self.output_bias[first - 1 : stop - 1]
            block = block.float()  # (B, stop - first)
            if start == 0:
                pad = torch.full((len(histories), 1), -math.inf, device=block.device)
                block = torch.cat([pad, block], dim=1)
            yield start, block

    # Run-directory round trip.
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BERT4Rec:
        model = cls(BERT4RecConfig.from_dict(config))
        model.load_state_dict(tensors)
        model.eval()
        return model

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


def inference_tokens(
    histories: Sequence[np.ndarray], max_len: int, mask_id: int, width: int | None = None
) -> torch.Tensor:
    """Left-padded (B, T) tokens: the last ``max_len - 1`` items of each history, then
    ``[MASK]``. T is the longest such row, or ``width`` (>= it) when given, e.g. ``max_len``
    for an export with a fixed input shape; padding never changes a score."""
    keep = max_len - 1
    clipped = [np.asarray(h, dtype=np.int64)[-keep:] if len(h) else np.zeros(0, np.int64)
               for h in histories]
    t = max(len(h) for h in clipped) + 1 if clipped else 1
    t = max(t, width or 0)
    tokens = np.zeros((len(clipped), t), dtype=np.int64)
    for row, h in enumerate(clipped):
        tokens[row, t - 1 - len(h) : t - 1] = h
    tokens[:, -1] = mask_id
    return torch.from_numpy(tokens)
