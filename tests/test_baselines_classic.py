"""BPR-MF, NCF, FPMC and Caser: one contract suite run against all four, the shared example
and loss functions on hand-computed cases, a leakage check, and what each must learn."""

from __future__ import annotations

import json
import math
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from bert4rec.baselines import bpr, caser, common, fpmc, ncf
from bert4rec.baselines.common import FitConfig
from bert4rec.baselines.history import (
    bpr_loss,
    history_mean,
    left_pad,
    next_item_examples,
    training_examples,
)
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions, PrepareOptions, prepare_frame
from bert4rec.errors import ConfigError, RunError
from bert4rec.evaluation import evaluate, validation_users
from bert4rec.recommender import Recommender
from bert4rec.split import TrainSequences, eval_cases, train_sequences
from bert4rec.synthetic import generate

MODULES: dict[str, ModuleType] = {"bpr": bpr, "ncf": ncf, "fpmc": fpmc, "caser": caser}
CLASSES: dict[str, Any] = {"bpr": bpr.BPR, "ncf": ncf.NCF, "fpmc": fpmc.FPMC, "caser": caser.Caser}
NAMES = list(MODULES)


def tiny_config(name: str, num_items: int) -> Any:
    """Deliberately small models; max_history 4 so that long histories get clipped."""
    if name == "bpr":
        return bpr.BPRConfig(num_items=num_items, embedding_size=8, max_history=4)
    if name == "ncf":
        return ncf.NCFConfig(num_items=num_items, embedding_size=8, mlp_embedding_size=8,
                             mlp_layers=(8, 4), max_history=4)
    if name == "fpmc":
        return fpmc.FPMCConfig(num_items=num_items, embedding_size=8, max_history=4)
    return caser.CaserConfig(num_items=num_items, embedding_size=8, window=3, targets=2,
                             horizontal_filters=2, vertical_filters=2, max_history=4)


def quick(**overrides: Any) -> FitConfig:
    values: dict[str, Any] = dict(epochs=1, batch_size=64, lr=1e-2, eval_every=100, patience=0,
                                  threads=1, seed=0, device="cpu")
    values.update(overrides)
    return FitConfig(**values)


def trained(name: str, data: Interactions) -> Any:
    model, _ = MODULES[name].fit(data, tiny_config(name, data.num_items), quick())
    return model


def histories_for(data: Interactions) -> list[np.ndarray]:
    return [
        data.sequence(0)[:-1],
        np.zeros(0, dtype=np.int64),  # empty
        np.array([data.num_items, 1, 2], dtype=np.int64),  # a user no one has seen
        np.arange(1, 11, dtype=np.int64),  # longer than max_history
        np.array([3], dtype=np.int32),  # one item, another integer type
    ]


def planted_cycle(num_users: int = 300) -> Interactions:
    """Every next item is the successor in a hidden cycle: a sequence model can be perfect."""
    frame = generate(num_users=num_users, num_items=40, min_length=8, max_length=16, follow=1.0,
                     seed=0)
    return prepare_frame(frame)


def clustered(num_users: int = 300, clusters: int = 4, per_cluster: int = 10, length: int = 8,
              seed: int = 0) -> Interactions:
    """Each user draws, in random order and without repeats, items of one cluster only, by a
    Zipf popularity over the whole catalogue: co-occurrence tells the held-out item's cluster,
    order tells nothing, and popularity alone cannot tell the cluster."""
    rng = np.random.default_rng(seed)
    num_items = clusters * per_cluster
    popularity = (1.0 / np.arange(1, num_items + 1))[rng.permutation(num_items)]
    rows = []
    for user in range(num_users):
        members = np.arange(per_cluster) + per_cluster * rng.integers(clusters)
        weights = popularity[members] / popularity[members].sum()
        items = rng.choice(members, size=length, replace=False, p=weights)
        rows += [(f"u{user}", f"i{item}", step) for step, item in enumerate(items.tolist())]
    return prepare_frame(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))


# ----------------------------------------------------------------------------------------------
# The contract, for every model


@pytest.mark.parametrize("name", NAMES)
def test_scores_follow_the_contract(name: str, medium: Interactions) -> None:
    model = trained(name, medium)
    histories = histories_for(medium)

    scores = model.score(histories)

    assert isinstance(model, Recommender)
    assert model.name == name
    assert model.num_items == medium.num_items
    assert scores.shape == (len(histories), medium.num_items + 1)
    assert scores.device == model.device
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()
    assert not model.training  # fit hands the model back ready to score


