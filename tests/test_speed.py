"""The speed benchmark's counting and its measurements on a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bert4rec.data import prepare_frame
from bert4rec.evaluation import evaluate
from bert4rec.model import BERT4RecConfig
from bert4rec.presets import load_preset
from bert4rec.runs import load_model
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
    # A sampled loss with 3 negatives scores each prediction against 4 items, not 10.
    sampled = 2 * 2 * 4 * 4 + 2 * 2 * 4 * 4
    assert step_flops(config, batch=2, length=3, masked=2, scored=4) == 3 * (layer + sampled)


def test_peak_is_positive() -> None:
    assert measure_peak(torch.device("cpu"), torch.float32, size=64, repeats=2) > 0


def test_epoch_speed_and_time_to_quality(tmp_path: Path) -> None:
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
    never = time_to_quality(data, preset, target=1.1, keep=tmp_path / "run")
    assert never["reached_seconds"] is None and never["epochs"] == 2
    # The kept weights are scored on the validation and test splits under both protocols.
    assert never["valid"]["full"]["NDCG@10"] == pytest.approx(never["best_valid_NDCG@10"])
    assert 0.0 <= never["test"]["full"]["NDCG@10"] <= 1.0
    # 30 items leave no room for the paper's 100 sampled negatives: said, not crashed.
    assert "use at most 18 negatives, not 100" in never["test"]["popularity"]["skipped"]
    # ... and saved as a run that scores the same.
    model, _ = load_model(tmp_path / "run")
    again = evaluate(model, data, split="test", protocol="full", progress=False).metrics
    assert again["NDCG@10"] == pytest.approx(never["test"]["full"]["NDCG@10"])


def test_keep_needs_a_target_and_a_free_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bert4rec.cli import main
    from bert4rec.synthetic import write

    path = write(tmp_path / "log.csv", generate(num_users=20, num_items=30, max_length=12))
    assert main(["benchmark", "speed", "--data", str(path), "--keep", str(tmp_path / "run")]) == 2
    assert "give --target too" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "run.json").write_text("{}")
    assert main(["benchmark", "speed", "--data", str(path), "--target", "0.1",
                 "--keep", str(tmp_path / "taken")]) == 2
    assert (tmp_path / "taken" / "run.json").read_text() == "{}"  # nothing trained, nothing lost
    assert main(["benchmark", "speed", "--data", str(path), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert main(["benchmark", "speed", "--data", str(path), "--output", str(tmp_path)]) == 2
    assert "is a folder; name a file to write" in capsys.readouterr().err
