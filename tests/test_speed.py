"""The speed benchmark's counting and its measurements on a tiny run."""

from __future__ import annotations

import torch

from bert4rec.data import prepare_frame
from bert4rec.model import BERT4RecConfig
from bert4rec.presets import load_preset
from bert4rec.speed import measure_epochs, measure_peak, step_flops, time_to_quality
from bert4rec.synthetic import generate

TINY = {"hidden_size": 16, "max_len": 12, "batch_size": 32, "threads": 1, "epochs": 2,
        "eval_every": 1, "patience": 0, "time_budget": None}


def test_step_flops_by_hand() -> None:
    config = BERT4RecConfig(num_items=10, hidden_size=4, num_layers=1, num_heads=1, max_len=8)
    # B = 2, T = 3, 2 masked; d = 4, f = 16, V = 10.
    layer = 2 * 6 * 4 * 12 + 2 * 6 * 4 * 4 + 4 * 2 * 3 * 3 * 4 + 4 * 6 * 4 * 16
    head = 2 * 2 * 4 * 4 + 2 * 2 * 4 * 10
    assert step_flops(config, batch=2, length=3, masked=2) == 3 * (layer + head)


def test_peak_is_positive() -> None:
    assert measure_peak(torch.device("cpu"), torch.float32, size=64, repeats=2) > 0


def test_epoch_speed_and_time_to_quality() -> None:
    frame = generate(num_users=60, num_items=30, min_length=6, max_length=12, seed=0)
    data = prepare_frame(frame)
    preset = load_preset("demo", TINY)
    speed = measure_epochs(data, preset, epochs=1)
    assert speed.sequences_per_second > 0
    assert speed.padded_tokens_per_second >= speed.tokens_per_second > 0
    # 60 users, one window each: the epoch's sequences over its time.
    assert abs(speed.sequences_per_second * speed.seconds_per_epoch - 60) < 1e-6
    assert speed.achieved_flops > 0 and speed.peak_rss_mb > 0
    reached = time_to_quality(data, preset, target=0.0)
    assert reached["reached_seconds"] is not None and reached["reached_seconds"] > 0
    never = time_to_quality(data, preset, target=1.1)
    assert never["reached_seconds"] is None and never["epochs"] == 2
    # The kept weights are scored on the test split under both protocols.
    assert 0.0 <= never["test"]["full"]["NDCG@10"] <= 1.0
    # 30 items leave no room for the paper's 100 sampled negatives: said, not crashed.
    assert "fewer than 100 negatives" in never["test"]["popularity"]["skipped"]
