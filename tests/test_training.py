"""Cloze training: it learns, it never sees the test item, it resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from bert4rec import evaluation, training
from bert4rec.data import PrepareOptions, prepare_frame
from bert4rec.errors import ConfigError, RunError
from bert4rec.evaluation import evaluate
from bert4rec.model import BERT4RecConfig
from bert4rec.presets import load_preset, parse_assignment
from bert4rec.synthetic import generate
from bert4rec.training import DIVERGED, TrainConfig, Trainer, lr_factor


def planted(num_users: int = 300, num_items: int = 40, seed: int = 0):  # type: ignore[no-untyped-def]
    frame = generate(num_users=num_users, num_items=num_items, min_length=8, max_length=16,
                     follow=1.0, seed=seed)
    return prepare_frame(frame, PrepareOptions(), source="synthetic", synthetic=True)


def small_model(num_items: int) -> BERT4RecConfig:
    return BERT4RecConfig(num_items=num_items, max_len=16, hidden_size=32, num_layers=1,
                          num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)


def without_times(history: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in record.items() if k != "elapsed"} for record in history]


def quick(**overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(epochs=4, batch_size=64, lr=3e-3, warmup_steps=5,
                                     mask_prob=0.3, max_predictions=5, eval_every=1,
                                     patience=0, threads=1, seed=0)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_learns_a_planted_sequential_pattern() -> None:
    data = planted()
    trainer = Trainer(data, small_model(data.num_items), quick(epochs=60, patience=0),
                      progress=False)
    result = trainer.fit()
    test = evaluate(result.model, data, split="test", protocol="full", progress=False)
    # Every next item is the successor in a hidden cycle: a sequence model can be perfect.
    assert test.metrics["HR@1"] > 0.9


def test_test_item_never_reaches_training_or_early_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each user's last item is unique to that user and appears nowhere else.
    rows = []
    for u in range(30):
        rows += [(f"u{u}", f"i{(u + k) % 12}") for k in range(6)] + [(f"u{u}", f"test{u}")]
    data = prepare_frame(pd.DataFrame(rows, columns=["user", "item"]))
    test_ids, _ = data.vocab.encode([f"test{u}" for u in range(30)])
    splits: list[str] = []
    original = evaluation.evaluate

    def spy(*args: object, **kwargs: object) -> evaluation.EvaluationResult:
        splits.append(str(kwargs.get("split")))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "evaluate", spy)
    trainer = Trainer(data, small_model(data.num_items), quick(epochs=2), progress=False)
    assert not np.isin(trainer.train_items, test_ids).any()
    # Validation targets are not training targets either: each window ends before them.
    valid_targets = data.items[data.offsets[1:] - 2]
    assert all(end - start <= 16 for start, end in zip(trainer.starts, trainer.ends, strict=True))
    assert len(trainer.train_items) == data.num_interactions - 2 * data.num_users
    assert set(valid_targets.tolist()) <= set(range(1, data.num_items + 1))
    trainer.fit()
    assert splits and set(splits) == {"valid"}


def test_same_seed_same_metrics() -> None:
    data = planted(num_users=120)
    a = Trainer(data, small_model(data.num_items), quick(epochs=2), progress=False).fit()
    b = Trainer(data, small_model(data.num_items), quick(epochs=2), progress=False).fit()
    assert without_times(a.state.history) == without_times(b.state.history)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_after_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema_decay: float | None
) -> None:
    data = planted(num_users=120)
    config = quick(epochs=4, mask_prob=0.3, ema_decay=ema_decay)
    # Dropout on, so the restored random state matters.
    model_config = BERT4RecConfig(num_items=data.num_items, max_len=16, hidden_size=32,
                                  num_layers=1, num_heads=2, hidden_dropout=0.1,
                                  attention_dropout=0.1)
    straight = Trainer(data, model_config, config, run_dir=tmp_path / "a", progress=False).fit()

    original = Trainer.save_checkpoint

    def save_then_crash(self: Trainer) -> None:
        original(self)
        if self.state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        Trainer(data, model_config, config, run_dir=tmp_path / "b", progress=False).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed_trainer = Trainer(data, model_config, config, run_dir=tmp_path / "b", progress=False)
    resumed = resumed_trainer.fit()
    assert without_times(resumed.state.history) == without_times(straight.state.history)
    assert resumed.valid_metrics == straight.valid_metrics
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])


def test_moving_average_follows_the_steps_and_is_what_the_run_keeps() -> None:
    data = planted(num_users=120)
    trainer = Trainer(data, small_model(data.num_items), quick(epochs=3, ema_decay=0.5),
                      progress=False)
    assert trainer.average is not None
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for n, batch in enumerate(trainer.epoch_batches()[:3]):
        trainer.train_step(batch)
        current = trainer.model.state_dict()
        # The first update copies; then the decay is min(0.5, (1 + n) / (10 + n)) = 0.5 here.
        rate = 1.0 if n == 0 else 1.0 - min(0.5, (1 + n) / (10 + n))
        expected = {k: v + rate * (current[k] - v) for k, v in expected.items()}
    for key, value in trainer.average.module.state_dict().items():
        torch.testing.assert_close(value, expected[key])
        assert not torch.equal(value, trainer.model.state_dict()[key])

    result = Trainer(data, small_model(data.num_items), quick(epochs=3, ema_decay=0.5),
                     progress=False).fit()
    plain = Trainer(data, small_model(data.num_items), quick(epochs=3), progress=False).fit()
    # Training is the same; what is validated and kept is the average.
    assert [r["loss"] for r in result.state.history] == [r["loss"] for r in plain.state.history]
    assert ([r["valid_NDCG@10"] for r in result.state.history]
            != [r["valid_NDCG@10"] for r in plain.state.history])
    rescored = evaluate(result.model, data, split="valid", protocol="full", progress=False)
    assert rescored.metrics["NDCG@10"] == pytest.approx(result.state.best_metric)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_ema_decay_must_be_a_fraction(decay: float) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        quick(ema_decay=decay)


def test_resume_refuses_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = planted(num_users=60)
    Trainer(data, small_model(data.num_items), quick(epochs=1), run_dir=tmp_path,
            progress=False).fit()
    with pytest.raises(Exception, match="other data or other settings"):
        Trainer(data, small_model(data.num_items), quick(epochs=1, lr=1e-2), run_dir=tmp_path,
                progress=False).fit()


def test_resuming_with_more_epochs_says_the_learning_rate_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = planted(num_users=60)
    original = Trainer.save_checkpoint

    def save_then_crash(self: Trainer) -> None:
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1 of 2
        Trainer(data, small_model(data.num_items), quick(epochs=2), run_dir=tmp_path,
                progress=False).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    lines: list[str] = []
    trainer = Trainer(data, small_model(data.num_items), quick(epochs=3), run_dir=tmp_path,
                      progress=False, log=lines.append)
    assert trainer.fit().state.epoch == 3  # it trained on
    total = trainer.total_steps
    assert (f"the learning-rate decay changes from this step on: total steps {total * 2 // 3} "
            f"-> {total}") in lines

    # A run its time budget stopped trains no further: nothing changes, nothing is said.
    budget = tmp_path / "budget"
    Trainer(data, small_model(data.num_items), quick(epochs=1, time_budget=1e-9),
            run_dir=budget, progress=False).fit()
    lines.clear()
    again = Trainer(data, small_model(data.num_items), quick(epochs=2, time_budget=1e-9),
                    run_dir=budget, progress=False, log=lines.append).fit()
    assert again.state.epoch == 1
    assert not any("learning-rate decay" in line for line in lines)


def test_time_budget_stops_and_keeps_best_weights() -> None:
    data = planted(num_users=60)
    result = Trainer(data, small_model(data.num_items), quick(epochs=1000, time_budget=1.0),
                     progress=False).fit()
    assert result.state.stopped == "time budget"
    assert result.state.epoch < 1000
    assert result.valid_metrics["NDCG@10"] == pytest.approx(result.state.best_metric)


def test_early_stopping() -> None:
    data = planted(num_users=60)
    result = Trainer(data, small_model(data.num_items), quick(epochs=200, lr=0.0, patience=2),
                     progress=False).fit()
    assert result.state.stopped == "early stopping"
    assert result.state.epoch == 3  # first evaluation is the best; two more without progress


def test_learning_rate_schedule() -> None:
    assert lr_factor(0, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(50, 10, 0.25) == pytest.approx(0.75)
    assert lr_factor(50, 10, 1.2) == 0.0


def test_weight_decay_skips_layer_norm_and_biases() -> None:
    data = planted(num_users=30)
    trainer = Trainer(data, small_model(data.num_items), quick(), progress=False)
    decay, no_decay = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("norm" not in names[id(p)] and not names[id(p)].endswith("bias")
               for p in decay["params"])
    assert any(names[id(p)] == "output_bias" for p in no_decay["params"])


def test_popularity_bias_init_starts_at_training_frequencies() -> None:
    data = planted()
    trainer = Trainer(data, small_model(data.num_items), quick(popularity_bias_init=True),
                      progress=False)
    bias = trainer.model.output_bias.detach().numpy()
    counts = np.bincount(trainer.train_items, minlength=data.num_items + 1)[1:]
    # Ordered as the training counts (the held-out items are not counted), centred at zero.
    expected = np.log(counts + 1.0)
    np.testing.assert_allclose(bias, expected - expected.mean(), rtol=1e-5, atol=1e-6)
    untouched = Trainer(data, small_model(data.num_items), quick(), progress=False)
    assert not untouched.model.output_bias.detach().abs().sum().item()


@pytest.mark.parametrize("step", [0, -1, False, 2.5, "5"])
def test_window_step_rejects_what_is_not_a_step(step: object) -> None:
    with pytest.raises(ConfigError, match="window_step"):
        quick(window_step=step)


def test_window_step_none_from_the_command_line() -> None:
    assert parse_assignment("window_step=none") == ("window_step", None)
    assert load_preset("ml-1m", {"window_step": None}).train.window_step is None


def test_a_run_diverged_from_the_start_keeps_nothing() -> None:
    data = planted(num_users=60)
    trainer = Trainer(data, small_model(data.num_items), quick(epochs=20, lr=1e30, patience=0),
                      progress=False)
    with pytest.raises(RunError, match=r"diverged .* in epoch 1, before any epoch worth keeping"):
        trainer.fit()


class _DivergesAtEpoch3(Trainer):
    """Trains normally for two epochs, then its weights and loss turn NaN."""

    def train_step(self, *args: Any, **kwargs: Any) -> float:
        if self.state.epoch < 2:
            return super().train_step(*args, **kwargs)
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(float("nan"))
        self.state.step += 1
        return float("nan")


class _DivergesAtOnce(_DivergesAtEpoch3):
    def train_step(self, *args: Any, **kwargs: Any) -> float:
        self.state.epoch = max(self.state.epoch, 2)  # as if two epochs had passed
        return super().train_step(*args, **kwargs)


def test_a_run_diverged_when_its_time_budget_ends_keeps_nothing(tmp_path: Path) -> None:
    data = planted(num_users=60)
    trainer = _DivergesAtOnce(data, small_model(data.num_items),
                              quick(epochs=5, time_budget=1e-9), run_dir=tmp_path,
                              progress=False)
    with pytest.raises(RunError, match="before any epoch worth keeping"):
        trainer.fit()
    assert not (tmp_path / "checkpoint").exists()


def test_a_diverged_run_keeps_its_last_good_weights() -> None:
    data = planted(num_users=60)
    result = _DivergesAtEpoch3(data, small_model(data.num_items),
                               quick(epochs=6, eval_every=1, patience=0), progress=False).fit()
    assert result.state.stopped == DIVERGED and result.state.epoch == 3
    assert result.state.best_epoch in (1, 2)
    assert "valid_NDCG@10" not in result.state.history[-1]  # the NaN epoch is never scored
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert result.valid_metrics["NDCG@10"] == pytest.approx(result.state.best_metric)


def test_the_api_replaces_a_finished_run_only_when_asked(tmp_path: Path) -> None:
    import bert4rec

    data = planted(num_users=60)
    small = {"epochs": 1, "threads": 1, "hidden_size": 16, "max_len": 12, "progress": False,
             "log": None}
    bert4rec.train(data, "demo", tmp_path, **small)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already holds a finished run; pass --overwrite"):
        bert4rec.train(data, "demo", tmp_path, **{**small, "seed": 5})
    assert (tmp_path / "model.safetensors").read_bytes() == before
    bert4rec.train(data, "demo", tmp_path, overwrite=True, **{**small, "seed": 5})
    assert (tmp_path / "model.safetensors").read_bytes() != before
