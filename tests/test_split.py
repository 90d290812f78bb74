"""Leave-one-out split, and that no held-out item leaks into training or into validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions, ItemVocab
from bert4rec.errors import DataError
from bert4rec.evaluation import evaluate
from bert4rec.split import eval_cases, holdout_count, train_sequences


def positions_as_items(data: Interactions) -> Interactions:
    """The same users and lengths, but interaction ``p`` of the flat array is item ``p + 1``:
    every item id then names one position, so repeated items cannot hide a leak."""
    n = data.num_interactions
    return Interactions(
        user_ids=data.user_ids,
        vocab=ItemVocab(np.arange(1, n + 1)),
        offsets=data.offsets,
        items=np.arange(1, n + 1, dtype=np.int32),
    )


def test_holdout_count() -> None:
    assert holdout_count(np.array([0, 1, 2, 3, 10])).tolist() == [0, 0, 0, 2, 2]


def test_train_sequences_hold_out_the_last_two_items(tiny: Interactions) -> None:
    train = train_sequences(tiny)

    # alice a b c d e, bob c a e b, carol e d (too short: trains on all), dave b c b f
    assert [train.sequence(u).tolist() for u in range(4)] == [[1, 2, 3], [3, 1], [5, 4], [2, 3]]
    assert train.lengths.tolist() == [3, 2, 2, 2]


def test_test_cases_see_the_validation_item(tiny: Interactions) -> None:
    cases = eval_cases(tiny, "test")

    assert cases.users.tolist() == [0, 1, 3]
    assert cases.targets.tolist() == [5, 2, 6]
    histories = cases.histories(tiny.items, slice(None))
    assert [h.tolist() for h in histories] == [[1, 2, 3, 4], [3, 1, 5], [2, 3, 2]]


def test_validation_cases_end_before_the_validation_item(tiny: Interactions) -> None:
    cases = eval_cases(tiny, "valid")

    assert cases.users.tolist() == [0, 1, 3]
    assert cases.targets.tolist() == [4, 5, 2]
    histories = cases.histories(tiny.items, np.arange(3))
    assert [h.tolist() for h in histories] == [[1, 2, 3], [3, 1], [2, 3]]


def test_users_with_fewer_than_three_items_are_not_evaluated(tiny: Interactions) -> None:
    carol = 2
    assert tiny.lengths[carol] == 2
    for split in ("valid", "test"):
        assert carol not in eval_cases(tiny, split).users
    assert train_sequences(tiny).sequence(carol).tolist() == tiny.sequence(carol).tolist()


def test_unknown_split() -> None:
    empty = Interactions(
        user_ids=np.array([]), vocab=ItemVocab(np.array([])), offsets=np.zeros(1, dtype=np.int64),
        items=np.zeros(0, dtype=np.int32),
    )
    with pytest.raises(DataError, match="unknown split 'train'; choose valid or test"):
        eval_cases(empty, "train")  # type: ignore[arg-type]


@pytest.mark.parametrize("fixture", ["tiny", "medium"])
def test_no_held_out_position_reaches_training(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    data = positions_as_items(request.getfixturevalue(fixture))
    train = train_sequences(data)
    test, valid = eval_cases(data, "test"), eval_cases(data, "valid")

    for case, u in enumerate(test.users.tolist()):
        trained = set(train.sequence(u).tolist())
        assert test.targets[case] not in trained
        assert valid.targets[case] not in trained
        assert valid.users[case] == u
        # Training is exactly everything before the validation target.
        start = int(data.offsets[u])
        assert sorted(trained) == list(range(start + 1, int(valid.targets[case])))
    assert train.lengths.sum() == data.num_interactions - 2 * len(test)


@pytest.mark.parametrize("fixture", ["tiny", "medium"])
def test_validation_never_sees_the_test_item(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    data = positions_as_items(request.getfixturevalue(fixture))
    valid, test = eval_cases(data, "valid"), eval_cases(data, "test")
    assert (valid.ends == valid.targets - 1).all()  # history stops right before its target
    assert (valid.ends < test.ends).all()

    seen: list[np.ndarray] = []

    class Spy:
        num_items = data.num_items

        def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
            seen.extend(np.asarray(h).copy() for h in histories)
            return torch.zeros(len(histories), data.num_items + 1)

    evaluate(Spy(), data, split="valid", progress=False)

    assert len(seen) == len(valid)
    for history, valid_target, test_target in zip(seen, valid.targets, test.targets, strict=True):
        assert valid_target not in history
        assert test_target not in history


def test_pop_counts_only_training_items(tiny: Interactions) -> None:
    model = PopularityRecommender.fit(train_sequences(tiny), tiny.num_items)

    # Training: alice a b c, bob c a, carol e d, dave b c. Held out: d e, e b, b f.
    assert model.counts.tolist() == [0, 2, 2, 3, 1, 1, 0]
    everything = np.bincount(tiny.items, minlength=tiny.num_items + 1)
    assert everything.tolist() == [0, 2, 4, 3, 2, 3, 1]
