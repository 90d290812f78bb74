"""``bert4rec tune``: a fixed, seeded list of trials scored on validation, resumable, and its
best settings and budget carried into ``benchmark quality``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bert4rec import benchmark, synthetic, tuning
from bert4rec.benchmark import MODELS, check_model_settings
from bert4rec.cli import main
from bert4rec.data import Interactions, load_interactions
from bert4rec.errors import ConfigError
from bert4rec.tuning import draw_trials, read_tuned, search_space, tune


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    frame = synthetic.generate(num_users=60, num_items=40, min_length=6, max_length=12, seed=2)
    return synthetic.write(tmp_path / "log.csv", frame, "(tests)")


def test_trials_start_from_the_defaults_and_stay_in_the_space() -> None:
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "dropout": [0.1, 0.3],
             "beta": {"low": 0.5, "high": 0.6}}
    trials = draw_trials(space, 40, seed=3)
    assert trials[0] == {} and len(trials) == 40
    assert trials == draw_trials(space, 40, seed=3)  # a search is a fixed list
    assert trials != draw_trials(space, 40, seed=4)
    for settings in trials[1:]:
        assert 1e-4 <= settings["lr"] <= 1e-2 and 0.5 <= settings["beta"] <= 0.6
        assert settings["dropout"] in (0.1, 0.3)
    lrs = sorted(t["lr"] for t in trials[1:])
    assert lrs[len(lrs) // 2] < 2e-3  # log-uniform: the median near 1e-3, not near 5e-3


def test_every_shipped_space_draws_valid_settings() -> None:
    for model in MODELS:
        if model == "pop":
            continue
        for settings in draw_trials(search_space(model), 6, seed=0):
            check_model_settings(model, "default", 50, settings)  # raises on a typo in a key


def test_bad_spaces_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no search space for 'pop'"):
        search_space("pop")
    path = tmp_path / "space.toml"
    path.write_text("[sasrec]\nlr = {low = 0.1, high = 0.01}\n")
    with pytest.raises(ConfigError, match="low <= high"):
        search_space("sasrec", path)
    path.write_text("[sasrec]\nlr = []\n")
    with pytest.raises(ConfigError, match="empty list"):
        search_space("sasrec", path)
    path.write_text("[sasrec]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="list of choices"):
        search_space("sasrec", path)
    path.write_text("[sasrec]\nnot_a_setting = [1, 2]\n")
    data = load_interactions(_tiny_log(tmp_path))
    with pytest.raises(ConfigError, match="in the search space: sasrec: "):  # nothing trains
        tune("sasrec", data, tmp_path / "t.json", trials=2, epochs=1, space_file=path)
    assert not (tmp_path / "t.json").exists()
    with pytest.raises(ConfigError, match="budget"):
        tune("sasrec", data, tmp_path / "t.json", trials=2)


def _tiny_log(tmp_path: Path) -> Path:
    frame = synthetic.generate(num_users=30, num_items=20, min_length=5, max_length=8, seed=0)
    return synthetic.write(tmp_path / "tiny.csv", frame, "(tests)")


def test_a_search_records_its_trials_and_resumes(tmp_path: Path, log_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_interactions(log_path)
    out = tmp_path / "tune-fpmc.json"
    # A commit made while the trials train does not relabel them: they ran the first one's code.
    heads = iter(["a" * 40, "b" * 40, "c" * 40, "d" * 40])
    monkeypatch.setattr(benchmark, "commit_info", lambda: {"commit": next(heads)})
    report = tune("fpmc", data, out, trials=3, epochs=1, threads=1)
    saved = json.loads(out.read_text())
    assert [t["commit"] for t in saved["trials"]] == ["a" * 40] * 3
    assert saved["trials"] == report["trials"] and len(saved["trials"]) == 3
    assert [t["trial"] for t in saved["trials"]] == [0, 1, 2]
    assert saved["trials"][0]["settings"] == {}
    scores = [t["valid_full"]["NDCG@10"] for t in saved["trials"]]
    assert saved["best"]["valid_NDCG@10"] == max(scores)
    assert saved["best"]["trial"] == scores.index(max(scores))
    assert saved["budget"]["trials"] == saved["budget"]["trials_done"] == 3
    assert saved["budget"]["epochs_per_trial"] == 1
    assert saved["budget"]["train_seconds"] == pytest.approx(
        sum(t["train_seconds"] for t in saved["trials"]))
    assert all(arg.startswith("fpmc.") for arg in saved["set_arguments"])

    # The same search again trains nothing; a longer one trains only the new trials.
    def no_training(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(tuning, "_train_and_validate", no_training)
    again = tune("fpmc", data, out, trials=3, epochs=1, threads=1)
    assert all(t["reused"] for t in again["trials"])
    assert again["best"] == saved["best"]


def test_valid_users_reaches_every_trial_from_the_command_line(
        tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[dict[str, Any]] = []

    def record(model: str, data: Any, preset: str, settings: dict[str, Any], *args: Any
               ) -> dict[str, Any]:
        seen.append(settings)
        return {"valid_full": {"NDCG@10": 0.1}, "train_seconds": 1.0, "epochs": 1,
                "best_epoch": 1, "stopped": "epochs"}

    monkeypatch.setattr(tuning, "_train_and_validate", record)
    out = tmp_path / "tune.json"
    assert main(["tune", "--model", "fpmc", "--data", str(log_path), "--output", str(out),
                 "--trials", "2", "--epochs", "1", "--valid-users", "7", "--quiet"]) == 0
    assert [settings["valid_users"] for settings in seen] == [7, 7]
    # Every trial scored alike, so the first (the model's own settings) stays the best.
    said = capsys.readouterr().err
    assert "trial 1, valid NDCG@10 0.1000" in said
    assert "the model's own settings won: nothing to --set" in said
    assert json.loads(out.read_text())["key"]["shared"]["valid_users"] == 7

    data = load_interactions(log_path)
    for bad in (0, 2.5):
        with pytest.raises(ConfigError, match="--valid-users must be a whole number >= 1"):
            tune("fpmc", data, tmp_path / "bad.json", trials=1, epochs=1, valid_users=bad)


def test_unfinished_or_foreign_files_are_not_searches(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not the result of bert4rec tune"):
        read_tuned(path)
    path.write_text(json.dumps({"model": "fpmc", "data": {}, "best": {"settings": {}},
                                "budget": {"trials": 4, "trials_done": 2}}))
    with pytest.raises(ConfigError, match="ran 2 of its 4 trials"):
        read_tuned(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_tuned(tmp_path / "missing.json")
    search = {"model": "fpmc", "data": {}, "best": {"settings": {}},
              "budget": {"trials": 4, "trials_done": 4}}
    for odd in ({**search, "budget": {"trials": "4", "trials_done": 4}},
                {**search, "budget": {"trials_done": 4}}, {**search, "key": [1]}):
        path.write_text(json.dumps(odd))
        with pytest.raises(ConfigError, match="not the result of bert4rec tune"):
            read_tuned(path)


def test_a_gru4rec_search_from_before_its_top1_loss_is_refused(tmp_path: Path) -> None:
    search = {"model": "gru4rec", "data": {}, "best": {"settings": {"lr": 0.0075}},
              "budget": {"trials": 4, "trials_done": 4},
              "key": {"model": "gru4rec", "space": {}, "trials": 4}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(search))
    with pytest.raises(ConfigError, match="that model is now gru4rec-ce"):
        read_tuned(path)

    path.write_text(json.dumps({**search, "model": "gru4rec-ce"}))  # what the message offers
    assert read_tuned(path)["best"]["settings"] == {"lr": 0.0075}
    path.write_text(json.dumps({**search, "key": {**search["key"], "loss": "top1"}}))
    assert read_tuned(path)["model"] == "gru4rec"


def test_quality_trains_with_the_tuned_settings_and_shows_the_budget(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    search = tmp_path / "tune-fpmc.json"
    assert main(["tune", "--model", "fpmc", "--data", str(log_path), "--output", str(search),
                 "--trials", "2", "--epochs", "1", "--threads", "1", "--quiet"]) == 0
    assert "--tuned" in capsys.readouterr().err
    best = json.loads(search.read_text())["best"]["settings"]
    common = ["benchmark", "quality", "--data", str(log_path), "--epochs", "1", "--threads", "1",
              "--negatives", "20", "--quiet", "--seeds", "0"]
    out = tmp_path / "bench"
    assert main([*common, "--models", "pop,fpmc,bpr", "--output", str(out),
                 "--tuned", str(search)]) == 0
    report = json.loads((out / "quality.json").read_text())
    assert report["settings"]["overrides"].get("fpmc", {}) == best
    assert report["tuning"]["fpmc"]["trials"] == 2
    assert f"--tuned {search}" in report["command"]  # the recorded command reruns the table
    markdown = (out / "quality.md").read_text()
    assert "## Tuning (validation split only)" in markdown
    assert "| BPR-MF | not searched | | | | its own defaults |" in markdown
    chosen = ", ".join(f"{key}={value!r}" for key, value in best.items())
    assert f"- FPMC settings: {chosen or 'its own defaults'}" in markdown
    assert "The tuning budgets differ between models" in markdown

    # A search of a model not in the table, or a --set of the same key: refused, nothing run.
    capsys.readouterr()
    assert main([*common, "--models", "pop,bpr", "--output", str(tmp_path / "b2"),
                 "--tuned", str(search)]) == 2
    assert "not among --models" in capsys.readouterr().err
    if best:
        key = next(iter(best))
        assert main([*common, "--models", "fpmc", "--output", str(tmp_path / "b3"),
                     "--tuned", str(search), "--set", f"fpmc.{key}=0.5"]) == 2
        assert "keep one" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()


def test_a_model_without_a_search_shows_what_it_trained_with() -> None:
    report = {"settings": {"preset": "ml-1m-cpu-hour",
                           "overrides": {"gru4rec": {"lr": 0.01}, "sasrec": {}}}}
    assert benchmark._unsearched_settings(report, "bert4rec") == "preset `ml-1m-cpu-hour`"
    assert benchmark._unsearched_settings(report, "gru4rec") == "lr=0.01"
    assert benchmark._unsearched_settings(report, "sasrec") == "its own defaults"
    report["settings"]["overrides"]["bert4rec"] = {"hidden_size": 128}
    assert (benchmark._unsearched_settings(report, "bert4rec")
            == "preset `ml-1m-cpu-hour`, hidden_size=128")


def test_a_bert4rec_search_is_used_only_with_its_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    search = {"model": "bert4rec", "data": {}, "preset": "demo",
              "best": {"settings": {"lr": 0.002}}, "budget": {"trials": 2, "trials_done": 2},
              "key": {"model": "bert4rec", "preset": benchmark.preset_content("demo")}}
    path = tmp_path / "tune-bert4rec.json"
    path.write_text(json.dumps(search))
    command = ["benchmark", "quality", "--data", str(tmp_path / "missing.txt"), "--models",
               "bert4rec", "--output", str(tmp_path / "b"), "--tuned", str(path)]

    assert main([*command, "--preset", "default"]) == 2
    assert "searched bert4rec's settings on preset 'demo'" in capsys.readouterr().err
    assert main([*command, "--preset", "demo"]) == 2  # accepted; then the data is missing
    assert "no such file" in capsys.readouterr().err


def test_a_trial_that_diverges_is_recorded_and_the_search_goes_on(
    tmp_path: Path, medium: Interactions
) -> None:
    space = tmp_path / "space.toml"
    space.write_text("[bpr]\nlr = {low = 1e30, high = 1e31, log = true}\n", encoding="utf-8")
    report = tune("bpr", medium, tmp_path / "t.json", trials=2, epochs=2, space_file=space,
                  threads=1)
    own, wild = report["trials"]
    assert "diverged" not in own and wild["diverged"] is True
    assert report["best"]["trial"] == 0 and report["budget"]["trials_done"] == 2


def test_more_trials_reuse_the_done_ones_and_another_search_is_not_overwritten(
    tmp_path: Path, medium: Interactions
) -> None:
    out = tmp_path / "t.json"
    tune("bpr", medium, out, trials=2, epochs=1, threads=1)
    more = tune("bpr", medium, out, trials=3, epochs=1, threads=1)
    assert [t.get("reused", False) for t in more["trials"]] == [True, True, False]
    before = out.read_text()
    with pytest.raises(ConfigError, match="holds the result of another search"):
        tune("fpmc", medium, out, trials=1, epochs=1, threads=1)
    assert out.read_text() == before
