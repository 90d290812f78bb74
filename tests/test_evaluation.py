"""Metrics against hand-computed values, the three protocols end to end with hand-made models,
negative sampling, and paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions, prepare_frame
from bert4rec.errors import ConfigError
from bert4rec.evaluation import (
    METRICS,
    EvaluationResult,
    bootstrap_ci,
    compare,
    evaluate,
    item_popularity,
    metrics_from_ranks,
    sample_negatives,
)
from bert4rec.evaluation import Protocol as EvalProtocol
from bert4rec.recommender import Recommender
from bert4rec.split import Split, eval_cases, train_sequences


def metrics_of(greater: int, ties: int, tie_rule: str = "expected") -> dict[str, float]:
    values = metrics_from_ranks(np.array([greater]), np.array([ties]), tie_rule)  # type: ignore[arg-type]
    return {name: float(v[0]) for name, v in values.items()}


def harmonic(n: int) -> float:
    return sum(1.0 / r for r in range(1, n + 1))


class KnowsTheTest:
    """Scores each test case's target 1 and everything else 0 (looked up by history)."""

    def __init__(self, data: Interactions) -> None:
        self._num_items = data.num_items
        cases = eval_cases(data, "test")
        histories = cases.histories(data.items, slice(None))
        self.target = {tuple(h.tolist()): int(t) for h, t in zip(histories, cases.targets,
                                                                 strict=True)}
        assert len(self.target) == len(cases)

    @property
    def num_items(self) -> int:
        return self._num_items

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        scores = torch.zeros(len(histories), self._num_items + 1)
        for row, history in enumerate(histories):
            scores[row, self.target[tuple(np.asarray(history).tolist())]] = 1.0
        return scores


# ----------------------------------------------------------------------------------------------
# Metrics from ranks, computed by hand


@pytest.mark.parametrize("tie_rule", ["expected", "pessimistic", "optimistic"])
def test_target_first_scores_one_everywhere(tie_rule: str) -> None:
    assert metrics_of(0, 0, tie_rule) == {name: 1.0 for name in METRICS}


@pytest.mark.parametrize("tie_rule", ["expected", "pessimistic", "optimistic"])
def test_three_items_above(tie_rule: str) -> None:
    assert metrics_of(3, 0, tie_rule) == pytest.approx({
        "HR@1": 0.0, "HR@5": 1.0, "HR@10": 1.0,
        "NDCG@5": 1 / math.log2(5), "NDCG@10": 1 / math.log2(5), "MRR": 1 / 4,
    })


def test_one_tie_expected_averages_both_ranks() -> None:
    assert metrics_of(0, 1, "expected") == pytest.approx({
        "HR@1": 0.5, "HR@5": 1.0, "HR@10": 1.0,
        "NDCG@5": (1 + 1 / math.log2(3)) / 2, "NDCG@10": (1 + 1 / math.log2(3)) / 2,
        "MRR": (1 + 1 / 2) / 2,
    })


def test_one_tie_pessimistic_and_optimistic() -> None:
    assert metrics_of(0, 1, "pessimistic") == pytest.approx({
        "HR@1": 0.0, "HR@5": 1.0, "HR@10": 1.0,
        "NDCG@5": 1 / math.log2(3), "NDCG@10": 1 / math.log2(3), "MRR": 1 / 2,
    })
    assert metrics_of(0, 1, "optimistic") == {name: 1.0 for name in METRICS}


def test_ties_straddling_the_cutoff() -> None:
    # Ranks 2..6 (0-based) equally likely: three of five fall inside the top 5.
    assert metrics_of(2, 4, "expected") == pytest.approx({
        "HR@1": 0.0, "HR@5": 3 / 5, "HR@10": 1.0,
        "NDCG@5": (1 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(6)) / 5,
        "NDCG@10": sum(1 / math.log2(r + 2) for r in range(2, 7)) / 5,
        "MRR": (1 / 3 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 7) / 5,
    })
    assert metrics_of(2, 4, "pessimistic")["HR@5"] == 0.0
    assert metrics_of(2, 4, "optimistic")["HR@5"] == 1.0


