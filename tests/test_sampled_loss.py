"""Sampled losses and block-wise scoring, for catalogues too large for a full softmax."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bert4rec.data import Interactions, PrepareOptions, prepare_frame
from bert4rec.errors import ConfigError
from bert4rec.evaluation import evaluate, item_popularity, rank_outcomes, sample_negatives
from bert4rec.model import (
    BERT4Rec,
    BERT4RecConfig,
    NegativeSample,
    gbce_beta,
    gbce_loss,
    sampled_softmax_loss,
)
from bert4rec.recommender import mask_seen, recommend, score_blocks
from bert4rec.split import eval_cases
from bert4rec.synthetic import generate
from bert4rec.training import NegativeSampler, TrainConfig, Trainer


def tiny(num_items: int = 40) -> BERT4Rec:
    torch.manual_seed(0)
    config = BERT4RecConfig(num_items=num_items, max_len=8, hidden_size=16, num_layers=1,
                            num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    return BERT4Rec(config).eval()


# Two rows with masked items 3 and 7 (labels); [MASK] is 41 for 40 items.
TOKENS = torch.tensor([[2, 41, 5, 6], [0, 1, 41, 9]])
LABELS = torch.tensor([[0, 3, 0, 0], [0, 0, 7, 0]])


# ----------------------------------------------------------------------------------------------
# The loss functions


def test_sampled_softmax_by_hand() -> None:
    # One row: target logit 1, negatives 0 and 2 drawn with expected counts 0.5 and 2, and a
    # third negative that is the target itself (an accidental hit, dropped).
    loss = sampled_softmax_loss(
        torch.tensor([1.0]), torch.tensor([[0.0, 2.0, 1.0]]),
        accidental=torch.tensor([[False, False, True]]),
        log_expected=torch.log(torch.tensor([0.5, 2.0, 1.0])),
    )
    # Corrected negatives: 0 - log 0.5 and 2 - log 2, so exp gives 2 and e^2 / 2.
    expected = math.log(math.e + 2.0 + math.e**2 / 2.0) - 1.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = sampled_softmax_loss(torch.tensor([1.0]), torch.tensor([[0.0, 2.0, 1.0]]),
                                 torch.tensor([[False, False, True]]))
    assert plain.item() == pytest.approx(math.log(math.e + 1.0 + math.e**2) - 1.0, rel=1e-6)


def test_gbce_by_hand() -> None:
    # K = 2 negatives of 5 items: alpha = 2 / 4, beta = 0.5 * (0.5 * (1 - 2) + 2) = 0.75.
    beta = gbce_beta(num_negatives=2, num_items=5, t=0.5)
    assert beta == pytest.approx(0.75)
    assert gbce_beta(2, 5, t=0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    loss = gbce_loss(torch.tensor([1.0]), torch.tensor([[0.0, 2.0, 1.0]]),
                     torch.tensor([[False, False, True]]), beta)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (0.75 * softplus(-1.0) + softplus(0.0) + softplus(2.0)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_every_item_once_without_correction_is_the_full_softmax() -> None:
    model = tiny()
    full = model.loss(TOKENS, LABELS)
    everything = torch.arange(1, 41)
    sampled = model.loss(TOKENS, LABELS, NegativeSample(items=everything))
    torch.testing.assert_close(sampled, full, rtol=1e-5, atol=1e-6)
    # Uniform over all n items, drawn n times: log(K q) = log(n / n) = 0, the same again.
    corrected = model.loss(TOKENS, LABELS,
                           NegativeSample(items=everything, log_expected=torch.zeros(40)))
    torch.testing.assert_close(corrected, full, rtol=1e-5, atol=1e-6)


def test_accidental_hits_are_removed() -> None:
    model = tiny()
    one_row = LABELS * torch.tensor([[1], [0]])  # only item 3 is masked
    with_hit = model.loss(TOKENS, one_row, NegativeSample(items=torch.tensor([3, 5, 3, 9])))
    without = model.loss(TOKENS, one_row, NegativeSample(items=torch.tensor([5, 9])))
    torch.testing.assert_close(with_hit, without)
    # A drawn target counted as a negative would raise the loss.
    target = model.logits(model.encode(TOKENS)[one_row > 0])[0]  # (n,)
    counted = torch.logsumexp(target[[2, 4, 2, 8]], 0)
    assert torch.logsumexp(torch.stack([target[2], counted]), 0) - target[2] > without


def test_sampled_loss_never_builds_the_full_logit_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()

    def refuse(hidden: torch.Tensor) -> torch.Tensor:
        raise AssertionError("full logits computed")

    monkeypatch.setattr(model, "logits", refuse)
    loss = model.loss(TOKENS, LABELS, NegativeSample(items=torch.tensor([1, 2, 3])))
    loss.backward()
    assert torch.isfinite(loss)


def test_sampler_draws_by_smoothed_popularity() -> None:
    sampler = NegativeSampler.from_counts(np.array([0, 9, 99]), alpha=1.0)  # q = 1:10:100
    items, log_expected = sampler.draw(20_000, torch.Generator().manual_seed(0))
    assert items.min() >= 1 and items.max() <= 3
    share = np.bincount(items.numpy(), minlength=4)[1:] / 20_000
    np.testing.assert_allclose(share, [1 / 111, 10 / 111, 100 / 111], atol=0.01)
    np.testing.assert_allclose(log_expected[items == 2].numpy(),
                               math.log(20_000 * 10 / 111), rtol=1e-6)
    uniform = NegativeSampler.from_counts(np.array([0, 9, 99]), alpha=0.0)
    _, log_uniform = uniform.draw(6, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(log_uniform.numpy(), math.log(6 / 3), rtol=1e-6)


def test_train_config_checks_the_loss_settings() -> None:
    with pytest.raises(ConfigError, match="loss must be one of softmax, sampled, gbce"):
        TrainConfig(loss="bpr")
    with pytest.raises(ConfigError, match="num_negatives must be >= 1"):
        TrainConfig(loss="sampled", num_negatives=0)
    with pytest.raises(ConfigError, match="gbce_t must be in"):
        TrainConfig(gbce_t=2.0)


# ----------------------------------------------------------------------------------------------
# Block-wise scoring


def histories() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.choice(np.arange(1, 41), size=size, replace=False) for size in (1, 5, 7, 30, 38)]


def test_blocks_concatenate_to_the_scores() -> None:
    model = tiny()
    rows = histories()
    blocks = list(model.score_chunks(rows, 7))
    assert [start for start, _ in blocks] == [0, 7, 14, 21, 28, 35]
    assert all(block.shape == (5, 7) for _, block in blocks[:-1])
    joined = torch.cat([block for _, block in blocks], dim=1)
    torch.testing.assert_close(joined, model.score(rows), rtol=1e-6, atol=1e-6)
    # A catalogue that fits in one chunk is scored exactly as before.
    [(start, whole)] = list(model.score_chunks(rows, 41))
    assert start == 0 and torch.equal(whole, model.score(rows))


def test_mask_seen_on_a_block() -> None:
    block = torch.zeros(2, 4)  # columns = items 4..7
    mask_seen(block, [np.array([1, 5]), np.array([7, 8])], start=4)
    assert torch.isinf(block).tolist() == [[False, True, False, False],
                                           [False, False, False, True]]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_chunked_top_k_equals_unchunked(exclude_seen: bool) -> None:
    model = tiny()
    rows = histories()
    for candidates in (None, np.array([2, 3, 5, 8, 13, 21, 34, 40])):
        # k = 6 against 8 candidates: a user who saw most of them gets padding (id 0, -inf).
        whole = recommend(model, rows, k=6, exclude_seen=exclude_seen, candidates=candidates)
        chunked = recommend(model, rows, k=6, exclude_seen=exclude_seen,
                            candidates=candidates, item_chunk=7, batch_size=2)
        np.testing.assert_array_equal(chunked[0], whole[0])
        # Block products may round differently in the last bits from the whole one.
        np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-6)
    seen = recommend(model, rows, k=6, item_chunk=5)[0]
    assert not any(set(ids) & set(h.tolist()) for ids, h in zip(seen, rows, strict=True))


class _Tied:
    """Scores in blocks: items 1-20 tie at 5, 21-23 at 7, the rest at 1."""

    num_items = 33

    def scores(self, rows: int) -> torch.Tensor:
        row = torch.tensor([-torch.inf] + [5.0] * 20 + [7.0] * 3 + [1.0] * 10)
        return row.repeat(rows, 1)

    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.scores(len(histories))

    def score_chunks(self, histories: list[np.ndarray], chunk: int
                     ) -> Iterator[tuple[int, torch.Tensor]]:
        scores = self.scores(len(histories))
        for start in range(0, scores.shape[1], chunk):
            yield start, scores[:, start : start + chunk]


def test_ties_go_to_the_lower_id_whatever_the_blocks() -> None:
    rows = [np.array([21, 3]), np.zeros(0, dtype=np.int64)]
    expected = [[22, 23, 1, 2, 4, 5], [21, 22, 23, 1, 2, 3]]
    for chunk in (65_536, 34, 16, 7, 3, 1):
        ids, _ = recommend(_Tied(), rows, k=6, item_chunk=chunk)
        assert ids.tolist() == expected, chunk


def test_a_nan_score_is_never_recommended() -> None:
    model = _Tied()
    row = model.scores(1)
    row[0, 22] = torch.nan  # item 22 of the three best
    model.scores = lambda rows: row.repeat(rows, 1)  # type: ignore[method-assign]
    for chunk in (65_536, 7):
        ids, scores = recommend(model, [np.zeros(0, dtype=np.int64)], k=4, item_chunk=chunk)
        assert ids.tolist() == [[21, 23, 1, 2]] and not np.isnan(scores).any()


@pytest.fixture(scope="module")
def medium() -> Interactions:
    frame = generate(num_users=60, num_items=40, min_length=5, max_length=15, seed=1)
    return prepare_frame(frame, PrepareOptions(min_user_count=0))


def test_chunked_rank_counting_equals_unchunked(medium: Interactions) -> None:
    model = tiny(medium.num_items)
    cases = eval_cases(medium, "test")
    negatives = sample_negatives(medium, cases.users, 20, item_popularity(medium), seed=0)
    for protocol, sampled in (("full", None), ("popularity", negatives)):
        whole = rank_outcomes(model, medium, cases, protocol, sampled, progress=False)  # type: ignore[arg-type]
        for chunk in (1, 6, 40):
            chunked = rank_outcomes(model, medium, cases, protocol, sampled,  # type: ignore[arg-type]
                                    batch_size=16, progress=False, item_chunk=chunk)
            np.testing.assert_array_equal(chunked[0], whole[0])
            np.testing.assert_array_equal(chunked[1], whole[1])
    assert whole[0].max() > 0  # the counts are not trivially zero


def test_models_without_blocks_are_scored_whole(medium: Interactions) -> None:
    class Plain:
        num_items = medium.num_items

        def score(self, rows: list[np.ndarray]) -> torch.Tensor:
            return torch.arange(medium.num_items + 1.0).repeat(len(rows), 1)

    assert [start for start, _ in score_blocks(Plain(), [np.array([1])], chunk=3)] == [0]
    ids, _ = recommend(Plain(), [np.array([40])], k=2, item_chunk=3)
    assert ids.tolist() == [[39, 38]]


# ----------------------------------------------------------------------------------------------
# Training


def planted() -> Interactions:
    frame = generate(num_users=300, num_items=40, min_length=8, max_length=16, follow=1.0, seed=0)
    return prepare_frame(frame, PrepareOptions(), source="synthetic", synthetic=True)


def small_model(num_items: int, hidden_size: int = 32) -> BERT4RecConfig:
    return BERT4RecConfig(num_items=num_items, max_len=16, hidden_size=hidden_size, num_layers=1,
                          num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)


def test_learns_the_planted_pattern_with_the_sampled_loss() -> None:
    data = planted()  # 40 items; 24 negatives drawn with replacement per batch
    config = TrainConfig(epochs=50, batch_size=32, lr=5e-3, warmup_steps=5, mask_prob=0.3,
                         max_predictions=5, eval_every=5, patience=0, threads=1, seed=0,
                         loss="sampled", num_negatives=24, sampling_alpha=0.5)
    result = Trainer(data, small_model(data.num_items, 64), config, progress=False).fit()
    test = evaluate(result.model, data, split="test", protocol="full", progress=False)
    # Every next item is the successor in a hidden cycle (seeds 0-2 reach 0.91-0.96).
    assert test.metrics["HR@1"] > 0.8


def test_validation_on_a_sample_of_users() -> None:
    data = planted()
    config = TrainConfig(epochs=1, batch_size=64, threads=1, valid_users=50, loss="sampled")
    trainer = Trainer(data, small_model(data.num_items), config, progress=False)
    assert trainer.valid_users is not None and len(trainer.valid_users) == 50
    result = evaluate(trainer.model, data, split="valid", progress=False,
                      users=trainer.valid_users)
    assert result.users == 50


def test_checkpoints_of_the_default_loss_keep_their_identity() -> None:
    data = planted()
    default = Trainer(data, small_model(data.num_items), TrainConfig(threads=1), progress=False)
    assert "loss" not in default._identity()["train"]  # as written before the setting existed
    sampled = Trainer(data, small_model(data.num_items), TrainConfig(threads=1, loss="sampled"),
                      progress=False)
    assert sampled._identity()["train"]["loss"] == "sampled"


def test_no_masked_position_is_a_loss_of_zero() -> None:
    from bert4rec.model import gbce_loss, sampled_softmax_loss

    targets = torch.zeros(0, requires_grad=True)
    negatives = torch.zeros(0, 5)
    accidental = torch.zeros(0, 5, dtype=torch.bool)
    for loss in (sampled_softmax_loss(targets, negatives, accidental),
                 gbce_loss(targets, negatives, accidental, beta=0.5)):
        assert loss.item() == 0.0
        loss.backward()  # the graph is kept
