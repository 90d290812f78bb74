"""POP: scores are training counts, and the shared ``recommend`` contract on top of it."""

from __future__ import annotations

import numpy as np
import torch

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions
from bert4rec.recommender import Recommender, recommend
from bert4rec.split import TrainSequences, train_sequences

# Items 1..6 with counts 5, 3, 8, 1, 0, 2 (index 0 is padding): popularity order 3 1 2 6 4 5.
COUNTS = torch.tensor([0.0, 5, 3, 8, 1, 0, 2])


def test_fit_counts_the_training_sequences() -> None:
    train = TrainSequences(
        offsets=np.array([0, 3, 5]), items=np.array([2, 1, 2, 2, 4], dtype=np.int32)
    )

    model = PopularityRecommender.fit(train, num_items=5)

    assert model.counts.tolist() == [0, 1, 3, 0, 1, 0]
    assert model.num_items == 5
    assert isinstance(model, Recommender)


def test_scores_are_the_counts_for_every_history(tiny: Interactions) -> None:
    model = PopularityRecommender.fit(train_sequences(tiny), tiny.num_items)

    scores = model.score([np.array([1, 2]), np.array([], dtype=np.int64), np.array([6])])

    assert scores.shape == (3, tiny.num_items + 1)
    for row in scores:
        assert row.tolist() == [0, 2, 2, 3, 1, 1, 0]


def test_recommend_excludes_seen_items() -> None:
    model = PopularityRecommender(COUNTS)

    ids, scores = recommend(model, [np.array([], dtype=np.int64), np.array([3, 1])], k=3)

    assert ids.tolist() == [[3, 1, 2], [2, 6, 4]]
    assert scores.tolist() == [[8, 5, 3], [3, 2, 1]]


def test_recommend_can_include_seen_items() -> None:
    model = PopularityRecommender(COUNTS)

    ids, _ = recommend(model, [np.array([3, 1])], k=3, exclude_seen=False)

    assert ids.tolist() == [[3, 1, 2]]


def test_recommend_respects_candidates_and_pads_with_zero() -> None:
    model = PopularityRecommender(COUNTS)

    ids, scores = recommend(model, [np.array([6])], k=4, candidates=np.array([4, 5, 6]))

    assert ids.tolist() == [[4, 5, 0, 0]]
    assert scores[0, :2].tolist() == [1, 0]
    assert np.isneginf(scores[0, 2:]).all()


def test_recommend_pads_when_k_exceeds_the_items() -> None:
    model = PopularityRecommender(COUNTS)

    ids, scores = recommend(model, [np.array([2])], k=9)

    assert ids.tolist() == [[3, 1, 6, 4, 5, 0, 0, 0, 0]]
    assert np.isneginf(scores[0, 5:]).all()


def test_recommend_in_small_batches_matches_one_batch() -> None:
    model = PopularityRecommender(COUNTS)
    histories = [np.array([1]), np.array([3, 2]), np.array([], dtype=np.int64), np.array([6, 4])]

    whole, _ = recommend(model, histories, k=2)
    batched, _ = recommend(model, histories, k=2, batch_size=1)

    np.testing.assert_array_equal(whole, batched)
    assert whole.tolist() == [[3, 2], [1, 6], [3, 1], [3, 1]]


def test_recommend_leaves_the_model_scores_alone() -> None:
    model = PopularityRecommender(COUNTS.clone())

    recommend(model, [np.array([3, 1])], k=2)

    assert model.counts.tolist() == COUNTS.tolist()


def test_tensors_round_trip() -> None:
    model = PopularityRecommender(COUNTS)

    again = PopularityRecommender.from_tensors(model.config(), model.tensors())

    assert model.config() == {}
    assert torch.equal(again.counts, model.counts)