def test_ten_items_above_is_outside_the_top_ten() -> None:
    values = metrics_of(10, 0)

    assert values["HR@10"] == 0.0
    assert values["NDCG@10"] == 0.0
    assert values["MRR"] == pytest.approx(1 / 11)


def test_expected_rule_is_the_mean_over_tied_ranks() -> None:
    rng = np.random.default_rng(0)
    greater = rng.integers(0, 15, size=50)
    ties = rng.integers(0, 8, size=50)

    expected = metrics_from_ranks(greater, ties, "expected")

    for case in range(50):
        ranks = range(greater[case], greater[case] + ties[case] + 1)
        by_rank = [metrics_of(r, 0, "optimistic") for r in ranks]
        for name in METRICS:
            mean = sum(m[name] for m in by_rank) / len(by_rank)
            assert expected[name][case] == pytest.approx(mean), (name, case)


def test_unknown_tie_rule_and_metric() -> None:
    with pytest.raises(ConfigError, match="unknown tie rule 'random'"):
        metrics_from_ranks(np.array([0]), np.array([0]), "random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown metric 'AUC'"):
        metrics_from_ranks(np.array([0]), np.array([0]), names=["AUC"])


# ----------------------------------------------------------------------------------------------
# Evaluation end to end with hand-made models


def test_hand_made_models_follow_the_protocol(oracle: type, constant: type,
                                              tiny: Interactions) -> None:
    assert isinstance(oracle(tiny), Recommender)
    assert isinstance(constant(6), Recommender)


