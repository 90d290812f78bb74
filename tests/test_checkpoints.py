"""Checkpoints of unfinished runs: every trainable baseline resumes to the model it would have
ended with unstopped, and a checkpoint that is damaged, mixed or of another run is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bert4rec import checkpoints
from bert4rec.baselines import TRAINABLE, fit_pop, save_baseline, train_baseline
from bert4rec.data import Interactions, PrepareOptions, prepare_frame
from bert4rec.errors import CheckpointError, RunError
from bert4rec.synthetic import generate

Watch = Callable[[list[int]], list[int]]  # the watch_checkpoints fixture
SMALL: dict[str, Any] = {"epochs": 3, "batch_size": 32, "eval_every": 1, "patience": 0,
                         "threads": 1, "device": "cpu", "seed": 0, "hidden_size": 16}


@pytest.fixture(scope="module")
def data() -> Interactions:
    return prepare_frame(generate(num_users=40, num_items=25, min_length=5, max_length=10,
                                  seed=3))


def settings(name: str) -> dict[str, Any]:
    small = dict(SMALL)
    if name in ("bpr", "fpmc", "ncf", "caser"):  # no hidden layer to size; embeddings instead
        small.pop("hidden_size")
        small["embedding_size"] = 16
    return small


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_stopped_baseline_resumes_to_the_model_it_would_have_ended_with(
    name: str, data: Interactions, tmp_path: Path, watch_checkpoints: Watch
) -> None:
    straight, straight_fit, _ = train_baseline(name, data, settings(name))
    written = watch_checkpoints([2])
    with pytest.raises(KeyboardInterrupt):
        train_baseline(name, data, settings(name), run_dir=tmp_path)
    written.clear()
    lines: list[str] = []

    resumed, resumed_fit, _ = train_baseline(name, data, settings(name), log=lines.append,
                                             run_dir=tmp_path)

    assert lines[0] == f"resumed from the checkpoint in {tmp_path} at epoch 2"
    assert written == [3]  # only the third epoch was trained again
    assert resumed_fit.history == straight_fit.history
    assert resumed_fit.valid_metrics == straight_fit.valid_metrics
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_more_epochs_go_on_and_other_settings_are_refused(
    data: Interactions, tmp_path: Path, watch_checkpoints: Watch
) -> None:
    train_baseline("gru4rec+", data, {**SMALL, "epochs": 1}, run_dir=tmp_path)
    assert checkpoints.read_checkpoint(tmp_path) is not None  # saving the run removes it

    with pytest.raises(RunError, match="unfinished run of another model"):
        train_baseline("gru4rec+", data, {**SMALL, "epochs": 1, "lr": 0.5}, run_dir=tmp_path)
    with pytest.raises(RunError, match="unfinished run of another model"):
        train_baseline("gru4rec", data, {**SMALL, "epochs": 1}, run_dir=tmp_path)
    written = watch_checkpoints([])
    _, fitted, _ = train_baseline("gru4rec+", data, {**SMALL, "epochs": 2, "patience": 5},
                                  run_dir=tmp_path)
    assert written == [2]
    assert [record["epoch"] for record in fitted.history] == [1, 2]


@pytest.mark.parametrize(("left_out", "says"), [
    ("best.", "the best weights do not match the model"),
    ("optim.", "the optimiser state is missing"),
])
def test_a_checkpoint_missing_tensors_is_refused_before_training(
    data: Interactions, tmp_path: Path, left_out: str, says: str
) -> None:
    train_baseline("gru4rec+", data, {**SMALL, "epochs": 1}, run_dir=tmp_path)
    meta, tensors = checkpoints.read_checkpoint(tmp_path)  # type: ignore[misc]
    kept = {k: v for i, (k, v) in enumerate(tensors.items())
            if not (k.startswith(left_out) and (left_out == "optim." or i % 2))}
    checkpoints.write_checkpoint(tmp_path, kept, meta, meta["checkpoint_step"])
    with pytest.raises(CheckpointError, match=says):
        train_baseline("gru4rec+", data, {**SMALL, "epochs": 2}, run_dir=tmp_path)


def test_a_finished_checkpoint_trains_no_further(
    data: Interactions, tmp_path: Path, watch_checkpoints: Watch
) -> None:
    # Stopped by its time budget, a run is finished even if it is asked for more epochs.
    train_baseline("fpmc", data, {**settings("fpmc"), "time_budget": 1e-9}, run_dir=tmp_path)
    written = watch_checkpoints([])
    _, fitted, _ = train_baseline("fpmc", data, {**settings("fpmc"), "time_budget": 1e-9},
                                  run_dir=tmp_path)
    assert written == [] and fitted.stopped == "time budget" and fitted.epochs == 1


def checkpoint_of(tmp_path: Path) -> Path:
    checkpoints.write_checkpoint(tmp_path, {"x": torch.zeros(2)}, {"identity": {"a": (1, 2)}},
                                 step=5)
    return tmp_path / checkpoints.CHECKPOINT_DIR


def test_a_checkpoint_round_trips_and_its_identity_survives_json(tmp_path: Path) -> None:
    checkpoint_of(tmp_path)
    saved = checkpoints.read_checkpoint(tmp_path)
    assert saved is not None
    meta, tensors = saved
    assert meta["checkpoint_step"] == 5 and torch.equal(tensors["x"], torch.zeros(2))
    checkpoints.check_identity(meta, {"a": (1, 2)}, tmp_path)  # a tuple comes back a list
    with pytest.raises(RunError, match="pass --overwrite"):
        checkpoints.check_identity(meta, {"a": (1, 3)}, tmp_path)


def test_a_damaged_or_mixed_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    folder = checkpoint_of(tmp_path)
    meta = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**meta, "checkpoint_step": 4}))
    mixed = r"state\.json is of step 4 but state-5\.safetensors of step 5"
    with pytest.raises(RunError, match=mixed):  # stopped between writing the two files
        checkpoints.read_checkpoint(tmp_path)

    (folder / "state-5.safetensors").write_bytes(b"not tensors")
    with pytest.raises(CheckpointError, match="is damaged"):
        checkpoints.read_checkpoint(tmp_path)
    checkpoint_of(tmp_path)
    (folder / "state.json").write_text("[1]")
    with pytest.raises(CheckpointError, match=r"state\.json is not a JSON object"):
        checkpoints.read_checkpoint(tmp_path)
    with pytest.raises(RunError, match="is damaged"), checkpoints.restoring(tmp_path):
        {}["param_groups"]  # an entry missing from the JSON


def test_a_checkpoint_from_before_the_step_check_is_checked_by_its_progress(
    tmp_path: Path,
) -> None:
    folder = checkpoint_of(tmp_path)  # tensors of step 5
    (folder / "state-5.safetensors").rename(folder / "state.safetensors")  # the old name
    for progress in ({"state": {"step": 5}}, {"result": {"epochs": 5}}, {}):
        (folder / "state.json").write_text(json.dumps(progress))
        assert checkpoints.read_checkpoint(tmp_path) is not None
    (folder / "state.json").write_text(json.dumps({"state": {"step": 4}}))
    with pytest.raises(CheckpointError, match="of step 4 but"):
        checkpoints.read_checkpoint(tmp_path)


def test_saving_pop_leaves_another_models_checkpoint(tmp_path: Path, data: Interactions) -> None:
    checkpoint_of(tmp_path)
    model, fitted = fit_pop(data)
    save_baseline(tmp_path, model, fitted, data, PrepareOptions())
    assert checkpoints.read_checkpoint(tmp_path) is not None


def test_a_checkpoint_stopped_midway_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint_of(tmp_path)  # step 5

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "write_json", stopped)  # stopped before the JSON
    with pytest.raises(KeyboardInterrupt):
        checkpoints.write_checkpoint(tmp_path, {"x": torch.ones(2)}, {"identity": {}}, step=6)
    monkeypatch.undo()
    meta, tensors = checkpoints.read_checkpoint(tmp_path)  # type: ignore[misc]
    assert meta["checkpoint_step"] == 5 and torch.equal(tensors["x"], torch.zeros(2))
    checkpoints.write_checkpoint(tmp_path, {"x": torch.ones(2)}, {"identity": {}}, step=7)
    folder = tmp_path / checkpoints.CHECKPOINT_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["state-7.safetensors", "state.json"]


def test_a_checkpoint_naming_a_path_is_damaged(tmp_path: Path) -> None:
    folder = checkpoint_of(tmp_path)
    meta = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**meta, "tensors": "../../x.safetensors"}))
    with pytest.raises(CheckpointError, match="names no tensors file"):
        checkpoints.read_checkpoint(tmp_path)


def test_remove_checkpoint_takes_leftovers_of_a_write_cut_short(tmp_path: Path) -> None:
    folder = checkpoint_of(tmp_path)
    (folder / ".state-6.safetensors.abc123.tmp").write_bytes(b"half")
    (folder / "state-6.safetensors").write_bytes(b"written, not yet named by the JSON")
    checkpoints.remove_checkpoint(tmp_path)
    assert not folder.exists()
    checkpoints.remove_checkpoint(tmp_path)  # nothing there: nothing to do
