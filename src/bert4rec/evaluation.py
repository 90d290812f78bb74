"""Evaluation under the paper's sampled protocol and the honest full-ranking one.

Protocols (``../reference``: Sun et al. 2019, section 4.1; Krichene & Rendle 2020):

* ``full``: the target is ranked against every item; the user's history items are removed
  (the target stays rankable even if it also occurs in the history, a repeat).
* ``popularity``: the paper's protocol; 100 negatives sampled without replacement with
  probability proportional to their interaction count over the whole data set (as the paper's
  code counts), never an item of the user's sequence.
* ``uniform``: 100 negatives sampled uniformly, otherwise the same.

A case's outcome is the number of candidates scored above the target (``greater``) and equal
to it (``ties``). Metrics use the ``expected`` tie rule by default: the exact expectation of
each metric when ties are broken uniformly at random, so a model that scores everything alike
gets chance-level metrics instead of perfect or zero ones. ``pessimistic`` and ``optimistic``
put the target after or before all its ties.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.special import digamma
from tqdm import tqdm

from bert4rec.data import Interactions
from bert4rec.errors import ConfigError
from bert4rec.recommender import ITEM_CHUNK, Recommender, mask_seen, score_blocks
from bert4rec.split import EvalCases, Split, eval_cases

Protocol = Literal["full", "popularity", "uniform"]
PROTOCOLS: tuple[Protocol, ...] = ("full", "popularity", "uniform")
TieRule = Literal["expected", "pessimistic", "optimistic"]
TIE_RULES: tuple[TieRule, ...] = ("expected", "pessimistic", "optimistic")
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")


# ----------------------------------------------------------------------------------------------
# Metrics from rank outcomes


def metrics_from_ranks(
    greater: np.ndarray, ties: np.ndarray, tie_rule: TieRule = "expected",
    names: Sequence[str] = METRICS,
) -> dict[str, np.ndarray]:
    """Per-case metric values from ``greater`` (candidates scored above the target) and ``ties``.

    The 0-based rank is ``greater`` for ``optimistic``, ``greater + ties`` for ``pessimistic``,
    and uniform on ``greater .. greater + ties`` for ``expected``.
    """
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    if tie_rule == "optimistic":
        low, count = greater, np.ones_like(greater)
    elif tie_rule == "pessimistic":
        low, count = greater + ties, np.ones_like(greater)
    elif tie_rule == "expected":
        low, count = greater, ties + 1
    else:
        raise ConfigError(f"unknown tie rule {tie_rule!r}; choose one of {', '.join(TIE_RULES)}")
    high = low + count  # ranks low .. high - 1, each equally likely
    out: dict[str, np.ndarray] = {}
    for name in names:
        kind, _, cut = name.partition("@")
        if kind == "HR":
            k = int(cut)
            out[name] = np.clip(k - low, 0, count) / count
        elif kind == "NDCG":
            k = int(cut)
            gains = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
            out[name] = (gains[np.minimum(high, k)] - gains[np.minimum(low, k)]) / count
        elif kind == "MRR":
            # sum_{r=low}^{high-1} 1/(r+1) = H(high) - H(low), and H(n) = digamma(n+1) + gamma
            out[name] = (digamma(high + 1.0) - digamma(low + 1.0)) / count
        else:
            raise ConfigError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return out


# ----------------------------------------------------------------------------------------------
# Negative sampling


def sample_negatives(
    data: Interactions,
    users: np.ndarray,
    num_negatives: int = 100,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """``num_negatives`` distinct items per user, never one of the user's items, drawn without
    replacement with probability proportional to ``weights`` (uniform if ``None``).

    Successive sampling without replacement, done exactly and cheaply: draw items i.i.d. from
    ``weights``, drop the user's own items, and keep the first occurrences in draw order. The
    k-th kept item is then drawn in proportion to the weights of the items not yet taken, which
    is what sampling without replacement means. Cost grows with ``num_negatives``, not with the
    catalogue.
    """
    if num_negatives < 1:
        raise ConfigError(f"--negatives must be at least 1 (got {num_negatives})")
    num_items = data.num_items
    w = np.ones(num_items + 1) if weights is None else np.array(weights, dtype=np.float64)
    w[0] = 0.0
    cdf = np.cumsum(w)
    total = cdf[-1]
    positive = w > 0
    seen_sets = [np.unique(data.sequence(u)) for u in np.asarray(users).tolist()]
    available = positive.sum() - np.array([positive[s].sum() for s in seen_sets], dtype=np.int64)
    if len(available) and available.min() < num_negatives:
        raise ConfigError(
            f"a user has only {int(available.min())} items left to sample from; "
            f"use at most {int(available.min())} negatives, not {num_negatives}"
        )
    rng = np.random.default_rng(seed)
    out = np.zeros((len(seen_sets), num_negatives), dtype=np.int64)
    excluded = np.zeros(num_items + 1, dtype=bool)
    for row, seen in enumerate(seen_sets):
        excluded[seen] = True
        free = 1.0 - w[seen].sum() / total  # weight share left to draw from
        size = int(1.5 * num_negatives / max(free, 1e-9)) + 32
        kept = np.zeros(0, dtype=np.int64)
        while len(kept) < num_negatives:
            draws = np.searchsorted(cdf, rng.random(size) * total, side="right")
            draws = np.concatenate([kept, draws[~excluded[draws]]])
            _, first = np.unique(draws, return_index=True)
            kept = draws[np.sort(first)]
        out[row] = kept[:num_negatives]
        excluded[seen] = False
    return out


def item_popularity(data: Interactions) -> np.ndarray:
    """Interaction count of every item over the whole data set, index = internal id."""
    return np.bincount(data.items, minlength=data.num_items + 1).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvaluationResult:
    """Mean metrics and the per-user values behind them."""

    protocol: str
    split: str
    metrics: dict[str, float]
    per_user: pd.DataFrame  # user (original id), greater, ties, one column per metric
    tie_rule: str = "expected"
    num_negatives: int | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return len(self.per_user)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "split": self.split,
            "users": self.users,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "tie_rule": self.tie_rule,
        }
        if self.num_negatives is not None:
            out["negatives"] = self.num_negatives
            out["seed"] = self.seed
        out.update(self.extra)
        return out


def rank_outcomes(
    model: Recommender,
    data: Interactions,
    cases: EvalCases,
    protocol: Protocol,
    negatives: np.ndarray | None,
    batch_size: int = 256,
    progress: bool = True,
    item_chunk: int = ITEM_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """``greater`` and ``ties`` of every case, scoring ``batch_size`` histories at a time (and
    ``item_chunk`` items at a time for a model that scores in blocks)."""
    greater = np.zeros(len(cases), dtype=np.int64)
    ties = np.zeros(len(cases), dtype=np.int64)
    bar = tqdm(total=len(cases), desc=f"evaluate ({protocol})", unit="user", delay=2.0,
               disable=None if progress else True, leave=False)
    for start in range(0, len(cases), batch_size):
        rows = slice(start, start + batch_size)
        histories = cases.histories(data.items, rows)
        with torch.inference_mode():
            above, level = count_outcomes(
                model, histories, cases.targets[rows],
                None if negatives is None else negatives[rows], item_chunk,
            )
        greater[rows] = above.cpu().numpy()
        ties[rows] = level.cpu().numpy()
        bar.update(len(histories))
    bar.close()
    return greater, ties


def count_outcomes(
    model: Recommender,
    histories: list[np.ndarray],
    targets: np.ndarray,
    negatives: np.ndarray | None,
    item_chunk: int = ITEM_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``greater`` and ``ties`` (B,) of one batch: against every item but the history's
    (``negatives`` None, the full protocol) or against the (B, m) ``negatives``.

    A catalogue scored in one block is compared at once. Scored in several, the targets' (and
    negatives') scores are picked out of the blocks first, then, under the full protocol, the
    blocks are scored a second time to count: twice the compute, one block of memory.
    """
    blocks = score_blocks(model, histories, item_chunk)
    first = next(blocks)
    scores = first[1]
    if scores.shape[1] == model.num_items + 1:  # the whole catalogue in one block
        scores = scores.float()  # on the model's device
        targets_t = torch.as_tensor(targets, device=scores.device)
        arange = torch.arange(len(histories), device=scores.device)
        target_scores = scores[arange, targets_t].clone()
        if negatives is None:
            scores = mask_seen(scores.clone(), histories)
            scores[arange, targets_t] = -torch.inf  # count the target neither above nor tied
        else:
            scores = scores.gather(1, torch.as_tensor(negatives, device=scores.device))
        return _count(scores, target_scores)
    device = scores.device
    targets_t = torch.as_tensor(targets, device=device)
    arange = torch.arange(len(histories), device=device)
    target_scores = torch.full((len(histories),), torch.nan, device=device)
    negatives_t = None if negatives is None else torch.as_tensor(negatives, device=device)
    negative_scores = None if negatives_t is None else torch.full(
        negatives_t.shape, torch.nan, device=device)
    for offset, block in itertools.chain([first], blocks):
        width = block.shape[1]
        inside = (targets_t >= offset) & (targets_t < offset + width)  # (B,)
        target_scores[inside] = block[arange[inside], targets_t[inside] - offset].float()
        if negatives_t is not None and negative_scores is not None:
            hit = (negatives_t >= offset) & (negatives_t < offset + width)  # (B, m)
            row = arange[:, None].expand_as(negatives_t)
            negative_scores[hit] = block[row[hit], negatives_t[hit] - offset].float()
    if negative_scores is not None:
        return _count(negative_scores, target_scores)
    above = torch.zeros(len(histories), dtype=torch.int64, device=device)
    level = torch.zeros(len(histories), dtype=torch.int64, device=device)
    for offset, block in score_blocks(model, histories, item_chunk):
        width = block.shape[1]
        block = mask_seen(block.float().clone(), histories, offset)
        inside = (targets_t >= offset) & (targets_t < offset + width)
        block[arange[inside], targets_t[inside] - offset] = -torch.inf
        block_above, block_level = _count(block, target_scores)
        above += block_above
        level += block_level
    return above, level