@pytest.mark.parametrize("protocol", ["full", "popularity", "uniform"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_model_that_knows_the_next_item_is_perfect(
    oracle: type, tiny: Interactions, protocol: EvalProtocol, split: Split
) -> None:
    result = evaluate(oracle(tiny), tiny, split=split, protocol=protocol, num_negatives=1,
                      progress=False)

    assert result.metrics == {name: 1.0 for name in METRICS}
    assert result.per_user["user"].tolist() == ["alice", "bob", "dave"]
    assert result.per_user["greater"].tolist() == [0, 0, 0]
    assert result.per_user["ties"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("protocol", ["full", "popularity", "uniform"])
def test_history_items_are_not_candidates(
    oracle: type, tiny: Interactions, protocol: EvalProtocol
) -> None:
    class HistoryFirst(oracle):
        def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
            scores = super().score(histories)
            for row, history in enumerate(histories):
                scores[row, torch.as_tensor(np.asarray(history, dtype=np.int64))] = 10.0
            return scores

    # dave's validation target b is also in his history (b c | b): a repeat stays rankable.
    for split in ("valid", "test"):
        result = evaluate(HistoryFirst(tiny), tiny, split=split, protocol=protocol,
                          num_negatives=1, progress=False)
        assert result.metrics["HR@1"] == 1.0


def test_constant_model_full_ranking_is_chance_level(
    constant: type, tiny: Interactions
) -> None:
    result = evaluate(constant(tiny.num_items), tiny, split="test", progress=False)

    # Candidates: 6 items minus the history (the target stays): alice 2, bob 3, dave 4.
    assert result.per_user["greater"].tolist() == [0, 0, 0]
    assert result.per_user["ties"].tolist() == [1, 2, 3]
    assert result.metrics["HR@1"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert result.metrics["HR@10"] == 1.0
    assert result.metrics["MRR"] == pytest.approx(
        (harmonic(2) / 2 + harmonic(3) / 3 + harmonic(4) / 4) / 3
    )


@pytest.mark.parametrize("protocol", ["full", "popularity"])
def test_a_model_scoring_nan_ranks_last_not_first(
    constant: type, medium: Interactions, protocol: EvalProtocol
) -> None:
    class Diverged(constant):  # what a model whose training blew up returns
        def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
            return torch.full((len(histories), self.num_items + 1), torch.nan)

    result = evaluate(Diverged(medium.num_items), medium, protocol=protocol,
                      num_negatives=20, progress=False)

    assert result.metrics["HR@10"] == 0.0 and result.metrics["NDCG@10"] == 0.0
    assert (result.per_user["ties"] == 0).all()


def test_constant_model_sampled_is_chance_level(constant: type, medium: Interactions) -> None:
    result = evaluate(constant(medium.num_items), medium, protocol="uniform", num_negatives=20,
                      progress=False)

    # 21 candidates per user, all tied: every rank 0..20 equally likely.
    assert result.metrics == pytest.approx({
        "HR@1": 1 / 21, "HR@5": 5 / 21, "HR@10": 10 / 21,
        "NDCG@5": sum(1 / math.log2(r + 2) for r in range(5)) / 21,
        "NDCG@10": sum(1 / math.log2(r + 2) for r in range(10)) / 21,
        "MRR": harmonic(21) / 21,
    })
    assert result.users == medium.num_users
    pessimistic = evaluate(constant(medium.num_items), medium, protocol="uniform",
                           num_negatives=20, tie_rule="pessimistic", progress=False)
    assert pessimistic.metrics["HR@10"] == 0.0
    assert pessimistic.metrics["MRR"] == pytest.approx(1 / 21)


@pytest.mark.parametrize("protocol", ["popularity", "uniform"])
def test_sampled_protocols_rank_against_their_negatives(
    medium: Interactions, protocol: EvalProtocol
) -> None:
    class ByItemId:
        num_items = medium.num_items

        def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
            return torch.arange(medium.num_items + 1.0).expand(len(histories), -1)

    result = evaluate(ByItemId(), medium, protocol=protocol, num_negatives=10, seed=8,
                      progress=False)

    cases = eval_cases(medium, "test")
    weights = item_popularity(medium) if protocol == "popularity" else None
    negatives = sample_negatives(medium, cases.users, 10, weights, seed=8)
    expected = (negatives > cases.targets[:, None]).sum(axis=1)
    assert result.per_user["greater"].tolist() == expected.tolist()
    assert result.per_user["ties"].tolist() == [0] * len(cases)


def test_result_as_dict(constant: type, tiny: Interactions) -> None:
    full = evaluate(constant(6), tiny, split="valid", progress=False).to_dict()
    sampled = evaluate(constant(6), tiny, protocol="popularity", num_negatives=1, seed=7,
                       progress=False).to_dict()

    assert set(full) == {"protocol", "split", "users", "metrics", "tie_rule"}
    assert (full["protocol"], full["split"], full["users"]) == ("full", "valid", 3)
    assert list(full["metrics"]) == list(METRICS)
    assert (sampled["negatives"], sampled["seed"]) == (1, 7)


def test_evaluate_refuses_a_model_of_other_items(constant: type, tiny: Interactions) -> None:
    with pytest.raises(ConfigError, match="the model knows 5 items but the data has 6"):
        evaluate(constant(5), tiny, progress=False)


def test_evaluate_refuses_unknown_protocol_and_tie_rule(
    constant: type, tiny: Interactions
) -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'sampled'; choose one of full"):
        evaluate(constant(6), tiny, protocol="sampled", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown tie rule 'best'"):
        evaluate(constant(6), tiny, tie_rule="best", progress=False)  # type: ignore[arg-type]


def test_small_batches_give_the_same_result(medium: Interactions) -> None:
    model = PopularityRecommender.fit(train_sequences(medium), medium.num_items)

    whole = evaluate(model, medium, progress=False)
    batched = evaluate(model, medium, batch_size=7, progress=False)

    pd.testing.assert_frame_equal(whole.per_user, batched.per_user)


# ----------------------------------------------------------------------------------------------
# Negative sampling


@pytest.mark.parametrize("popularity", [False, True])
def test_negatives_are_distinct_unseen_real_items(medium: Interactions, popularity: bool) -> None:
    users = np.arange(medium.num_users)
    weights = item_popularity(medium) if popularity else None

    negatives = sample_negatives(medium, users, num_negatives=20, weights=weights, seed=3)

    assert negatives.shape == (medium.num_users, 20)
    assert (negatives >= 1).all()
    assert (negatives <= medium.num_items).all()
    for u in users.tolist():
        row = negatives[u].tolist()
        assert len(set(row)) == 20
        assert not set(row) & set(medium.sequence(u).tolist())  # test target included


def test_negatives_take_all_that_is_left(tiny: Interactions) -> None:
    # alice has seen a..e, so f is her only possible negative.
    assert sample_negatives(tiny, np.array([0]), num_negatives=1).tolist() == [[6]]


def test_too_few_items_left_to_sample(tiny: Interactions) -> None:
    with pytest.raises(ConfigError, match="a user has only 1 items left to sample from; "
                       "use at most 1 negatives, not 2"):
        sample_negatives(tiny, np.arange(4), num_negatives=2)


@pytest.mark.parametrize("count", [0, -1])
def test_no_negatives_is_refused_not_a_perfect_score(tiny: Interactions, count: int) -> None:
    with pytest.raises(ConfigError, match="--negatives must be at least 1"):
        sample_negatives(tiny, np.arange(4), num_negatives=count)


def test_single_draws_follow_the_weights(medium: Interactions) -> None:
    user, draws = 0, 20_000
    weights = np.arange(medium.num_items + 1, dtype=np.float64)  # item i has weight i
    allowed = np.setdiff1d(np.arange(1, medium.num_items + 1), medium.sequence(user))

    first = sample_negatives(medium, np.full(draws, user), 1, weights, seed=11)[:, 0]

    observed = np.bincount(first, minlength=medium.num_items + 1)
    assert observed.sum() == observed[allowed].sum() == draws
    # With one negative, the chance of item i is its weight over the allowed items' total.
    proportional = draws * weights[allowed] / weights[allowed].sum()
    assert stats.chisquare(observed[allowed], proportional).pvalue > 1e-3
    flat = np.full(len(allowed), draws / len(allowed))
    assert stats.chisquare(observed[allowed], flat).pvalue < 1e-12  # the check has power


def test_uniform_draws_are_uniform(medium: Interactions) -> None:
    user, draws = 1, 4_000
    allowed = np.setdiff1d(np.arange(1, medium.num_items + 1), medium.sequence(user))

    negatives = sample_negatives(medium, np.full(draws, user), 5, seed=5)

    included = np.bincount(negatives.ravel(), minlength=medium.num_items + 1)[allowed]
    # Every allowed item is in a row with chance 5 / len(allowed).
    assert stats.chisquare(included, np.full(len(allowed), draws * 5 / len(allowed))).pvalue > 1e-3
    first = np.bincount(negatives[:, 0], minlength=medium.num_items + 1)[allowed]
    assert first.min() > 0


def test_sampling_depends_on_the_seed_only(medium: Interactions) -> None:
    users = np.arange(medium.num_users)
    weights = item_popularity(medium)

    one = sample_negatives(medium, users, 10, weights, seed=1)
    same = sample_negatives(medium, users, 10, weights, seed=1)
    other = sample_negatives(medium, users, 10, weights, seed=2)

    np.testing.assert_array_equal(one, same)
    assert (np.sort(one, axis=1) != np.sort(other, axis=1)).any(axis=1).mean() > 0.9


def test_item_popularity_counts_the_whole_log(tiny: Interactions) -> None:
    assert item_popularity(tiny).tolist() == [0, 2, 4, 3, 2, 3, 1]


# ----------------------------------------------------------------------------------------------
# Paired comparison


def result_of(values: list[float], users: list[str], protocol: str = "full") -> EvaluationResult:
    frame = pd.DataFrame({"user": users, "NDCG@10": values})
    return EvaluationResult(protocol=protocol, split="test", metrics={}, per_user=frame)


def test_identical_results_do_not_differ(medium: Interactions) -> None:
    model = PopularityRecommender.fit(train_sequences(medium), medium.num_items)
    a = evaluate(model, medium, progress=False)
    b = evaluate(model, medium, progress=False)

    outcome = compare(a, b)

    assert outcome.difference == 0.0
    assert (outcome.ci_low, outcome.ci_high) == (0.0, 0.0)
    assert outcome.t_pvalue == outcome.wilcoxon_pvalue == 1.0
    assert outcome.users == medium.num_users


def test_clearly_better_model_wins(constant: type) -> None:
    # 80 users with 6-10 random distinct items each: no two share a test history.
    rng = np.random.default_rng(4)
    rows = [(f"u{u}", int(i)) for u in range(80)
            for i in rng.permutation(30)[: rng.integers(6, 11)]]
    data = prepare_frame(pd.DataFrame(rows, columns=["user", "item"]))
    better = evaluate(KnowsTheTest(data), data, progress=False)
    worse = evaluate(constant(data.num_items), data, progress=False)

    outcome = compare(better, worse, metric="HR@1")

    assert better.metrics["HR@1"] == 1.0
    assert outcome.mean_a == 1.0
    assert outcome.difference == pytest.approx(1.0 - worse.metrics["HR@1"])
    assert 0.0 < outcome.ci_low <= outcome.difference <= outcome.ci_high
    assert outcome.t_pvalue < 1e-6
    assert outcome.wilcoxon_pvalue < 1e-6
    reverse = compare(worse, better, metric="HR@1")
    assert reverse.difference == -outcome.difference
    assert reverse.ci_high < 0.0


def test_compare_pairs_users_by_id_not_by_row() -> None:
    a = result_of([1.0, 0.0, 0.5], ["x", "y", "z"])
    b = result_of([0.5, 1.0, 0.0], ["z", "x", "y"])

    assert compare(a, b).difference == 0.0


def test_compare_refuses_mismatched_results() -> None:
    a = result_of([1.0, 0.0], ["x", "y"])
    with pytest.raises(ConfigError, match="compare results of the same protocol and split"):
        compare(a, result_of([1.0, 0.0], ["x", "y"], protocol="uniform"))
    with pytest.raises(ConfigError, match="the two results cover different users"):
        compare(a, result_of([1.0, 0.0], ["x", "w"]))
    with pytest.raises(ConfigError, match="the same tie rule"):
        compare(a, replace(a, tie_rule="optimistic"))


def test_compare_refuses_sampled_results_of_different_negatives(medium: Interactions) -> None:
    model = PopularityRecommender.fit(train_sequences(medium), medium.num_items)
    a = evaluate(model, medium, protocol="popularity", num_negatives=10, seed=0,
                 progress=False)
    with pytest.raises(ConfigError, match=r"these used 10 \(seed 0\) and 15 \(seed 0\)"):
        compare(a, evaluate(model, medium, protocol="popularity", num_negatives=15, seed=0,
                            progress=False))
    with pytest.raises(ConfigError, match=r"these used 10 \(seed 0\) and 10 \(seed 1\)"):
        compare(a, evaluate(model, medium, protocol="popularity", num_negatives=10, seed=1,
                            progress=False))
    same = evaluate(model, medium, protocol="popularity", num_negatives=10, seed=0,
                    progress=False)
    assert compare(a, same).difference == 0.0


def test_bootstrap_interval_contains_the_mean() -> None:
    values = np.random.default_rng(0).exponential(size=300)

    low, high = bootstrap_ci(values, confidence=0.9, resamples=500)

    assert low < values.mean() < high
    assert high - low < 0.5
    assert bootstrap_ci(np.full(10, 0.25), resamples=50) == (0.25, 0.25)