@pytest.mark.parametrize("name", NAMES)
def test_a_history_scores_alike_alone_and_in_a_batch(name: str, medium: Interactions) -> None:
    model = trained(name, medium)
    histories = histories_for(medium)

    together = model.score(histories)

    for row, history in enumerate(histories):
        torch.testing.assert_close(model.score([history])[0], together[row])


@pytest.mark.parametrize("name", NAMES)
def test_only_the_last_max_history_items_count(name: str, medium: Interactions) -> None:
    model = trained(name, medium)
    recent = np.array([5, 6, 7, 8])

    scores = model.score([np.concatenate([[1, 2, 3], recent]), recent])

    torch.testing.assert_close(scores[0], scores[1])


@pytest.mark.parametrize("name", NAMES)
def test_tensor_round_trip_gives_identical_scores(name: str, medium: Interactions) -> None:
    model = trained(name, medium)
    config = json.loads(json.dumps(model.config()))  # what a run directory stores

    again = CLASSES[name].from_tensors(config, model.tensors())

    histories = histories_for(medium)
    assert torch.equal(again.score(histories), model.score(histories))
    assert again.config() == model.config()
    assert all(not t.requires_grad for t in model.tensors().values())


@pytest.mark.parametrize("name", NAMES)
def test_config_rejects_unknown_keys(name: str) -> None:
    config_class = type(tiny_config(name, 5))

    with pytest.raises(ConfigError, match=f"unknown {name} setting\\(s\\): colour, size"):
        config_class.from_dict({"num_items": 5, "size": 1, "colour": "red"})


@pytest.mark.parametrize("name", NAMES)
def test_fit_refuses_a_config_for_other_data(name: str, medium: Interactions) -> None:
    config = tiny_config(name, medium.num_items + 1)

    with pytest.raises(ConfigError, match=f"has {medium.num_items}; build its config with "
                                          f"num_items={medium.num_items}"):
        MODULES[name].fit(medium, config, quick())


@pytest.mark.parametrize("name", NAMES)
def test_training_never_sees_validation_or_test_items(name: str) -> None:
    # Two logs that differ only in every user's last two items (shuffled across users, so the
    # vocabulary stays the same): training on either must give bit-identical weights.
    frame = generate(num_users=60, num_items=40, min_length=5, max_length=12, seed=3)
    frame = frame.sort_values(["user", "timestamp"]).reset_index(drop=True)
    held_out = frame.groupby("user").cumcount(ascending=False) < 2
    shuffled = frame.copy()
    rng = np.random.default_rng(0)
    shuffled.loc[held_out, "item"] = rng.permutation(frame.loc[held_out, "item"].to_numpy())
    a, b = prepare_frame(frame), prepare_frame(shuffled)
    assert not np.array_equal(a.items, b.items)
    assert np.array_equal(train_sequences(a).items, train_sequences(b).items)

    model_a, _ = MODULES[name].fit(a, tiny_config(name, a.num_items), quick())
    model_b, _ = MODULES[name].fit(b, tiny_config(name, b.num_items), quick())

    for key, value in model_a.tensors().items():
        assert torch.equal(value, model_b.tensors()[key]), key


# ----------------------------------------------------------------------------------------------
# Shared pieces: examples, padding, the history mean, the losses


def test_next_item_examples_by_hand() -> None:
    # Users: [4, 5, 6], [7] (no example: nothing before it), [8, 9].
    train = TrainSequences(offsets=np.array([0, 3, 4, 6]),
                           items=np.array([4, 5, 6, 7, 8, 9], dtype=np.int32))

    examples = next_item_examples(train)

    assert examples.targets.tolist() == [1, 2, 5]
    rows = np.arange(len(examples))
    assert examples.history(rows, max_len=5).tolist() == [[0, 4], [4, 5], [0, 8]]
    assert examples.history(rows, max_len=1).tolist() == [[4], [5], [8]]
    assert examples.next_items(rows, 3).tolist() == [[5, 6, 0], [6, 0, 0], [9, 0, 0]]