def _count(scores: torch.Tensor, target_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many of each row's ``scores`` are above and equal to its target's score. Summed as
    int32 (a row never holds 2**31 items), which halves the time of the int64 sum on a CPU.

    NaN (a model whose training diverged) never helps: a NaN candidate counts as above the
    target, and a NaN target below every candidate that is not left out (-inf). Otherwise NaN,
    equal to nothing, would rank a broken model's targets first."""
    broken = target_scores.isnan()[:, None]
    threshold = torch.where(broken, -torch.inf, target_scores[:, None])
    above = (scores > threshold) | scores.isnan()
    level = (scores == threshold) & ~broken
    return above.sum(dim=1, dtype=torch.int32), level.sum(dim=1, dtype=torch.int32)


def check_valid_users(count: object, name: str = "valid_users") -> None:
    """Refuse a ``valid_users`` setting that is not a whole number >= 1 (None means all);
    ``name`` is what the message calls it (a command's flag, where one gave it)."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 1):
        raise ConfigError(f"{name} must be a whole number >= 1 (or left out for all "
                          f"users), not {count!r}")


def validation_users(data: Interactions, count: int | None, seed: int) -> np.ndarray | None:
    """``count`` users with a validation case, drawn once with ``seed`` and sorted, for
    validating on a fixed share of a large data set; None (all users) when ``count`` is None
    or covers them all."""
    check_valid_users(count)
    if count is None:
        return None
    users = eval_cases(data, "valid").users
    if count >= len(users):
        return None
    pick = np.random.default_rng(seed).choice(len(users), count, replace=False)
    return np.sort(users[pick])


def evaluate(
    model: Recommender,
    data: Interactions,
    split: Split = "test",
    protocol: Protocol = "full",
    num_negatives: int = 100,
    seed: int = 0,
    tie_rule: TieRule = "expected",
    batch_size: int = 256,
    progress: bool = True,
    users: np.ndarray | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` on the leave-one-out ``split`` of ``data`` under ``protocol``;
    ``users`` (internal indices) restricts it to those users' cases."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if tie_rule not in TIE_RULES:
        raise ConfigError(f"unknown tie rule {tie_rule!r}; choose one of {', '.join(TIE_RULES)}")
    if model.num_items != data.num_items:
        raise ConfigError(
            f"the model knows {model.num_items} items but the data has {data.num_items}"
        )
    cases = eval_cases(data, split)
    if users is not None:
        keep = np.isin(cases.users, users)
        cases = EvalCases(users=cases.users[keep], targets=cases.targets[keep],
                          starts=cases.starts[keep], ends=cases.ends[keep])
    negatives = None
    if protocol != "full":
        weights = item_popularity(data) if protocol == "popularity" else None
        negatives = sample_negatives(data, cases.users, num_negatives, weights, seed=seed)
    greater, ties = rank_outcomes(model, data, cases, protocol, negatives, batch_size, progress)
    values = metrics_from_ranks(greater, ties, tie_rule)
    per_user = pd.DataFrame({"user": data.user_ids[cases.users], "greater": greater, "ties": ties})
    for name, column in values.items():
        per_user[name] = column
    metrics = {name: float(column.mean()) if len(column) else 0.0
               for name, column in values.items()}
    return EvaluationResult(
        protocol=protocol, split=split, metrics=metrics, per_user=per_user, tie_rule=tie_rule,
        num_negatives=None if protocol == "full" else num_negatives,
        seed=None if protocol == "full" else seed,
    )


# ----------------------------------------------------------------------------------------------
# Comparing two models on the same cases


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):  # one resample at a time keeps memory flat for large n
        means[i] = values[rng.integers(0, len(values), len(values))].mean()
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


@dataclass(frozen=True)
class PairedComparison:
    metric: str
    mean_a: float
    mean_b: float
    difference: float  # mean of a - b
    ci_low: float
    ci_high: float
    t_pvalue: float
    wilcoxon_pvalue: float
    users: int


def compare(
    a: EvaluationResult, b: EvaluationResult, metric: str = "NDCG@10",
    confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
) -> PairedComparison:
    """Paired comparison of two results on the same users: bootstrap CI of the mean difference,
    paired t-test and Wilcoxon signed-rank p-values. Both must come from the same protocol,
    split and tie rule, and sampled results from the same negatives (count and seed)."""
    if a.protocol != b.protocol or a.split != b.split:
        raise ConfigError("compare results of the same protocol and split")
    if a.tie_rule != b.tie_rule:
        raise ConfigError(f"compare results of the same tie rule, not {a.tie_rule!r} and "
                          f"{b.tie_rule!r}")
    if (a.num_negatives, a.seed) != (b.num_negatives, b.seed):
        raise ConfigError("compare sampled results drawn with the same negatives: these used "
                          f"{a.num_negatives} (seed {a.seed}) and {b.num_negatives} "
                          f"(seed {b.seed})")
    merged = a.per_user[["user", metric]].merge(
        b.per_user[["user", metric]], on="user", suffixes=("_a", "_b"), validate="one_to_one"
    )
    if len(merged) != len(a.per_user) or len(merged) != len(b.per_user):
        raise ConfigError("the two results cover different users")
    x = merged[f"{metric}_a"].to_numpy()
    y = merged[f"{metric}_b"].to_numpy()
    diff = x - y
    low, high = bootstrap_ci(diff, confidence, resamples, seed)
    if np.allclose(diff, 0.0):
        t_p = w_p = 1.0
    else:
        t_p = float(stats.ttest_rel(x, y).pvalue)
        w_p = float(stats.wilcoxon(x, y, zero_method="zsplit").pvalue)
    return PairedComparison(
        metric=metric, mean_a=float(x.mean()), mean_b=float(y.mean()),
        difference=float(diff.mean()), ci_low=low, ci_high=high,
        t_pvalue=t_p if not math.isnan(t_p) else 1.0, wilcoxon_pvalue=w_p, users=len(diff),
    )
