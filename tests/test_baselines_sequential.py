"""SASRec with both its losses and GRU4Rec with its three: one contract suite for all five,
their training examples, their losses, and a planted pattern each must learn."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bert4rec.baselines import gru4rec, load_baseline, sasrec
from bert4rec.baselines.common import FitConfig
from bert4rec.baselines.gru4rec import GRU4Rec, GRU4RecConfig, bpr_max_loss, top1_loss
from bert4rec.baselines.history import left_pad
from bert4rec.baselines.next_item import next_item_batch, next_item_windows
from bert4rec.baselines.sasrec import SASRec, SASRecConfig, unseen_negatives
from bert4rec.data import Interactions, prepare_frame
from bert4rec.errors import ConfigError
from bert4rec.evaluation import evaluate
from bert4rec.recommender import Recommender
from bert4rec.synthetic import generate

Model = SASRec | GRU4Rec
NUM_ITEMS = 20


def sasrec_config(num_items: int, loss: str) -> SASRecConfig:
    return SASRecConfig(num_items=num_items, loss=loss, max_len=8, hidden_size=16, num_layers=2,
                        num_heads=2, dropout=0.0)


def gru4rec_config(num_items: int, loss: str) -> GRU4RecConfig:
    return GRU4RecConfig(num_items=num_items, loss=loss, max_len=8, hidden_size=16,
                         num_layers=2, n_negatives=8)


# name -> (model class, config for a catalogue of n items, its module's fit)
VARIANTS: dict[str, tuple[type[Model], Callable[[int], SASRecConfig | GRU4RecConfig], Callable]] = {
    "sasrec": (SASRec, lambda n: sasrec_config(n, "bce"), sasrec.fit),
    "sasrec-ce": (SASRec, lambda n: sasrec_config(n, "ce"), sasrec.fit),
    "gru4rec": (GRU4Rec, lambda n: gru4rec_config(n, "top1"), gru4rec.fit),
    "gru4rec+": (GRU4Rec, lambda n: gru4rec_config(n, "bpr-max"), gru4rec.fit),
    "gru4rec-ce": (GRU4Rec, lambda n: gru4rec_config(n, "ce"), gru4rec.fit),
}


def build(name: str, num_items: int = NUM_ITEMS) -> Model:
    cls, config, _ = VARIANTS[name]
    torch.manual_seed(0)
    return cls(config(num_items)).eval()  # type: ignore[arg-type]


def quick(**overrides: object) -> FitConfig:
    values: dict[str, object] = dict(epochs=8, batch_size=32, lr=1e-2, eval_every=1000,
                                     patience=0, threads=1, seed=0, device="cpu")
    values.update(overrides)
    return FitConfig(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# The contract, for every model


@pytest.mark.parametrize("name", VARIANTS)
def test_scores_follow_the_contract(name: str) -> None:
    model = build(name)
    histories = [np.array([3, 4]), np.array([], dtype=np.int64), np.arange(1, 13)]

    scores = model.score(histories)

    assert isinstance(model, Recommender)
    assert model.name == name and model.num_items == NUM_ITEMS
    assert scores.shape == (3, NUM_ITEMS + 1) and scores.device == model.device
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_never_changes_a_score(name: str) -> None:
    model = build(name)

    alone = model.score([np.array([3, 4, 5])])
    together = model.score([np.array([3, 4, 5]), np.array([1, 2, 3, 4, 5, 6, 7])])[:1]
    # A history longer than max_len (8) is read as its last 8 items.
    long = model.score([np.arange(1, 13)])
    cut = model.score([np.arange(5, 13)])

    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(long, cut, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_tensors_round_trip_gives_identical_scores(name: str) -> None:
    model = build(name)
    histories = [np.array([3, 4, 5]), np.array([7])]

    config = json.loads(json.dumps(model.config()))
    again = type(model).from_tensors(config, model.tensors())

    assert again.name == name
    assert torch.equal(again.score(histories), model.score(histories))


@pytest.mark.parametrize("name", VARIANTS)
def test_learns_a_planted_sequential_pattern(name: str) -> None:
    frame = generate(num_users=300, num_items=40, min_length=8, max_length=16, follow=1.0,
                     seed=0)
    data = prepare_frame(frame)
    cls, config, fit = VARIANTS[name]
    small = config(data.num_items)
    small = type(small).from_dict({**small.to_dict(), "max_len": 16})

    model, result = fit(data, small, quick())

    assert isinstance(model, cls) and model.name == name
    assert result.epochs == 8
    test = evaluate(model, data, split="test", protocol="full", progress=False)
    # Every next item is the successor in a hidden cycle: a sequence model can be perfect.
    assert test.metrics["HR@1"] > 0.8


@pytest.mark.parametrize("name", VARIANTS)
def test_training_never_sees_a_users_last_two_items(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each user's validation and test items are unique to that user, so any occurrence of
    # one in a training batch is a leak.
    rows = []
    for u in range(30):
        rows += [(f"u{u}", f"i{(u + k) % 12}") for k in range(6)]
        rows += [(f"u{u}", f"valid{u}"), (f"u{u}", f"test{u}")]
    data = prepare_frame(pd.DataFrame(rows, columns=["user", "item"]))
    held_out, _ = data.vocab.encode([f"{kind}{u}" for u in range(30) for kind in ("valid", "test")])
    cls, config, fit = VARIANTS[name]
    seen: list[torch.Tensor] = []
    targets_seen: list[torch.Tensor] = []
    original = cls.loss

    def spy(self: Model, inputs: torch.Tensor, targets: torch.Tensor,
            *rest: object) -> torch.Tensor:
        seen.extend([inputs, targets])
        targets_seen.append(targets[targets > 0])
        return original(self, inputs, targets, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "loss", spy)
    fit(data, config(data.num_items), quick(epochs=1))

    tokens = torch.cat([t.flatten() for t in seen]).numpy()
    assert not np.isin(tokens, held_out).any()
    # Every next item of every training sequence (six items: five targets) is a target once.
    assert len(torch.cat(targets_seen)) == 30 * 5


# ----------------------------------------------------------------------------------------------
# SASRec


def test_sasrec_is_causal() -> None:
    model = build("sasrec")

    a = model.encode(torch.tensor([[0, 3, 4, 5, 6]]))
    b = model.encode(torch.tensor([[0, 3, 4, 9, 6]]))

    torch.testing.assert_close(a[:, :3], b[:, :3])  # up to the changed slot: unchanged
    assert not torch.allclose(a[:, 3], b[:, 3])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_sasrec_scores_are_tied_to_the_item_embeddings() -> None:
    model = build("sasrec")
    hidden = torch.randn(2, 16)

    torch.testing.assert_close(model.logits(hidden), hidden @ model.item_embedding.weight.T)


def test_sasrec_bce_and_ce_losses() -> None:
    bce, ce = build("sasrec"), build("sasrec-ce")
    ce.load_state_dict(bce.state_dict())
    inputs = torch.tensor([[0, 3, 4], [5, 6, 7]])
    targets = torch.tensor([[0, 4, 8], [6, 7, 2]])
    negatives = torch.tensor([[0, 9, 10], [11, 12, 13]])

    hidden = bce.encode(inputs)[targets > 0]  # (5, d)
    items = bce.item_embedding.weight
    positive = (hidden * items[targets[targets > 0]]).sum(1)
    negative = (hidden * items[negatives[targets > 0]]).sum(1)
    expected_bce = -(torch.log(torch.sigmoid(positive)) + torch.log(1 - torch.sigmoid(negative)))
    expected_ce = F.cross_entropy(hidden @ items[1:].T, targets[targets > 0] - 1)

    torch.testing.assert_close(bce.loss(inputs, targets, negatives), expected_bce.mean())
    torch.testing.assert_close(ce.loss(inputs, targets), expected_ce)
    with pytest.raises(ValueError, match="one negative per position"):
        bce.loss(inputs, targets)


def test_sasrec_negatives_avoid_the_window() -> None:
    seen = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [1, 2, 3, 4]])
    negatives = unseen_negatives(seen, num_items=6, count=200,
                                 generator=torch.Generator().manual_seed(0))

    assert set(negatives[0].tolist()) == {4, 5, 6}
    assert set(negatives[1].tolist()) == {1, 2, 3}
    assert set(negatives[2].tolist()) == {5, 6}
    # A row that holds every item draws from all of them rather than failing.
    everything = unseen_negatives(torch.tensor([[1, 2]]), num_items=2, count=50)
    assert set(everything[0].tolist()) == {1, 2}


def test_sasrec_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown SASRec loss 'bpr'; choose bce or ce"):
        SASRecConfig(num_items=5, loss="bpr")
    with pytest.raises(ConfigError, match="unknown SASRec setting"):
        SASRecConfig.from_dict({"num_items": 5, "hidden": 8})
    with pytest.raises(ConfigError, match="not divisible"):
        SASRecConfig(num_items=5, hidden_size=10, num_heads=3)


# ----------------------------------------------------------------------------------------------
# GRU4Rec


def test_bpr_max_with_one_negative_is_bpr_plus_score_regularisation() -> None:
    positive, negative = torch.tensor([2.0]), torch.tensor([[0.5]])
    valid = torch.ones(1, 1, dtype=torch.bool)

    loss = bpr_max_loss(positive, negative, valid, bpreg=0.1)

    expected = -torch.log(torch.sigmoid(torch.tensor(1.5))) + 0.1 * 0.25
    torch.testing.assert_close(loss, expected)


def test_bpr_max_weights_negatives_by_their_softmax_and_skips_invalid_ones() -> None:
    positive = torch.tensor([1.0, 0.0])
    negatives = torch.tensor([[0.0, 2.0, 50.0], [1.0, 1.0, 1.0]])
    valid = torch.tensor([[True, True, False], [False, False, False]])

    loss = bpr_max_loss(positive, negatives, valid, bpreg=1.0)

    # Only the first row counts, and only its first two negatives.
    s = torch.softmax(torch.tensor([0.0, 2.0]), dim=0)
    r = torch.tensor([0.0, 2.0])
    expected = -torch.log((s * torch.sigmoid(1.0 - r)).sum()) + (s * r**2).sum()
    torch.testing.assert_close(loss, expected)


def test_top1_averages_relative_rank_and_score_regularisation_over_valid_negatives() -> None:
    positive = torch.tensor([1.0, 0.0, 2.0])
    negatives = torch.tensor([[0.0, 2.0, 50.0], [1.0, 1.0, 1.0], [0.5, -1.0, 3.0]])
    valid = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])

    loss = top1_loss(positive, negatives, valid)

    # The second row has no valid negative and is left out; the first counts two negatives.
    def row(r_i: float, r_j: list[float]) -> torch.Tensor:
        r = torch.tensor(r_j)
        return (torch.sigmoid(r - r_i) + torch.sigmoid(r**2)).mean()

    expected = (row(1.0, [0.0, 2.0]) + row(2.0, [0.5, -1.0, 3.0])) / 2
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("loss", ["top1", "bpr-max"])
def test_a_mini_batch_of_one_sequence_without_sampled_negatives_trains_nothing(loss: str) -> None:
    # Its target has no other target to rank against: a zero loss, not NaN weights.
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(num_items=NUM_ITEMS, loss=loss, max_len=8, hidden_size=16,
                                  n_negatives=0))

    value = model.loss(torch.tensor([[0, 3, 4]]), torch.tensor([[0, 4, 8]]))
    value.backward()

    assert value.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_top1_falls_as_the_target_outscores_its_negatives() -> None:
    negatives, valid = torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool)

    losses = [top1_loss(torch.tensor([r]), negatives, valid).item() for r in (-2.0, 0.0, 2.0)]

    assert losses[0] > losses[1] > losses[2]


def test_gru4rec_ranks_against_the_mini_batch_alone_with_top1() -> None:
    model = build("gru4rec")
    inputs = torch.tensor([[0, 3, 4], [5, 6, 7]])
    targets = torch.tensor([[0, 4, 8], [6, 7, 2]])

    hidden = model.encode(inputs)
    scores = model.logits(hidden.reshape(-1, 16)).reshape(2, 3, -1)  # (B, T, n + 1)
    rows = []
    for b, t in [(0, 1), (0, 2), (1, 1), (1, 2)]:  # (1, 0): the other row has no target there
        rows.append((scores[b, t, targets[b, t]], scores[b, t, targets[1 - b, t]]))
    expected = torch.stack([
        top1_loss(p[None], n[None, None], torch.ones(1, 1, dtype=torch.bool)) for p, n in rows
    ]).mean()

    # Extra sampled negatives are GRU4Rec+'s; fit never draws them for TOP1.
    torch.testing.assert_close(model.loss(inputs, targets), expected)


def test_gru4rec_plus_uses_in_batch_and_sampled_negatives() -> None:
    model = build("gru4rec+")
    inputs = torch.tensor([[0, 3, 4], [5, 6, 7]])
    targets = torch.tensor([[0, 4, 8], [6, 7, 2]])
    extra = torch.tensor([9, 10])

    hidden = model.encode(inputs)
    scores = model.logits(hidden.reshape(-1, 16)).reshape(2, 3, -1)  # (B, T, n + 1)
    rows = []
    for b, t in [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]:
        other = targets[1 - b, t]
        negatives = [other] if other > 0 else []
        rows.append((scores[b, t, targets[b, t]], scores[b, t, [*negatives, 9, 10]]))
    expected = torch.stack([
        bpr_max_loss(p[None], n[None], torch.ones(1, len(n), dtype=torch.bool), 1.0)
        for p, n in rows
    ]).mean()

    torch.testing.assert_close(model.loss(inputs, targets, extra), expected)


def test_gru4rec_scores_an_empty_history_alike_in_any_batch() -> None:
    model = build("gru4rec+")
    empty = np.zeros(0, dtype=np.int64)

    alone = model.score([empty])
    beside = model.score([empty, np.array([3, 4, 5])])

    torch.testing.assert_close(beside[:1], alone)


def test_a_gru4rec_saved_before_top1_loads_as_the_cross_entropy_model_it_is() -> None:
    # Saved under the name gru4rec with loss "ce": its config, not its old name, says which.
    model = build("gru4rec-ce")
    config = json.loads(json.dumps(model.config()))

    again = load_baseline("gru4rec", config, model.tensors())

    assert again.name == "gru4rec-ce" and again.settings.loss == "ce"
    assert torch.equal(again.score([np.array([3, 4])]), model.score([np.array([3, 4])]))


def test_gru4rec_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown GRU4Rec loss 'bpr'; choose top1, bpr-max, ce"):
        GRU4RecConfig(num_items=5, loss="bpr")
    with pytest.raises(ConfigError, match="unknown GRU4Rec setting"):
        GRU4RecConfig.from_dict({"num_items": 5, "layers": 2})


# ----------------------------------------------------------------------------------------------
# Next-item examples


def test_windows_cover_every_next_item_once() -> None:
    # n = 10, max_len 4: windows [5, 10), [1, 6), [0, 2) share one item with the next.
    users, starts, ends = next_item_windows(np.array([10, 1, 0, 3]), max_len=4, every=True)

    assert users.tolist() == [0, 0, 0, 3]
    assert starts.tolist() == [5, 1, 0, 0]
    assert ends.tolist() == [10, 6, 2, 3]

    users, starts, ends = next_item_windows(np.array([10, 1, 0, 3]), max_len=4, every=False)
    assert users.tolist() == [0, 3] and starts.tolist() == [5, 0] and ends.tolist() == [10, 3]


def test_next_item_batch_pairs_each_input_with_the_item_after_it() -> None:
    flat = np.array([1, 2, 3, 4, 5, 6])

    inputs, targets = next_item_batch(flat, np.array([0, 3]), np.array([2, 6]))

    assert inputs.tolist() == [[0, 1], [4, 5]]
    assert targets.tolist() == [[0, 2], [5, 6]]


def test_history_tokens_left_pad_and_keep_the_last_items() -> None:
    tokens = left_pad([np.array([1, 2, 3, 4]), np.array([], dtype=np.int64)], max_len=3)
    assert tokens.tolist() == [[2, 3, 4], [0, 0, 0]]
    assert left_pad([np.array([], dtype=np.int64)], max_len=3).tolist() == [[0]]


def test_fit_refuses_a_config_for_other_data(tiny: Interactions) -> None:
    with pytest.raises(Exception, match="set up for 9 items but the data has 6"):
        sasrec.fit(tiny, sasrec_config(9, "ce"), quick(epochs=1))