def test_examples_never_hold_a_users_last_two_items() -> None:
    # Each user's last two items are unique to that user: no example may contain them.
    frame = generate(num_users=40, num_items=30, min_length=3, max_length=10, seed=2)
    last = frame.groupby("user")["timestamp"].max()
    extra = pd.DataFrame({
        "user": np.repeat(last.index.to_numpy(), 2),
        "item": [f"held-{u}-{k}" for u in last.index for k in (0, 1)],
        "timestamp": np.repeat(last.to_numpy(), 2) + np.tile([1, 2], len(last)),
    })
    data = prepare_frame(pd.concat([frame, extra]), PrepareOptions(min_user_count=0))
    held_ids, unknown = data.vocab.encode(extra["item"].tolist())
    assert not unknown

    examples = training_examples(data, data.num_items)

    rows = np.arange(len(examples))
    assert len(examples) == data.num_interactions - 3 * data.num_users
    assert not np.isin(examples.items, held_ids).any()
    for ids in (examples.history(rows, 100), examples.next_items(rows, 5)):
        assert not np.isin(ids.numpy(), held_ids).any()


def test_left_pad_keeps_the_last_items() -> None:
    tokens = left_pad([np.array([1, 2, 3, 4]), np.array([], dtype=np.int64), np.array([5])], 3)

    assert tokens.tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 5]]
    assert left_pad([np.array([], dtype=np.int64)], 3).tolist() == [[0]]


def test_history_mean_skips_padding_and_is_zero_when_empty() -> None:
    embedding = torch.nn.Embedding(4, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]))

    mean = history_mean(embedding, torch.tensor([[0, 1, 2], [0, 0, 3], [0, 0, 0]]))

    assert mean.tolist() == [[2.0, 3.0], [5.0, 0.0], [0.0, 0.0]]


def test_bpr_loss_by_hand() -> None:
    positive = torch.tensor([[2.0], [0.0]])
    negative = torch.tensor([[0.0], [0.0]])

    loss = bpr_loss(positive, negative)

    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected)


def test_ncf_pointwise_loss_averages_every_instance() -> None:
    positive = torch.tensor([[0.0]])
    negative = torch.tensor([[0.0, 100.0]])

    loss = ncf.pointwise_loss(positive, negative)

    # ln 2 for the positive at 0, ln 2 for the negative at 0, 100 for the negative at 100.
    assert loss.item() == pytest.approx((2 * math.log(2.0) + 100.0) / 3, rel=1e-5)


def test_caser_loss_ignores_targets_past_the_sequence_end() -> None:
    positive = torch.tensor([[0.0, -50.0]])  # the second target does not exist
    negative = torch.tensor([[[0.0], [50.0]]])  # (B, T, negatives)
    valid = torch.tensor([[True, False]])

    loss = caser.caser_loss(positive, negative, valid)

    assert loss.item() == pytest.approx(2 * math.log(2.0))


