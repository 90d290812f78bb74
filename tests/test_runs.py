"""Run directories: a saved model comes back identical, and wrong or foreign runs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.checkpoints import mark_replacing, remove_checkpoint, write_checkpoint
from bert4rec.data import Interactions, PrepareOptions, prepare_frame
from bert4rec.errors import RunError
from bert4rec.runs import RUN_FILE, check_output, load_model, read_run, save_run
from bert4rec.split import train_sequences

KEEP_ALL = PrepareOptions(min_user_count=0)


def save_pop(run_dir: Path, data: Interactions) -> PopularityRecommender:
    model = PopularityRecommender.fit(train_sequences(data), data.num_items)
    save_run(run_dir, model.name, model.config(), model.tensors(), data, KEEP_ALL,
             metrics={"valid_full": {"HR@10": 0.5}}, seed=3)
    return model


def edit_run_json(run_dir: Path, **changes: object) -> None:
    meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    meta.update(changes)
    (run_dir / RUN_FILE).write_text(json.dumps(meta), encoding="utf-8")


def test_saved_model_scores_identically(tmp_path: Path, tiny: Interactions) -> None:
    model = save_pop(tmp_path / "run", tiny)
    histories = [np.array([1, 2]), np.array([], dtype=np.int64)]

    loaded, info = load_model(tmp_path / "run")

    assert torch.equal(loaded.score(histories), model.score(histories))
    assert info.model == "pop"
    assert info.vocab.item_ids.tolist() == ["a", "b", "c", "d", "e", "f"]
    assert info.prepare == KEEP_ALL
    assert info.data["fingerprint"] == tiny.fingerprint
    assert (info.data["users"], info.data["items"]) == (4, 6)
    assert info.metrics == {"valid_full": {"HR@10": 0.5}}
    assert info.provenance["seed"] == 3
    info.check_data(tiny)


def test_integer_item_ids_come_back_as_integers(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": [1, 1, 2], "item": [30, 7, 30]})
    data = prepare_frame(frame, KEEP_ALL)
    save_pop(tmp_path / "run", data)

    _, info = load_model(tmp_path / "run")

    assert info.vocab.decode(np.array([1, 2])) == [7, 30]
    assert info.vocab.encode(["30", 7, "x"])[0].tolist() == [2, 1]


def test_other_data_is_refused(
    tmp_path: Path, tiny: Interactions, tiny_frame: pd.DataFrame
) -> None:
    save_pop(tmp_path / "run", tiny)
    _, info = load_model(tmp_path / "run")
    other = prepare_frame(tiny_frame.iloc[:-1], KEEP_ALL, source="other.csv")

    with pytest.raises(RunError, match=r"other\.csv does not match the data .*run was trained on "
                       r"\(data frame: 4 users, 6 items; given: 4 users, 5 items\)"):
        info.check_data(other)
    # Same users and items, one user's order changed: still other data.
    reordered = tiny_frame.assign(timestamp=tiny_frame["timestamp"].where(
        tiny_frame["user"] != "bob", -tiny_frame["timestamp"]))
    with pytest.raises(RunError, match="does not match"):
        info.check_data(prepare_frame(reordered, KEEP_ALL))


def test_unknown_format_version_is_refused(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)
    edit_run_json(tmp_path / "run", format_version=99)

    with pytest.raises(RunError, match=r"has run format version 99; this bert4rec \(0\.1\.0\) "
                       "reads version 1. Use a matching bert4rec version or train the run again"):
        load_model(tmp_path / "run")


def test_unknown_model_is_refused(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)
    edit_run_json(tmp_path / "run", model="mystery")

    with pytest.raises(RunError, match="unknown model 'mystery'"):
        load_model(tmp_path / "run")


def test_directory_without_run_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"is not a run directory \(no run\.json\); train one first"):
        load_model(tmp_path)


def test_unfinished_run_is_refused(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"x": torch.zeros(1)}, {"identity": {}}, step=1)

    with pytest.raises(RunError, match="holds an unfinished training run; resume it"):
        read_run(tmp_path)


def test_only_training_goes_on_replacing_a_finished_run(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, {"x": torch.zeros(1)}, {"identity": {}}, step=1)

    # A checkpoint beside a finished run, not marked as replacing it: the run stays.
    for resumable in (False, True):
        with pytest.raises(RunError, match="already holds a finished run"):
            check_output(run_dir, overwrite=False, resumable=resumable)
    mark_replacing(run_dir)  # what train --overwrite notes before it starts
    check_output(run_dir, overwrite=False, resumable=True)
    with pytest.raises(RunError, match="already holds a finished run"):
        check_output(run_dir, overwrite=False)  # saving anything else there is still refused
    remove_checkpoint(run_dir)
    with pytest.raises(RunError, match="already holds a finished run"):
        check_output(run_dir, overwrite=False, resumable=True)


def test_damaged_run_json_is_refused(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)
    (tmp_path / "run" / RUN_FILE).write_text("{not json", encoding="utf-8")

    with pytest.raises(RunError, match="is damaged"):
        load_model(tmp_path / "run")


def test_missing_weights_are_refused(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)
    (tmp_path / "run" / "model.safetensors").unlink()

    with pytest.raises(RunError, match="is incomplete or damaged"):
        load_model(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated weights", "wrong weights", "no model name"])
def test_damaged_weights_or_settings_are_refused(tmp_path: Path, tiny: Interactions,
                                                damage: str) -> None:
    save_pop(tmp_path / "run", tiny)
    weights = tmp_path / "run" / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:20])
    elif damage == "wrong weights":
        save_file({"other": torch.zeros(2)}, str(weights))
    else:
        meta = json.loads((tmp_path / "run" / RUN_FILE).read_text(encoding="utf-8"))
        del meta["model"]
        (tmp_path / "run" / RUN_FILE).write_text(json.dumps(meta), encoding="utf-8")

    with pytest.raises(RunError, match=r"damaged|do not match"):
        load_model(tmp_path / "run")


def test_finished_run_is_not_replaced_without_overwrite(tmp_path: Path, tiny: Interactions) -> None:
    save_pop(tmp_path / "run", tiny)

    with pytest.raises(RunError, match="already holds a finished run; pass --overwrite"):
        check_output(tmp_path / "run", overwrite=False)
    check_output(tmp_path / "run", overwrite=True)
    check_output(tmp_path / "new", overwrite=False)


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")

    with pytest.raises(RunError, match="exists and is not a directory"):
        check_output(tmp_path / "file", overwrite=False)
