"""Why did BERT4Rec recommend this item? Four kinds of evidence about one (history, item) pair.

* **Counterfactual (leave-one-out)**: remove each history item in turn and score again. The
  drop in the item's score and its new rank are what the model actually does without that item:
  this is the strongest evidence here. All ``n`` variants go through the model in one batched
  forward pass.
* **Minimal counterfactual set (greedy)**: the items whose joint removal pushes the item out of
  the top-k, grown one item at a time, each step taking the removal that lowers the item's
  margin to the top-k most (one batched forward pass per step). Greedy: the set is small, not
  proven smallest.
* **Attention**: the weights from the ``[MASK]`` slot to the history, per layer and head, and
  attention rollout (Abnar & Zuidema, ACL 2020). Attention says where the model looked, not
  what changed its answer; it is weaker evidence than the counterfactual and labelled so.
* **Gradient x input**: the item score's gradient with respect to each input item embedding,
  dotted with that embedding; a first-order (local, linear) estimate of each item's effect.

Ranks are among the items the user has not seen: every item of the *original* history stays
excluded while items are removed from the model's input, since the user has still seen them;
only the evidence the model gets changes. Rank 1 is best; ties count in the item's favour.

Histories are internal item ids, oldest first. The model sees only the last ``max_len - 1``
items; explanations cover those (``explain`` reports how many older items it left out), and
positions count from the oldest item it sees. Removing an item takes it out of the whole
history, so when there are older items one of them moves into the window, as it would for
the user's history without that item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from bert4rec.errors import DataError
from bert4rec.model import BERT4Rec, TransformerBlock

if TYPE_CHECKING:
    from bert4rec.runs import RunInfo

COUNTERFACTUAL_NOTE = (
    "counterfactual: the model scored again without each history item; score_drop and "
    "rank_without are what it actually does without that item"
)
GREEDY_NOTE = (
    "greedy search: items removed one at a time, each step the one that lowers the item's margin "
    "to the top-k most; a small set that drops the item out of the top-k, not proven smallest"
)
ATTENTION_NOTE = (
    "attention shows where the [MASK] slot looked, not what changed the recommendation; weaker "
    "evidence than the counterfactual. Rollout (Abnar & Zuidema 2020) averages heads and adds "
    "the residual identity at each layer"
)
GRADIENT_NOTE = (
    "gradient x input: the score's gradient w.r.t. each input item embedding, dotted with it; "
    "a local linear estimate, not a removal"
)
NOTES = {"counterfactual": COUNTERFACTUAL_NOTE, "gradient_x_input": GRADIENT_NOTE,
         "attention": ATTENTION_NOTE, "counterfactual_set": GREEDY_NOTE}


# ----------------------------------------------------------------------------------------------
# Scoring many variants of one history at once.


def _check_model(model: Any) -> BERT4Rec:
    if not isinstance(model, BERT4Rec):
        name = getattr(model, "name", type(model).__name__)
        raise DataError(f"explanations need a bert4rec run; this run's model is {name!r}")
    return model


def visible(model: BERT4Rec, history: np.ndarray) -> np.ndarray:
    """The part of ``history`` the model sees: its last ``max_len - 1`` items."""
    return np.asarray(history, dtype=np.int64)[-(model.config.max_len - 1) :]


def _mask_scores(
    model: BERT4Rec, histories: Sequence[np.ndarray], precision: str = "fp32"
) -> torch.Tensor:
    """Item scores (B, num_items + 1) of ``histories`` in one forward pass, as
    :meth:`BERT4Rec.score` gives them (tests check it); column 0 is -inf. Shorter histories
    are left-padded, which changes no score."""
    tokens = model.inference_tokens(histories).to(model.device)
    with torch.inference_mode(), _autocast(model, precision):
        # Only the [MASK] slot's output is scored, so the last layer computes that slot alone.
        hidden = _forward(model, tokens, last_only=True, need_weights=False)[0][:, -1]  # (B, d)
        logits = model.logits(hidden).float()  # (B, n)
    pad = torch.full((len(histories), 1), -math.inf, device=logits.device)
    return torch.cat([pad, logits], dim=1)


def _autocast(model: BERT4Rec, precision: str) -> Any:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    return torch.autocast(model.device.type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


def _rank_and_margin(
    scores: torch.Tensor, exclude: np.ndarray, item: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score, rank and top-k margin of ``item`` in each row of ``scores`` (B, n + 1).

    Items of ``exclude`` (the original history) are never ranked. Rank = 1 + the number of
    eligible items scoring strictly higher. The margin is the item's score minus the k-th best
    score of the other eligible items: the item is in the top-k exactly when it is >= 0.
    """
    scores = scores.clone()
    scores[:, torch.as_tensor(exclude, device=scores.device)] = -math.inf
    target = scores[:, item].clone()  # (B,)
    rank = 1 + (scores > target[:, None]).sum(dim=1)
    scores[:, item] = -math.inf
    others = min(k, scores.shape[1] - 1)
    kth = torch.topk(scores, others, dim=1).values[:, -1]  # (B,)
    return target.cpu().numpy(), rank.cpu().numpy(), (target - kth).cpu().numpy()