def test_ncf_chunked_full_ranking_matches_one_chunk(
    medium: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = trained("ncf", medium)
    histories = histories_for(medium)
    whole = model.score(histories)

    monkeypatch.setattr(ncf, "_SCORE_CHUNK_ELEMENTS", 7)
    chunked = model.score(histories)

    torch.testing.assert_close(chunked, whole)


def test_ncf_full_ranking_scores_every_item_as_training_does(medium: Interactions) -> None:
    model = trained("ncf", medium)
    histories = histories_for(medium)
    tokens = left_pad(histories, model.settings.max_history)
    items = torch.arange(1, model.num_items + 1).unsqueeze(0)

    with torch.no_grad():
        pairwise = model.pair_logits(model.user(tokens), items)

    torch.testing.assert_close(model.score(histories)[:, 1:], pairwise)
    assert model.score([]).shape == (0, model.num_items + 1)


class _Clock:
    """A stand-in for ``time.perf_counter``: a millisecond per reading, and whatever a patched
    validation pass adds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now


def test_time_budget_counts_training_not_validation(
    medium: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=clock))

    def slow_validation(*args: Any, **kwargs: Any) -> Any:
        clock.now += 1000.0  # a validation pass far longer than the budget
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(common, "evaluate", slow_validation)
    config = tiny_config("bpr", medium.num_items)

    _, result = bpr.fit(medium, config, quick(epochs=3, eval_every=1, time_budget=100.0))

    assert result.stopped == "epochs done"
    assert result.epochs == 3
    assert result.seconds < 100.0  # the training steps' clock, not the validation passes'


def test_time_budget_stops_training(medium: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=clock))
    config = tiny_config("bpr", medium.num_items)

    _, result = bpr.fit(medium, config, quick(epochs=50, batch_size=8, time_budget=0.05))

    assert result.stopped == "time budget"
    assert result.epochs < 50
    assert 0.05 < result.seconds < 0.1


def test_validation_on_a_fixed_sample_of_users(
    medium: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[np.ndarray | None] = []
    draws: list[int | None] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("users"))
        return evaluate(*args, **kwargs)

    def drawing(data: Interactions, count: int | None, seed: int) -> np.ndarray | None:
        draws.append(count)
        return validation_users(data, count, seed)

    monkeypatch.setattr(common, "evaluate", recording)
    monkeypatch.setattr(common, "validation_users", drawing)
    config = tiny_config("fpmc", medium.num_items)

    fpmc.fit(medium, config, quick(epochs=2, eval_every=1, valid_users=20))
    fpmc.fit(medium, config, quick(epochs=1, eval_every=1))

    first, second, everyone = seen
    assert first is not None and second is not None and len(first) == 20
    np.testing.assert_array_equal(first, second)
    assert draws == [20, None]  # one draw a fit, not one a pass
    assert everyone is None


@pytest.mark.parametrize("count", [0, -1, 10.0, True])
def test_a_bad_valid_users_is_refused_before_training(count: Any) -> None:
    with pytest.raises(ConfigError, match="valid_users must be a whole number"):
        FitConfig(valid_users=count)


def test_validation_users_draws_a_sorted_fixed_subset(medium: Interactions) -> None:
    users = validation_users(medium, 20, seed=3)

    assert users is not None and len(users) == 20 == len(np.unique(users))
    assert np.all(np.diff(users) > 0)
    assert set(users) <= set(eval_cases(medium, "valid").users)
    np.testing.assert_array_equal(users, validation_users(medium, 20, seed=3))
    assert not np.array_equal(users, validation_users(medium, 20, seed=4))
    assert validation_users(medium, None, seed=3) is None
    assert validation_users(medium, 10**9, seed=3) is None  # covers everyone: all users


def test_config_round_trips_through_json() -> None:
    config = ncf.NCFConfig(num_items=9, mlp_layers=(16, 8))

    again = ncf.NCFConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert again == config


# ----------------------------------------------------------------------------------------------
# What each model learns


@pytest.fixture(scope="module")
def cycle() -> Interactions:
    return planted_cycle()


@pytest.fixture(scope="module")
def clusters() -> Interactions:
    return clustered()


@pytest.mark.parametrize("name", ["bpr", "ncf"])
def test_order_free_models_learn_co_occurrence(name: str, clusters: Interactions) -> None:
    pop = PopularityRecommender.fit(train_sequences(clusters), clusters.num_items)
    pop_hr = evaluate(pop, clusters, protocol="full", progress=False).metrics["HR@10"]
    config = MODULES[name].__dict__[f"{name.upper()}Config"](num_items=clusters.num_items)

    model, _ = MODULES[name].fit(clusters, config, quick(epochs=15))

    hr = evaluate(model, clusters, protocol="full", progress=False).metrics["HR@10"]
    # The three unseen items of the user's cluster are the ones to rank first.
    assert pop_hr < 0.4
    assert hr > 0.9


def test_fpmc_learns_the_planted_transition(cycle: Interactions) -> None:
    model, result = fpmc.fit(cycle, fpmc.FPMCConfig(num_items=cycle.num_items), quick(epochs=10))

    test = evaluate(model, cycle, protocol="full", progress=False)
    assert test.metrics["HR@1"] > 0.9
    assert result.valid_metrics["HR@1"] > 0.9


def test_caser_learns_the_planted_transition(cycle: Interactions) -> None:
    # T = 1 here: with the paper's T = 3 every example also labels the 2nd and 3rd successors
    # positive, which blurs the top-1 on a data set where only the next one is right.
    config = caser.CaserConfig(num_items=cycle.num_items, targets=1)

    model, _ = caser.fit(cycle, config, quick(epochs=10, batch_size=128))

    assert evaluate(model, cycle, protocol="full", progress=False).metrics["HR@1"] > 0.9


def test_caser_with_three_targets_ranks_the_next_items_first(cycle: Interactions) -> None:
    model, _ = caser.fit(cycle, caser.CaserConfig(num_items=cycle.num_items),
                         quick(epochs=10, batch_size=128))

    metrics = evaluate(model, cycle, protocol="full", progress=False).metrics
    assert metrics["HR@1"] > 0.3
    assert metrics["HR@5"] > 0.9


def test_a_baseline_diverged_from_the_start_keeps_nothing(medium: Interactions) -> None:
    config = bpr.BPRConfig(num_items=medium.num_items, embedding_size=8)
    with pytest.raises(RunError, match=r"diverged .* before any epoch worth keeping"):
        bpr.fit(medium, config, quick(epochs=20, eval_every=1, lr=1e30, patience=0))
