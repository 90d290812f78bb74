"""Warm starts of the item parameters: read from training sequences only, deterministic, and
what they claim (co-occurring items start close)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bert4rec.data import PrepareOptions, prepare_frame
from bert4rec.errors import ConfigError
from bert4rec.model import BERT4RecConfig
from bert4rec.split import train_sequences
from bert4rec.synthetic import generate
from bert4rec.training import TrainConfig, Trainer
from bert4rec.warmstart import cooccurrence_embeddings, popularity_bias


def two_groups(users: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences that each stay inside one of two item groups, 1-10 or 11-20; item 21 is never
    seen."""
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(1, 11, size=12) + 10 * (u % 2) for u in range(users)]
    return np.concatenate(sequences), np.full(users, 12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cooccurring_items_start_close_and_unseen_items_at_zero() -> None:
    items, lengths = two_groups()

    start = cooccurrence_embeddings(items, lengths, num_items=21, dim=4, std=0.02)

    assert start.shape == (21, 4) and start.dtype == np.float32
    assert not start[20].any()  # item 21 occurs nowhere
    assert start.std() == pytest.approx(0.02, rel=0.2)
    within = [cosine(start[i], start[j]) for i in range(10) for j in range(i + 1, 10)]
    across = [cosine(start[i], start[j]) for i in range(10) for j in range(10, 20)]
    assert min(within) > max(across)


def test_cooccurrence_ignores_pairs_across_users_and_is_deterministic() -> None:
    # Two users of one item each: adjacent in the array, never in one sequence.
    alone = cooccurrence_embeddings(np.array([1, 2]), np.array([1, 1]), num_items=2, dim=1,
                                    std=0.02)
    assert not alone.any()
    items, lengths = two_groups(seed=3)
    first = cooccurrence_embeddings(items, lengths, 21, 4, 0.02, seed=5)
    again = cooccurrence_embeddings(items, lengths, 21, 4, 0.02, seed=5)
    np.testing.assert_array_equal(first, again)


def test_popularity_bias_is_centred_log_count() -> None:
    bias = popularity_bias(np.array([1, 1, 1, 3]), num_items=3)
    expected = np.log(np.array([3.0, 0.0, 1.0]) + 1.0)
    np.testing.assert_allclose(bias, expected - expected.mean(), rtol=1e-6)


def test_trainer_starts_from_training_cooccurrence_only() -> None:
    frame = generate(num_users=120, num_items=30, min_length=8, max_length=14, seed=2)
    data = prepare_frame(frame, PrepareOptions(), source="synthetic", synthetic=True)
    model = BERT4RecConfig(num_items=data.num_items, max_len=16, hidden_size=8, num_layers=1,
                           num_heads=2)
    config = TrainConfig(epochs=1, threads=1, item_embedding_init="cooccurrence")

    trainer = Trainer(data, model, config, progress=False)

    train = train_sequences(data)  # validation and test items held out
    expected = cooccurrence_embeddings(train.items, train.lengths, data.num_items, 8,
                                       std=model.init_std, seed=0)
    weight = trainer.model.item_embedding.weight.detach()
    np.testing.assert_allclose(weight[1 : data.num_items + 1].numpy(), expected, rtol=1e-6)
    assert torch.equal(weight[0], torch.zeros(8))  # padding stays zero
    with pytest.raises(ConfigError, match="item_embedding_init"):
        TrainConfig(item_embedding_init="svd")