def _excluded(history: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    return history if exclude is None else np.asarray(exclude, dtype=np.int64)


def _window(model: BERT4Rec, history: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The whole history as int64, the index in it of the oldest item the model sees, and how
    many items the model sees."""
    full = np.asarray(history, dtype=np.int64)
    start = max(len(full) - (model.config.max_len - 1), 0)
    return full, start, len(full) - start


def _without(history: np.ndarray, removed: Sequence[int], start: int = 0) -> np.ndarray:
    """``history`` without window positions ``removed`` (position 0 = index ``start``)."""
    keep = np.ones(len(history), dtype=bool)
    keep[[start + i for i in removed]] = False
    return history[keep]


def removal_ranks(
    model: BERT4Rec,
    history: np.ndarray,
    item: int,
    removals: Sequence[Sequence[int]],
    k: int = 10,
    precision: str = "fp32",
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and rank of ``item`` after removing each set of window positions in ``removals``
    from ``history``, in one forward pass (sets of different sizes are padded, which never
    changes a score): ``(scores, ranks)``, each (len(removals),). ``exclude`` (default: the
    whole history) is never ranked."""
    model = _check_model(model)
    full, start, _ = _window(model, history)
    variants = [_without(full, r, start) for r in removals]
    scores = _mask_scores(model, variants, precision)
    score, rank, _ = _rank_and_margin(scores, _excluded(full, exclude), item, k)
    return score, rank


# ----------------------------------------------------------------------------------------------
# Counterfactual: leave one out, and the greedy set.


@dataclass(frozen=True)
class LeaveOneOut:
    """The item's score and rank with the whole history, and without each of its items."""

    score: float
    rank: int
    scores_without: np.ndarray  # (n,) float32: score without history position i
    ranks_without: np.ndarray  # (n,) int64
    k: int

    @property
    def score_drops(self) -> np.ndarray:
        """(n,): how much removing each item lowers the score (negative: it raises it)."""
        return self.score - self.scores_without

    @property
    def leaves_top_k(self) -> np.ndarray:
        """(n,) bool: removing this item alone drops the item out of the top-k (never true for
        an item outside the top-k already)."""
        return (self.rank <= self.k) & (self.ranks_without > self.k)


def leave_one_out(
    model: BERT4Rec,
    history: np.ndarray,
    item: int,
    k: int = 10,
    precision: str = "fp32",
    exclude: np.ndarray | None = None,
) -> LeaveOneOut:
    """Score and rank of ``item`` (internal id) for ``history`` and for each of the ``n``
    histories that miss one of the items the model sees, in one forward pass over a batch of
    ``n + 1`` histories. ``exclude`` (default: the whole history) is never ranked."""
    model = _check_model(model)
    full, start, n = _window(model, history)
    if n == 0:
        raise DataError("the history is empty: there is nothing to remove")
    # Row 0 is the whole history; where it fits the window, it is padded by one slot, which
    # never changes a score, and the other n rows then need no padding at all.
    variants = [full, *(_without(full, [i], start) for i in range(n))]
    scores = _mask_scores(model, variants, precision)
    score, rank, _ = _rank_and_margin(scores, _excluded(full, exclude), item, k)
    return LeaveOneOut(score=float(score[0]), rank=int(rank[0]),
                       scores_without=score[1:].astype(np.float32),
                       ranks_without=rank[1:].astype(np.int64), k=k)


@dataclass(frozen=True)
class GreedyStep:
    """One greedy step: the position removed, and the item's score and rank after it."""

    position: int
    score: float
    rank: int


@dataclass(frozen=True)
class GreedySet:
    """The greedily grown removal set. ``found``: removing ``positions`` drops the item out of
    the top-k. Not found: the steps ran out first (``positions`` then holds every step)."""

    found: bool
    positions: list[int]
    steps: list[GreedyStep]
    k: int


def greedy_counterfactual(
    model: BERT4Rec,
    history: np.ndarray,
    item: int,
    k: int = 10,
    max_steps: int = 10,
    stop_when_found: bool = True,
    precision: str = "fp32",
    exclude: np.ndarray | None = None,
) -> GreedySet:
    """Grow a set of history positions whose removal drops ``item`` out of the top-k, one
    position per step: each step scores every remaining single removal in one batched forward
    pass and keeps the one with the smallest margin to the top-k (ties: the lower score).

    With ``stop_when_found=False`` it runs ``max_steps`` steps (a deletion curve).
    Positions are window positions; ``exclude`` (default: the whole history) is never ranked."""
    model = _check_model(model)
    full, start, n = _window(model, history)
    exclude = _excluded(full, exclude)
    removed: list[int] = []
    steps: list[GreedyStep] = []
    _, _, margin = _rank_and_margin(_mask_scores(model, [full], precision), exclude, item, k)
    found = bool(margin[0] < 0)  # already outside the top-k: the empty set does it
    for _ in range(min(max_steps, n)):
        if found and stop_when_found:
            break
        remaining = [i for i in range(n) if i not in removed]
        variants = [_without(full, [*removed, i], start) for i in remaining]
        scores = _mask_scores(model, variants, precision)
        score, rank, margin = _rank_and_margin(scores, exclude, item, k)
        best = int(np.lexsort((score, margin))[0])
        removed.append(remaining[best])
        steps.append(GreedyStep(position=remaining[best], score=float(score[best]),
                                rank=int(rank[best])))
        found = found or bool(margin[best] < 0)
    return GreedySet(found=found, positions=removed, steps=steps, k=k)


# ----------------------------------------------------------------------------------------------
# The model's forward pass, written out: attention weights on request, and the last layer
# computed for the [MASK] slot only.


def _block(
    block: TransformerBlock, h: torch.Tensor, attend: torch.Tensor, last_only: bool,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:meth:`TransformerBlock.forward` in eval mode (no dropout). ``last_only``: only the
    last query (the [MASK] slot) is computed, (B, T, d) -> (B, 1, d); every key is still used.
    ``need_weights``: an explicit softmax whose weights (B, heads, T_q, T) are returned."""
    b, t, d = h.shape
    heads = block.num_heads
    q, k, v = block.qkv(h).view(b, t, 3, heads, d // heads).unbind(2)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d_head)
    if last_only:
        q, h = q[:, :, -1:], h[:, -1:]  # (B, heads, 1, d_head), (B, 1, d)
    weights = None
    if need_weights:
        logits = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # (B, heads, T_q, T)
        weights = logits.masked_fill(~attend, -math.inf).softmax(dim=-1)
        a = weights.to(v.dtype) @ v  # (B, heads, T_q, d_head)
    else:
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    a = a.transpose(1, 2).reshape(b, h.shape[1], d)  # (B, T_q, d)
    h = block.norm1(h + block.out(a))
    return block.norm2(h + block.ffn_out(F.gelu(block.ffn_in(h)))), weights


def _forward(
    model: BERT4Rec,
    tokens: torch.Tensor,
    last_only: bool,
    need_weights: bool,
    item_vectors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:meth:`BERT4Rec.encode` in eval mode whatever the module's mode (no dropout, no state
    touched, so it is safe beside other requests): hidden states (B, T, d), or (B, 1, d) of the
    last slot with ``last_only`` (the last layer then runs one query, not T); the attention
    weights of each layer with ``need_weights``. ``item_vectors`` (B, T, d) replaces the item
    embeddings of ``tokens`` (to differentiate with respect to them)."""
    config = model.config
    t = tokens.shape[1]
    positions = torch.arange(config.max_len - t, config.max_len, device=tokens.device)
    if item_vectors is None:
        item_vectors = model.item_embedding(tokens)  # (B, T, d)
    h = item_vectors + model.position_embedding(positions)[None]  # (B, T, d)
    h = model.embedding_norm(h)
    attend = (tokens != 0)[:, None, None, :]  # (B, 1, 1, T)
    weights: list[torch.Tensor] = []
    blocks = list(model.blocks)
    for depth, block in enumerate(blocks):
        top = last_only and depth == len(blocks) - 1
        h, w = _block(block, h, attend, top, need_weights)  # type: ignore[arg-type]
        if w is not None:
            weights.append(w)
    return h, weights


def encode_with_attention(
    model: BERT4Rec, tokens: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model.encode`` in eval mode with the attention weights written out: the hidden states
    (B, T, d) and, per layer, the weights (B, heads, T, T) (row: query, column: key).

    It repeats :class:`~bert4rec.model.TransformerBlock`'s math with an explicit softmax instead
    of the fused kernel, which never materialises the weights; tests check it gives the same
    scores as the model."""
    return _forward(_check_model(model), tokens, last_only=False, need_weights=True)


def attention_rollout(weights: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020) of one sequence's weights (L, heads, T, T):
    per layer the heads' mean ``A``, the residual added as ``0.5 A + 0.5 I`` and rows
    renormalised, then the layers multiplied from the first up. Returns (T, T); row ``q`` is how
    much each input token flows into position ``q`` at the top, and sums to 1.

    ``keys`` (T,) bool marks real tokens; padding rows and columns are dropped from the identity
    so that no flow goes to padding."""
    layers, _, t, _ = weights.shape
    eye = torch.eye(t, dtype=weights.dtype, device=weights.device)
    if keys is not None:
        eye = eye * keys[None, :].to(weights.dtype)
    flow = eye
    for layer in range(layers):
        a = 0.5 * weights[layer].mean(dim=0) + 0.5 * eye  # (T, T)
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        flow = a @ flow  # (T, T): input tokens into the output of this layer
    return flow


@dataclass(frozen=True)
class AttentionMaps:
    """Attention from the ``[MASK]`` slot, over the ``n`` visible history positions."""

    weights: np.ndarray  # (layers, heads, n): each (layer, head) row plus mask_self sums to 1
    mask_self: np.ndarray  # (layers, heads): weight of [MASK] on itself
    rollout: np.ndarray  # (n,): rollout from [MASK] to each history item
    rollout_mask_self: float  # the rollout's share left on [MASK] itself; all of it sums to 1

    @property
    def last_layer_mean(self) -> np.ndarray:
        """(n,): the last layer's weights from [MASK], averaged over heads."""
        return self.weights[-1].mean(axis=0)


@torch.no_grad()
def attention_maps(model: BERT4Rec, history: np.ndarray) -> AttentionMaps:
    """Per-layer, per-head attention from ``[MASK]`` to ``history``, and its rollout."""
    model = _check_model(model)
    history = visible(model, history)
    was_training = model.training
    model.eval()
    tokens = model.inference_tokens([history]).to(model.device)  # (1, n + 1), no padding
    hidden, weights = encode_with_attention(model, tokens)
    # The written-out forward must be the model's own: checked on every call, it costs one
    # more forward pass of one sequence.
    fused = model.encode(tokens)
    assert torch.allclose(hidden, fused, atol=1e-4, rtol=1e-4), "explicit attention diverged"
    model.train(was_training)
    stacked = torch.stack([w[0] for w in weights]).float()  # (L, heads, T, T)
    rollout = attention_rollout(stacked)[-1]  # (T,): into [MASK]
    last = stacked[:, :, -1, :].cpu().numpy()  # (L, heads, T)
    return AttentionMaps(weights=last[:, :, :-1], mask_self=last[:, :, -1],
                         rollout=rollout[:-1].cpu().numpy(),
                         rollout_mask_self=float(rollout[-1]))


# ----------------------------------------------------------------------------------------------
# Gradient x input.


def gradient_x_input(model: BERT4Rec, history: np.ndarray, item: int) -> np.ndarray:
    """(n,): for each history position, the gradient of ``item``'s score with respect to that
    position's item embedding, dotted with the embedding (Shrikumar et al. 2016; the position
    embedding is left out, as it is not what removing the item takes away)."""
    model = _check_model(model)
    history = visible(model, history)
    # Gradients need autograd on, also when the caller runs under inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        tokens = model.inference_tokens([history]).to(model.device)  # (1, n + 1)
        vectors = model.item_embedding(tokens).detach().requires_grad_(True)  # (1, n + 1, d)
        hidden = _forward(model, tokens, last_only=True, need_weights=False,
                          item_vectors=vectors)[0][:, -1]  # (1, d)
        score = model.logits(hidden)[0, item - 1]
        (grad,) = torch.autograd.grad(score, vectors)
    return (grad[0, :-1] * vectors[0, :-1].detach()).sum(dim=-1).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# The whole explanation, in original ids and titles.


@dataclass(frozen=True)
class HistoryItem:
    """One history position and the evidence about it."""

    position: int  # 0 = the oldest item the model sees
    item: Any  # original id
    title: str | None
    score_drop: float  # counterfactual: score with the history minus score without this item
    rank_without: int  # counterfactual: the item's rank without this history item
    leaves_top_k: bool  # counterfactual: removing this item alone drops it out of the top-k
    gradient_x_input: float
    attention_rollout: float  # attention (weaker evidence)
    attention_last_layer: float  # attention: last layer, mean over heads


@dataclass(frozen=True)
class CounterfactualSet:
    """The greedy minimal counterfactual set, in original ids."""

    method: str  # always "greedy"
    found: bool
    positions: list[int]
    items: list[Any]
    titles: list[str | None]
    ranks: list[int]  # the item's rank after each removal step
    note: str = GREEDY_NOTE


@dataclass(frozen=True)
class AttentionEvidence:
    """Attention from [MASK] to the history; not counterfactual evidence."""

    weights: list[list[list[float]]]  # (layers, heads, history positions)
    mask_self: list[list[float]]  # (layers, heads)
    rollout: list[float]  # (history positions,)
    note: str = ATTENTION_NOTE


@dataclass(frozen=True)
class Explanation:
    """Why ``item`` is recommended after ``history``; :meth:`to_dict` is JSON-ready."""

    item: Any
    title: str | None
    score: float
    rank: int
    k: int
    history: list[HistoryItem]
    counterfactual_set: CounterfactualSet
    attention: AttentionEvidence
    skipped: list[Any] = field(default_factory=list)  # unknown to the model, left out
    truncated: int = 0  # older items beyond the model's window, left out
    notes: dict[str, str] = field(default_factory=lambda: dict(NOTES))

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    """Numpy scalars to Python ones, recursively, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def explain(
    model: Any,
    info: RunInfo,
    history: Sequence[Any],
    item: Any = None,
    k: int = 10,
    max_steps: int = 10,
    precision: str = "fp32",
) -> Explanation:
    """Explain the recommendation of ``item`` (an original id; None: the top-1
    recommendation) after ``history`` (original ids, oldest first) for a loaded run
    (``model, info = load_model(run_dir)``).

    Unknown history items are skipped and listed in ``skipped``. Raises
    :class:`~bert4rec.errors.DataError` for an empty history (after skipping), an item the
    model does not know, an item inside the history, a history holding every item (nothing
    is recommended), or ``k < 1``."""
    model = _check_model(model)
    if k < 1:
        raise DataError("k must be at least 1")
    if not len(history):
        raise DataError("the history is empty; an explanation needs at least one item")
    encoded, skipped = info.vocab.encode(list(history))
    if not len(encoded):
        what = f" (unknown: {' '.join(map(str, skipped))})" if skipped else ""
        raise DataError(f"the history has no item the model knows{what}; "
                        "an explanation needs at least one")
    seen = visible(model, encoded)
    truncated = len(encoded) - len(seen)
    if item is None:  # the top-1, scored as the explanation scores (same precision)
        scores = _mask_scores(model, [encoded], precision)[0]
        scores[torch.as_tensor(encoded, device=scores.device)] = -math.inf
        target = int(torch.argmax(scores))
        if not math.isfinite(float(scores[target])) or target == 0:
            raise DataError("every item the model knows is in the history; nothing is "
                            "recommended, so there is nothing to explain")
    else:
        found, _ = info.vocab.encode([item])
        if not len(found):
            raise DataError(f"item {item!r} is not known to the model; "
                            "pick an item of the run's vocabulary")
        target = int(found[0])
        if target in set(encoded.tolist()):
            raise DataError(f"item {item!r} is in the history; explanations are for items "
                            "the model would recommend, which exclude the history")
    loo = leave_one_out(model, encoded, target, k, precision)
    greedy = greedy_counterfactual(model, encoded, target, k, max_steps, precision=precision)
    attention = attention_maps(model, seen)
    gradient = gradient_x_input(model, seen, target)
    originals = info.vocab.decode(seen)
    titles = [info.titles.get(o) for o in originals]
    rows = [
        HistoryItem(position=i, item=originals[i], title=titles[i],
                    score_drop=float(loo.score_drops[i]), rank_without=int(loo.ranks_without[i]),
                    leaves_top_k=bool(loo.leaves_top_k[i]),
                    gradient_x_input=float(gradient[i]),
                    attention_rollout=float(attention.rollout[i]),
                    attention_last_layer=float(attention.last_layer_mean[i]))
        for i in range(len(seen))
    ]
    cf_set = CounterfactualSet(
        method="greedy", found=greedy.found, positions=greedy.positions,
        items=[originals[p] for p in greedy.positions],
        titles=[titles[p] for p in greedy.positions], ranks=[s.rank for s in greedy.steps])
    original = info.vocab.decode(np.asarray([target]))[0]
    notes = dict(NOTES)
    if loo.rank > k:
        notes["rank"] = (f"the item ranks {loo.rank}, outside the top-{k}: no removal can drop "
                         "it out, and the counterfactual set is empty")
    return Explanation(
        item=original, title=info.titles.get(original), score=loo.score, rank=loo.rank, k=k,
        history=rows, counterfactual_set=cf_set,
        attention=AttentionEvidence(weights=attention.weights.tolist(),
                                    mask_self=attention.mask_self.tolist(),
                                    rollout=attention.rollout.tolist()),
        skipped=list(skipped), truncated=truncated, notes=notes)
