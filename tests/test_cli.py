"""The command line, run in-process: exit codes, what goes to stdout and stderr, and that its
numbers are the library's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bert4rec import checkpoints, synthetic
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.cli import main
from bert4rec.data import SYNTHETIC_MARKER, Interactions, load_interactions
from bert4rec.evaluation import METRICS, evaluate
from bert4rec.recommender import recommend
from bert4rec.runs import load_model
from bert4rec.split import train_sequences

FALLBACK_NOTE = "no known item in the history: these are the most popular items in training"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A plain (unmarked) CSV log of 40 users over 30 items."""
    frame = synthetic.generate(num_users=40, num_items=30, min_length=5, max_length=12, seed=2)
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def run(tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "run"
    assert main(["train", "--data", str(log), "--output", str(out)]) == 0
    capsys.readouterr()
    return out


def library_pop(log: Path) -> tuple[PopularityRecommender, Interactions]:
    data = load_interactions(log)
    return PopularityRecommender.fit(train_sequences(data), data.num_items), data


def test_train_pop_writes_a_run(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"

    code = main(["train", "--data", str(log), "--model", "pop", "--output", str(out)])

    err = capsys.readouterr().err
    assert code == 0
    assert "40 users, 30 items" in err
    assert "trained pop" in err
    assert f"saved {out}" in err
    assert "SYNTHETIC" not in err
    meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
    model, data = library_pop(log)
    valid = evaluate(model, data, split="valid", progress=False)
    assert meta["model"] == "pop"
    assert meta["data"]["fingerprint"] == data.fingerprint
    assert meta["metrics"]["valid_full"] == pytest.approx(valid.metrics)


def test_evaluate_json_is_one_object_with_the_library_metrics(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--run", str(run), "--data", str(log), "--json"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.endswith("\n") and out.count("\n") == 1
    result = json.loads(out)
    model, data = library_pop(log)
    expected = evaluate(model, data, split="test", progress=False)
    assert (result["protocol"], result["split"], result["users"]) == ("full", "test", 40)
    assert list(result["metrics"]) == list(METRICS)
    assert result["metrics"] == pytest.approx(expected.metrics, abs=1e-6)
    assert (result["model"], result["synthetic"]) == ("pop", False)


def test_evaluate_validation_split_matches_training_report(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--run", str(run), "--data", str(log), "--split", "valid",
                 "--json"]) == 0

    result = json.loads(capsys.readouterr().out)
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert result["split"] == "valid"
    assert result["metrics"] == pytest.approx(meta["metrics"]["valid_full"], abs=1e-6)


def test_evaluate_sampled_protocol(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--run", str(run), "--data", str(log), "--protocol", "popularity",
            "--negatives", "5", "--seed", "4", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)

    model, data = library_pop(log)
    expected = evaluate(model, data, protocol="popularity", num_negatives=5, seed=4,
                        progress=False)
    assert (first["protocol"], first["negatives"], first["seed"]) == ("popularity", 5, 4)
    assert first["metrics"] == pytest.approx(expected.metrics, abs=1e-6)
    assert second["metrics"] == first["metrics"]


def test_evaluate_text_output(run: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--run", str(run), "--data", str(log)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"pop on {log}: full protocol, test split, 40 users"
    assert [line.split()[0] for line in lines[1:]] == list(METRICS)


def test_evaluate_refuses_other_data(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.csv"
    synthetic.generate(num_users=10, num_items=30, min_length=5, max_length=8,
                       seed=9).to_csv(other, index=False)

    code = main(["evaluate", "--run", str(run), "--data", str(other)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "bert4rec evaluate: error: " in captured.err
    assert f"{other} does not match the data {run} was trained on" in captured.err


def test_evaluate_refuses_the_same_log_prepared_otherwise(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--run", str(run), "--data", str(log), "--min-user-count", "8"])

    assert code == 2
    assert "does not match the data" in capsys.readouterr().err


def test_evaluate_missing_run(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--run", str(tmp_path / "none"), "--data", str(log)])

    assert code == 2
    assert "is not a run directory (no run.json)" in capsys.readouterr().err


def test_per_user_rows(run: Path, log: Path, tmp_path: Path) -> None:
    parquet, csv = tmp_path / "per_user.parquet", tmp_path / "per_user.csv"
    assert main(["evaluate", "--run", str(run), "--data", str(log), "--per-user",
                 str(parquet)]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(log), "--per-user", str(csv)]) == 0

    rows = pd.read_parquet(parquet)
    model, data = library_pop(log)
    expected = evaluate(model, data, progress=False).per_user
    assert rows.columns.tolist() == ["user", "greater", "ties", *METRICS]
    assert len(rows) == 40
    assert rows["user"].tolist() == expected["user"].tolist()
    np.testing.assert_allclose(rows[list(METRICS)], expected[list(METRICS)])
    assert pd.read_csv(csv)["greater"].tolist() == expected["greater"].tolist()


def test_unknown_flag_exits_with_status_2(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(run), "--data", str(log), "--no-such-flag"])

    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_train_does_not_replace_a_finished_run(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (run / "run.json").read_text(encoding="utf-8")

    code = main(["train", "--data", str(log), "--output", str(run)])

    assert code == 2
    assert "already holds a finished run; pass --overwrite" in capsys.readouterr().err
    assert (run / "run.json").read_text(encoding="utf-8") == before
    assert main(["train", "--data", str(log), "--output", str(run), "--overwrite"]) == 0


def test_an_interrupted_baseline_resumes_where_it_stopped(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str],
    watch_checkpoints: Callable[[list[int]], list[int]],
) -> None:
    out = tmp_path / "run"
    train = ["train", "--data", str(log), "--model", "fpmc", "--epochs", "3", "--output",
             str(out)]
    stops = [1]  # Ctrl-C just after the first epoch's checkpoint, each time one is added
    watch_checkpoints(stops)
    assert main(train) == 130
    assert f"the last finished epoch is saved in {out / 'checkpoint'}" in capsys.readouterr().err

    assert main(train) == 0
    err = capsys.readouterr().err
    assert f"resumed from the checkpoint in {out} at epoch 1" in err
    assert "trained fpmc: 3 epochs" in err
    assert not (out / "checkpoint").exists()  # the finished run keeps no checkpoint

    # Replacing a finished run, stopped: the finished run stays until the new one is done, and
    # the same command without --overwrite goes on with the new one.
    stops.append(1)
    assert main([*train, "--set", "lr=0.01", "--overwrite"]) == 130
    assert "Run the same command again without --overwrite (which starts over) to resume" in \
        capsys.readouterr().err
    assert (out / "run.json").exists()
    assert main([*train, "--set", "lr=0.01"]) == 0
    assert "resumed from the checkpoint" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["provenance"]["fit"]["lr"] == 0.01

    stops.append(1)
    assert main([*train, "--overwrite"]) == 130
    assert main([*train, "--overwrite"]) == 0  # starts over: nothing resumed
    assert "resumed" not in capsys.readouterr().err


def test_pop_does_not_replace_an_unfinished_run_unasked(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("bert4rec.baselines.fpmc.fit_loop", stop)
    assert main(["train", "--data", str(log), "--model", "fpmc", "--output", str(out)]) == 130
    assert "interrupted before the first epoch ended; nothing to resume" in \
        capsys.readouterr().err
    checkpoints.write_checkpoint(out, {"x": torch.zeros(1)}, {"identity": {}}, step=1)

    assert main(["train", "--data", str(log), "--model", "pop", "--output", str(out)]) == 2
    assert "holds an unfinished run; pass --overwrite" in capsys.readouterr().err
    assert checkpoints.read_checkpoint(out) is not None
    assert main(["train", "--data", str(log), "--model", "pop", "--output", str(out),
                 "--overwrite"]) == 0
    assert checkpoints.read_checkpoint(out) is None


def test_train_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "r")])

    assert code == 2
    assert "bert4rec train: error: " in capsys.readouterr().err
    assert not (tmp_path / "r" / "run.json").exists()


def test_recommend_skips_unknown_items_and_still_answers(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = library_pop(log)
    known = data.vocab.decode(data.sequence(0)[:2])

    code = main(["recommend", "--run", str(run), "--history", f"{known[0]} zzz,{known[1]}",
                 "-k", "3"])

    captured = capsys.readouterr()
    ids, _ = recommend(model, [data.vocab.encode(known)[0]], k=3)
    assert code == 0
    assert "skipped 1 unknown item(s): zzz" in captured.err
    items = [line.split()[1] for line in captured.out.splitlines()]
    assert items == data.vocab.decode(ids[0])
    assert not set(items) & set(known)


def test_recommend_json(run: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, data = library_pop(log)
    known = data.vocab.decode(data.sequence(1)[:1])

    assert main(["recommend", "--run", str(run), "--history", f"{known[0]} nope", "-k", "2",
                 "--json"]) == 0

    answer = json.loads(capsys.readouterr().out)
    assert answer["skipped"] == ["nope"]
    assert answer["history_used"] == 1
    assert answer["note"] == ""
    assert [row["rank"] for row in answer["items"]] == [1, 2]


@pytest.mark.parametrize("history", ["", "zzz yyy"])
def test_empty_history_falls_back_to_popularity(
    run: Path, log: Path, history: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = library_pop(log)

    code = main(["recommend", "--run", str(run), "--history", history, "-k", "4", "--json"])

    answer = json.loads(capsys.readouterr().out)
    top = np.argsort(-model.counts.numpy(), kind="stable")[:4]
    assert code == 0
    assert answer["note"] == FALLBACK_NOTE
    assert answer["history_used"] == 0
    assert [row["score"] for row in answer["items"]] == model.counts[top].tolist()


def test_empty_history_says_so_on_stderr(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--run", str(run), "--history", "unknown-item"]) == 0

    captured = capsys.readouterr()
    assert FALLBACK_NOTE in captured.err
    assert len(captured.out.splitlines()) == 10


def test_recommend_for_a_known_user(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = library_pop(log)
    user = data.user_ids[5]

    assert main(["recommend", "--run", str(run), "--user", str(user), "--data", str(log),
                 "-k", "3", "--json"]) == 0

    answer = json.loads(capsys.readouterr().out)
    ids, _ = recommend(model, [data.sequence(5).astype(np.int64)], k=3)
    assert [row["item"] for row in answer["items"]] == data.vocab.decode(ids[0])
    assert answer["history_used"] == data.lengths[5]


def test_recommend_refuses_unknown_user_and_bad_k(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommend", "--run", str(run), "--user", "nobody", "--data", str(log)]) == 2
    assert f"user 'nobody' is not in {log}" in capsys.readouterr().err
    assert main(["recommend", "--run", str(run), "--user", "u1"]) == 2
    assert "--user needs --data" in capsys.readouterr().err
    assert main(["recommend", "--run", str(run), "--history", "i1", "-k", "0"]) == 2
    assert "-k must be at least 1" in capsys.readouterr().err


def test_synthetic_data_is_labelled_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, out = tmp_path / "syn.csv", tmp_path / "run"

    assert main(["synthetic", "--output", str(path), "--users", "30", "--items", "70"]) == 0
    assert "SYNTHETIC data, 30 users" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8").startswith(SYNTHETIC_MARKER)

    assert main(["train", "--data", str(path), "--output", str(out)]) == 0
    assert f"data: {path} (SYNTHETIC data): 30 users" in capsys.readouterr().err

    assert main(["evaluate", "--run", str(out), "--data", str(path)]) == 0
    assert "[SYNTHETIC data]" in capsys.readouterr().out.splitlines()[0]

    assert main(["evaluate", "--run", str(out), "--data", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["synthetic"] is True


def test_prepare_prints_statistics(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--data", str(log)]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert (summary["users"], summary["items"], summary["synthetic"]) == (40, 30, False)
    assert summary["fingerprint"] == load_interactions(log).fingerprint


def test_module_entry_point_prints_help() -> None:
    done = subprocess.run([sys.executable, "-m", "bert4rec", "--help"], capture_output=True,
                          text=True, timeout=60, check=False)

    assert done.returncode == 0
    assert done.stdout.startswith("usage: bert4rec")
    for command in ("train", "evaluate", "recommend", "synthetic"):
        assert command in done.stdout


@pytest.mark.parametrize(("model", "extra", "says"), [
    ("pop", ["--epochs", "5"], "pop counts items and has no training settings; drop --epochs"),
    ("pop", ["--set", "foo=bar"], "drop --set"),
    ("bpr", ["--epochs", "0"], "epochs must be at least 1"),
    ("bpr", ["--set", "eval_every=0"], "eval_every must be at least 1"),
    ("sasrec", ["--set", "hidden_size=abc"], "hidden_size must be a whole number"),
    ("bpr", ["--set", "lr=nan"], "lr must be a finite number, not nan"),
])
def test_training_flags_are_checked_before_training(
    tmp_path: Path, log: Path, capsys: pytest.CaptureFixture[str], model: str,
    extra: list[str], says: str,
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--data", str(log), "--output", str(out),
                 *extra]) == 2
    assert says in capsys.readouterr().err
    assert not (out / "run.json").exists()


def test_outputs_under_a_file_are_refused_before_the_work(
    run: Path, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine", encoding="utf-8")
    commands = [
        ["train", "--data", str(log), "--output", str(blocker / "run")],
        ["evaluate", "--run", str(run), "--data", str(log), "--per-user",
         str(blocker / "pu.csv")],
        ["recommend", "--run", str(run), "--data", str(log), "--output",
         str(blocker / "r.csv")],
    ]
    for command in commands:
        assert main(command) == 2
        assert "notes.txt is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text(encoding="utf-8") == "mine"


def test_evaluating_users_too_short_to_split_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("u1 a\nu1 b\nu2 a\nu2 c\nu3 b\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(short), "--output", str(out),
                 "--min-user-count", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--data", str(short),
                 "--min-user-count", "0"]) == 2
    assert "three or more items" in capsys.readouterr().err


@pytest.mark.parametrize("items", ["3", "30"])
def test_synthetic_fits_small_catalogues(tmp_path: Path, items: str) -> None:
    out = tmp_path / "syn.csv"
    assert main(["synthetic", "--output", str(out), "--users", "20", "--items", items]) == 0
    assert out.exists()
    assert main(["synthetic", "--output", str(tmp_path / "no.csv"), "--users", "-1"]) == 2


def test_evaluate_per_user_never_replaces_an_input(
    run: Path, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(log.read_bytes())
    before = data.read_bytes()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--per-user",
                 str(data)]) == 2
    assert "is the data file" in capsys.readouterr().err
    assert data.read_bytes() == before
    assert main(["evaluate", "--run", str(run), "--data", str(log), "--per-user",
                 str(run / "run.json")]) == 2
    assert "is inside the run" in capsys.readouterr().err
    load_model(run)  # whole


@pytest.mark.parametrize("command", [["evaluate", "--seed", "-1"], ["train", "--seed", "-3"],
                                     ["benchmark", "quality", "--seeds", "0", "-1"]])
def test_negative_seeds_are_refused_by_the_flags(
    run: Path, log: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--run", str(run), "--data", str(log)])
    assert stopped.value.code == 2
    assert "a seed is a whole number >= 0" in capsys.readouterr().err
