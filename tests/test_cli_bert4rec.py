"""The CLI with the neural model: train, evaluate, recommend; presets and overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bert4rec import checkpoints, synthetic
from bert4rec.cli import main
from bert4rec.runs import load_model

TINY_SETTINGS = ["--set", "epochs=2", "--set", "hidden_size=16", "--set", "max_len=12",
                 "--set", "batch_size=64", "--set", "eval_every=1", "--threads", "1", "--quiet"]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    frame = synthetic.generate(num_users=80, num_items=40, min_length=6, max_length=12, seed=1)
    return synthetic.write(tmp_path / "synthetic.csv", frame)


def test_train_evaluate_recommend(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "bert4rec", "--preset", "demo", "--data", str(log_path),
                 "--output", str(run), *TINY_SETTINGS]) == 0
    err = capsys.readouterr().err
    assert "SYNTHETIC" in err and "best validation" in err
    assert not (run / "checkpoint").exists()  # a finished run keeps no training state
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"] == "bert4rec"
    assert meta["config"]["hidden_size"] == 16
    assert meta["provenance"]["preset"] == "demo"
    assert meta["provenance"]["seed"] == 0
    assert len(meta["metrics"]["history"]) == 2

    assert main(["evaluate", "--run", str(run), "--data", str(log_path), "--protocol",
                 "popularity", "--negatives", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "popularity" and out["users"] == 80
    assert 0.0 <= out["metrics"]["NDCG@10"] <= out["metrics"]["HR@10"] <= 1.0

    assert main(["recommend", "--run", str(run), "--history", "i1 i2 nope", "-k", "3",
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["skipped"] == ["nope"] and rec["history_used"] == 2
    assert len(rec["items"]) == 3
    assert not {"i1", "i2"} & {row["item"] for row in rec["items"]}


def test_empty_history_falls_back_to_training_popularity(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "bert4rec", "--preset", "demo", "--data", str(log_path),
                 "--output", str(run), *TINY_SETTINGS]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", str(run), "--history", "unknown", "-k", "3",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    counts = json.loads((run / "popularity.json").read_text())
    _, info = load_model(run)
    top = sorted(range(1, len(counts)), key=lambda i: (-counts[i], i))[:3]
    assert [row["item"] for row in answer["items"]] == info.vocab.decode(top)
    assert answer["skipped"] == ["unknown"]
    assert "most popular" in answer["note"]


def test_same_seed_same_run(tmp_path: Path, log_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["train", "--model", "bert4rec", "--preset", "demo", "--data",
                     str(log_path), "--output", str(tmp_path / name), *TINY_SETTINGS]) == 0
    model_a, _ = load_model(tmp_path / "a")
    model_b, _ = load_model(tmp_path / "b")
    for key, value in model_a.state_dict().items():
        assert (value == model_b.state_dict()[key]).all()


def test_unknown_preset_and_setting(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--model", "bert4rec", "--data", str(log_path), "--output",
            str(tmp_path / "x")]
    assert main([*base, "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main([*base, "--set", "hidden=3"]) == 2
    assert "unknown setting 'hidden'" in capsys.readouterr().err
    assert main([*base, "--set", "hidden_size=10", "--set", "num_heads=3"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main([*base, "--set", "num_heads=0"]) == 2
    assert "num_heads must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "x" / "run.json").exists()


def test_presets_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("ml-1m-paper", "beauty-paper", "ml-20m-paper", "steam-paper", "ml-1m",
                 "beauty", "default", "demo"):
        assert name in out


def test_python_api_fit_save_load(tmp_path: Path, log_path: Path) -> None:
    import bert4rec

    data = bert4rec.load_interactions(log_path)
    model = bert4rec.fit(data, preset="demo", epochs=1, hidden_size=16, max_len=12,
                         threads=1, progress=False, log=None)
    bert4rec.save(model, tmp_path / "saved", data)
    again, info = bert4rec.load_model(tmp_path / "saved")
    history, skipped = info.vocab.encode(["i3", "i4", "unknown"])
    assert skipped == ["unknown"]
    ids_a, scores_a = bert4rec.recommend(model, [history], k=5)
    ids_b, scores_b = bert4rec.recommend(again, [history], k=5)
    assert (ids_a == ids_b).all() and (scores_a == scores_b).all()
    result = bert4rec.evaluate(again, data, protocol="full", progress=False)
    assert result.users == data.num_users


@pytest.mark.parametrize("name", ["sasrec", "sasrec-ce", "gru4rec", "gru4rec+", "gru4rec-ce",
                                  "caser", "fpmc", "bpr", "ncf"])
def test_every_baseline_trains_saves_and_evaluates_through_the_cli(
    name: str, tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / name
    assert main(["train", "--model", name, "--data", str(log_path), "--output", str(run),
                 "--epochs", "1", "--threads", "1", "--quiet", "--set", "batch_size=64"]) == 0
    assert json.loads((run / "run.json").read_text())["model"] == name
    assert main(["evaluate", "--run", str(run), "--data", str(log_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == name and out["users"] == 80


def test_baselines_refuse_bert4rec_only_options(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--model", "sasrec", "--data", str(log_path), "--output",
                 str(tmp_path / "x"), "--preset", "ml-1m"]) == 2
    assert "--preset and --precision are bert4rec's" in capsys.readouterr().err
    assert main(["train", "--model", "sasrec", "--data", str(log_path), "--output",
                 str(tmp_path / "x"), "--set", "nope=1"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_epochs_and_seed_flags_win_over_the_preset(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ml-1m-paper counts 400,000 steps; --epochs replaces that count with epochs.
    small = ["--set", "hidden_size=16", "--set", "max_len=12", "--set", "batch_size=64",
             "--threads", "1", "--quiet"]
    run = tmp_path / "paper"
    assert main(["train", "--model", "bert4rec", "--preset", "ml-1m-paper", "--epochs", "1",
                 "--data", str(log_path), "--output", str(run), *small]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["metrics"]["epochs"] == 1

    seeded = tmp_path / "seeded"
    assert main(["train", "--model", "bert4rec", "--preset", "demo", "--set", "epochs=1",
                 "--set", "seed=5", "--data", str(log_path), "--output", str(seeded),
                 *small]) == 0
    assert json.loads((seeded / "run.json").read_text())["provenance"]["seed"] == 5


@pytest.mark.parametrize(("setting", "says"), [
    (["--set", "epochs=abc"], "epochs must be a whole number, not 'abc'"),
    (["--set", "lr=-1"], "lr must be at least 0"),
    (["--threads", "-1"], "threads must be at least 1"),
    (["--set", "max_steps=-5"], "max_steps must be at least 1"),
    (["--time-budget", "0"], "time_budget must be above 0"),
    (["--time-budget", "nan"], "time_budget must be a finite number or none, not nan"),
    (["--set", "lr=nan"], "lr must be a finite number, not nan"),
    (["--set", "lr=inf"], "lr must be a finite number, not inf"),
])
def test_bad_training_values_are_refused_by_name(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str], setting: list[str],
    says: str,
) -> None:
    code = main(["train", "--model", "bert4rec", "--data", str(log_path), "--output",
                 str(tmp_path / "x"), *setting])
    assert code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x" / "run.json").exists()


@pytest.mark.parametrize("model", ["bert4rec", "sasrec"])
def test_overwrite_keeps_the_checkpoint_when_a_setting_is_refused(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    out = tmp_path / "run"
    checkpoints.write_checkpoint(out, {"x": torch.zeros(1)}, {"identity": {}}, step=1)
    bad = "num_heads=3" if model == "bert4rec" else "hidden_size=abc"
    assert main(["train", "--model", model, "--data", str(log_path), "--output", str(out),
                 "--overwrite", "--set", bad]) == 2
    assert "error:" in capsys.readouterr().err
    assert checkpoints.read_checkpoint(out) is not None  # the unfinished run is still there


def test_a_file_where_the_checkpoint_goes_is_refused_before_training(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint").write_text("mine")
    assert main(["train", "--model", "bert4rec", "--data", str(log_path), "--output",
                 str(out)]) == 2
    assert "run/checkpoint is a file, where training keeps its checkpoint" in \
        capsys.readouterr().err
    assert (out / "checkpoint").read_text() == "mine"


@pytest.mark.parametrize("model", ["bert4rec", "bpr"])
def test_a_run_that_diverges_at_once_leaves_the_finished_run_and_no_checkpoint(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    out = tmp_path / "run"
    small = ["--epochs", "2", "--threads", "1", "--quiet"]
    if model == "bert4rec":
        small += ["--preset", "demo", "--set", "hidden_size=16", "--set", "max_len=12"]
    assert main(["train", "--model", model, "--data", str(log_path), "--output", str(out),
                 *small]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", "--model", model, "--data", str(log_path), "--output", str(out),
                 "--overwrite", "--set", "lr=1e30", *small]) == 2
    assert "before any epoch worth keeping; nothing is saved" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert not (out / "checkpoint").exists()
