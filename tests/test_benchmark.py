"""``bert4rec benchmark quality``: the table's numbers are the per-run evaluations, the intervals
and paired comparisons are computed on the first seed, and bad input is refused before any
training."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bert4rec import benchmark, checkpoints, synthetic
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.benchmark import LABELS, parse_models, parse_settings, quality
from bert4rec.cli import main
from bert4rec.data import load_interactions
from bert4rec.errors import ConfigError
from bert4rec.evaluation import METRICS, evaluate
from bert4rec.runs import REPLACING, load_model
from bert4rec.split import train_sequences

Watch = Callable[[list[int]], list[int]]  # the watch_checkpoints fixture
TINY_BERT4REC = ["--set", "bert4rec.hidden_size=16", "--set", "bert4rec.max_len=12"]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """80 users over 40 items: room for 20 negatives a user."""
    frame = synthetic.generate(num_users=80, num_items=40, min_length=6, max_length=12, seed=1)
    return synthetic.write(tmp_path / "log.csv", frame, "(tests)")


def run_cli(log_path: Path, out: Path, *extra: str) -> int:
    return main(["benchmark", "quality", "--data", str(log_path), "--output", str(out),
                 "--epochs", "1", "--threads", "1", "--negatives", "20", "--quiet", *extra])


def test_quality_writes_json_markdown_plot_and_runs(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"

    code = run_cli(log_path, out, "--models", "pop,fpmc,bert4rec", "--seeds", "0",
                   *TINY_BERT4REC)

    err = capsys.readouterr().err
    assert code == 0
    assert [line.split(":")[0] for line in err.splitlines() if "] " in line] == [
        "benchmark [1/3] pop seed 0", "benchmark [2/3] fpmc seed 0",
        "benchmark [3/3] bert4rec seed 0",
    ]
    report = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    assert report["command"].startswith("bert4rec benchmark quality --data ")
    assert "--set bert4rec.hidden_size=16" in report["command"]
    assert report["synthetic"] is True
    assert {"commit", "dirty", "date", "machine"} <= set(report)
    assert {"cpu", "cores", "torch", "gpu"} <= set(report["machine"])
    settings = report["settings"]
    assert settings["models"] == ["pop", "fpmc", "bert4rec"]
    assert (settings["seeds"], settings["negatives"], settings["negative_seed"]) == ([0], 20, 0)
    assert settings["overrides"] == {"bert4rec": {"hidden_size": 16, "max_len": 12}}
    assert list(report["results"]) == ["pop", "fpmc", "bert4rec"]
    data = load_interactions(log_path)

    for model, res in report["results"].items():
        (run,) = res["runs"]
        assert run["seed"] == 0 and run["train_seconds"] >= 0
        for protocol in ("full", "popularity"):
            for metric in METRICS:  # one seed: the mean is that seed's value, no spread
                value = run[protocol]["metrics"][metric]
                assert res[protocol][metric] == {"mean": value, "std": 0.0, "values": [value]}
            for metric in ("NDCG@10", "HR@10"):
                low, high = res["ci"][protocol][metric]
                assert low <= res[protocol][metric]["mean"] <= high
            per_user = pd.read_parquet(run[protocol]["per_user"])
            assert len(per_user) == 80
            assert per_user["NDCG@10"].mean() == pytest.approx(
                run[protocol]["metrics"]["NDCG@10"])
        saved, info = load_model(run["run"])  # each run reloads and scores as evaluated
        assert info.model == model
        assert evaluate(saved, data, progress=False).metrics["NDCG@10"] == pytest.approx(
            run["full"]["metrics"]["NDCG@10"])
        if model == "bert4rec":
            assert "vs_bert4rec" not in res  # never compared with itself
            assert info.config["hidden_size"] == 16
            continue
        for protocol in ("full", "popularity"):
            paired = res["vs_bert4rec"][protocol]
            bert = report["results"]["bert4rec"][protocol]["NDCG@10"]["mean"]
            assert paired["mean_a"] == pytest.approx(res[protocol]["NDCG@10"]["mean"])
            assert paired["mean_b"] == pytest.approx(bert)
            assert paired["difference"] == pytest.approx(paired["mean_a"] - paired["mean_b"])
            assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]
            assert paired["users"] == 80
            assert paired["verdict"] in ("better", "worse", "no clear difference")

    # Known answer: POP's row is the library's POP evaluated on the same data.
    pop = PopularityRecommender.fit(train_sequences(data), data.num_items)
    full = evaluate(pop, data, protocol="full", progress=False).metrics
    sampled = evaluate(pop, data, protocol="popularity", num_negatives=20, seed=0,
                       progress=False).metrics
    assert report["results"]["pop"]["runs"][0]["full"]["metrics"] == pytest.approx(full)
    assert report["results"]["pop"]["runs"][0]["popularity"]["metrics"] == pytest.approx(sampled)

    markdown = (out / "quality.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Quality benchmark on SYNTHETIC data")
    assert "**SYNTHETIC data**" in markdown
    assert f"`{report['command']}`" in markdown
    assert report["commit"] in markdown
    for model in ("pop", "fpmc", "bert4rec"):
        assert f"| {LABELS[model]} |" in markdown
    assert markdown.index("## Full ranking") < markdown.index("## Popularity-sampled")
    assert "## Against BERT4Rec" in markdown
    assert (out / "quality.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_several_seeds_from_python_without_bert4rec(tmp_path: Path, log_path: Path) -> None:
    data = load_interactions(log_path)
    lines: list[str] = []

    report = quality(data, tmp_path / "bench", models=["pop", "fpmc"], seeds=[3, 4], epochs=1,
                     threads=1, negatives=20, progress=False, log=lines.append)

    assert sum(line.startswith("benchmark [") for line in lines) == 4
    fpmc: dict[str, Any] = report["results"]["fpmc"]
    assert [run["seed"] for run in fpmc["runs"]] == [3, 4]
    values = [run["full"]["metrics"]["NDCG@10"] for run in fpmc["runs"]]
    assert fpmc["full"]["NDCG@10"]["mean"] == pytest.approx(statistics.fmean(values))
    assert fpmc["full"]["NDCG@10"]["std"] == pytest.approx(statistics.stdev(values))
    assert report["settings"]["reference_seed"] == 3
    # POP counts; it has no seed to vary.
    assert report["results"]["pop"]["full"]["HR@10"]["std"] == 0.0
    assert all("vs_bert4rec" not in res for res in report["results"].values())
    assert report["command"].startswith("bert4rec.benchmark.quality(")
    assert (tmp_path / "bench" / "runs" / "fpmc-seed4" / "run.json").exists()
    markdown = (tmp_path / "bench" / "quality.md").read_text(encoding="utf-8")
    assert "BERT4Rec was not trained" in markdown
    assert " ± " in markdown  # two seeds: spreads are shown


def test_parse_models_and_settings() -> None:
    assert parse_models("pop, gru4rec+,sasrec-ce") == ["pop", "gru4rec+", "sasrec-ce"]
    assert parse_settings(["bert4rec.hidden_size=128", "gru4rec+.dropout=0.25",
                           "sasrec.loss_name=ce", "bert4rec.bucket_by_length=false"]) == {
        "bert4rec": {"hidden_size": 128, "bucket_by_length": False},
        "gru4rec+": {"dropout": 0.25},
        "sasrec": {"loss_name": "ce"},
    }
    with pytest.raises(ConfigError, match="unknown model 'sasrek' in --models"):
        parse_models("pop,sasrek")
    with pytest.raises(ConfigError, match="more than once"):
        parse_models("pop,pop")
    with pytest.raises(ConfigError, match=r"--set expects MODEL\.key=value"):
        parse_settings(["bert4rec.hidden_size"])
    with pytest.raises(ConfigError, match=r"--set 'bert\.hidden_size=16': unknown model 'bert'"):
        parse_settings(["bert.hidden_size=16"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "pop,sasrek"],
         "error: unknown model 'sasrek' in --models; choose from pop,bpr,"),
        (["--models", "pop", "--set", "hidden_size=16"],
         "error: --set expects MODEL.key=value (e.g. bert4rec.hidden_size=64), got "
         "'hidden_size=16'"),
        (["--models", "pop,fpmc", "--set", "sasrec.hidden_size=16"],
         "sasrec is not among --models (pop,fpmc)"),
        (["--models", "pop,fpmc", "--set", "fpmc.time_budget=5"],
         "time_budget is the same for every model; use --time-budget"),
        (["--models", "pop,fpmc", "--set", "fpmc.embeding_size=8"],
         "error: fpmc: unknown fpmc setting(s): embeding_size"),
        (["--models", "pop", "--set", "pop.anything=1"], "pop has no settings"),
        (["--models", "pop", "--negatives", "100"], "error: --negatives 100: a user has only"),
        (["--models", "pop", "--seeds", "1", "1"], "--seeds: give at least one seed, each once"),
        (["--models", "pop", "--valid-users", "0"], "--valid-users must be at least 1"),
        (["--models", "pop,fpmc", "--set", "fpmc.valid_users=9"],
         "valid_users is the same for every model; use --valid-users"),
    ],
)
def test_bad_input_exits_2_before_training(
    tmp_path: Path, log_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "bench"

    code = run_cli(log_path, out, *extra)

    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_valid_users_reaches_every_trained_model(
    tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert4rec.baselines import common

    drawn: list[int] = []
    draw = common.validation_users

    def recording(data: Any, count: int | None, seed: int) -> Any:
        users = draw(data, count, seed)
        drawn.append(len(users) if users is not None else -1)
        return users

    monkeypatch.setattr(common, "validation_users", recording)
    out = tmp_path / "bench"

    code = run_cli(log_path, out, "--models", "pop,fpmc,bert4rec", "--seeds", "0",
                   "--valid-users", "30", *TINY_BERT4REC)

    assert code == 0
    report = json.loads((out / "quality.json").read_text())
    assert report["settings"]["valid_users"] == 30
    assert "--valid-users 30" in report["command"]
    assert "validation on 30 users drawn once" in (out / "quality.md").read_text()
    assert drawn == [30]  # FPMC validated on the sample
    bert = json.loads((out / "runs" / "bert4rec-seed0" / "run.json").read_text())
    assert bert["provenance"]["train"]["valid_users"] == 30


def test_resume_reuses_finished_runs_and_retrains_changed_ones(
    tmp_path: Path, log_path: Path
) -> None:
    data = load_interactions(log_path)
    out = tmp_path / "bench"
    first = quality(data, out, models=["pop", "fpmc"], seeds=[0], epochs=1, threads=1,
                    negatives=20, progress=False, log=None)
    # A run interrupted before its record was written is trained again.
    (out / "runs" / "pop-seed0" / "benchmark-run.json").unlink()
    lines: list[str] = []

    again = quality(data, out, models=["pop", "fpmc", "bpr"], seeds=[0], epochs=1, threads=1,
                    negatives=20, progress=False, log=lines.append, resume=True)

    assert "benchmark: 1 of 3 run(s) already in" in lines[1]
    trained = [line.split(":")[0] for line in lines if line.startswith("benchmark [")]
    assert trained == ["benchmark [2/3] pop seed 0", "benchmark [3/3] bpr seed 0"]
    (reused,) = again["results"]["fpmc"]["runs"]
    assert reused.pop("reused") is True
    assert reused == first["results"]["fpmc"]["runs"][0]
    assert "reused" not in again["results"]["pop"]["runs"][0]
    assert again["results"]["pop"]["full"] == first["results"]["pop"]["full"]
    assert "vs_bert4rec" not in again["results"]["fpmc"]

    # Other settings or other negatives are another run: nothing is reused.
    lines.clear()
    quality(data, out, models=["fpmc"], seeds=[0], epochs=2, threads=1, negatives=20,
            progress=False, log=lines.append, resume=True)
    assert not any("already in" in line for line in lines)
    assert any("1 finished run(s)" in line and "trained again" in line for line in lines)


@pytest.mark.parametrize("model", ["fpmc", "bert4rec"])
def test_resume_goes_on_with_an_unfinished_run_from_its_checkpoint(
    model: str, tmp_path: Path, log_path: Path, watch_checkpoints: Watch
) -> None:
    data = load_interactions(log_path)
    tiny = {"bert4rec": {"hidden_size": 16, "max_len": 12}} if model == "bert4rec" else {}
    args: dict[str, Any] = dict(models=[model], seeds=[0], epochs=3, threads=1, negatives=20,
                                progress=False, log=None, overrides=tiny)
    straight = quality(data, tmp_path / "straight", **args)
    written = watch_checkpoints([2])
    with pytest.raises(KeyboardInterrupt):
        quality(data, tmp_path / "bench", **args)
    run_dir = tmp_path / "bench" / "runs" / f"{model}-seed0"
    assert checkpoints.read_checkpoint(run_dir) is not None
    written.clear()
    # A finished run of an earlier benchmark left there, with no mark that it is replaced (as
    # a checkpoint written before the mark existed): going on replaces it all the same.
    straight_dir = tmp_path / "straight" / "runs" / f"{model}-seed0"
    (run_dir / "run.json").write_bytes((straight_dir / "run.json").read_bytes())
    (run_dir / "checkpoint" / REPLACING).unlink(missing_ok=True)

    resumed = quality(data, tmp_path / "bench", resume=True, **args)

    assert written == [3]  # epochs 1 and 2 were not trained again
    (run,) = resumed["results"][model]["runs"]
    (before,) = straight["results"][model]["runs"]
    assert run["resumed"] is True and before["resumed"] is False
    assert run["started"]["commit"] == run["commit"] and "started" not in before
    markdown = (tmp_path / "bench" / "quality.md").read_text(encoding="utf-8")
    assert "- Runs resumed from a checkpoint after an interruption: " in markdown
    assert "resumed from a checkpoint" not in (tmp_path / "straight" / "quality.md").read_text()
    assert run["epochs"] == before["epochs"] == 3
    for protocol in ("full", "popularity"):  # seeded: the same model as a run never stopped
        assert run[protocol]["metrics"] == pytest.approx(before[protocol]["metrics"])
    assert checkpoints.read_checkpoint(run_dir) is None  # the finished run keeps no checkpoint
    assert not (run_dir / benchmark.STARTED).exists()


def test_an_unfinished_run_starts_over_without_resume_or_with_other_settings(
    tmp_path: Path, log_path: Path, watch_checkpoints: Watch, capsys: pytest.CaptureFixture[str],
) -> None:
    data = load_interactions(log_path)
    out = tmp_path / "bench"
    args: dict[str, Any] = dict(models=["fpmc"], seeds=[0], epochs=2, threads=1, negatives=20,
                                progress=False)
    stops: list[int] = []
    written = watch_checkpoints(stops)

    def stopped_after_one_epoch() -> None:
        stops.append(1)
        with pytest.raises(KeyboardInterrupt):
            quality(data, out, log=None, **args)
        written.clear()

    stopped_after_one_epoch()
    # Other settings (another learning rate) are another run: its checkpoint is not resumed.
    other = quality(data, out, resume=True, overrides={"fpmc": {"lr": 0.01}}, log=None, **args)
    assert written == [1, 2] and other["results"]["fpmc"]["runs"][0]["resumed"] is False

    stopped_after_one_epoch()
    again = quality(data, out, log=None, **args)  # no resume
    assert written == [1, 2] and again["results"]["fpmc"]["runs"][0]["resumed"] is False

    # A checkpoint that cannot be resumed does not stop the benchmark: the run starts over.
    stopped_after_one_epoch()
    (tensors,) = (out / "runs" / "fpmc-seed0" / "checkpoint").glob("state-*.safetensors")
    tensors.write_bytes(b"broken")
    repaired = quality(data, out, resume=True, log=None, **args)
    (run,) = repaired["results"]["fpmc"]["runs"]
    assert written == [1, 2] and run["resumed"] is False
    assert "checkpoint is damaged" in run["checkpoint_refused"]
    assert "fpmc seed 0 cannot go on from its checkpoint, so it starts over" in \
        capsys.readouterr().err


def test_runs_and_table_name_the_commit_the_benchmark_started_at(
    tmp_path: Path, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit made while the benchmark trains does not relabel the runs: the code that ran
    # is the code of the commit at the start.
    heads = iter(["a" * 40, "b" * 40, "c" * 40, "d" * 40])
    monkeypatch.setattr(benchmark, "commit_info",
                        lambda: {"commit": next(heads), "dirty": False, "dirty_paths": []})

    report = quality(load_interactions(log_path), tmp_path / "bench", models=["pop", "fpmc"],
                     seeds=[0], epochs=1, threads=1, negatives=20, progress=False, log=None)

    assert report["commit"] == "a" * 40
    assert [report["results"][m]["runs"][0]["commit"] for m in ("pop", "fpmc")] == ["a" * 40] * 2


def test_jobs_train_runs_in_parallel_processes_with_the_same_table(
    tmp_path: Path, log_path: Path
) -> None:
    data = load_interactions(log_path)
    serial = quality(data, tmp_path / "serial", models=["pop", "fpmc"], seeds=[0, 1], epochs=1,
                     threads=1, negatives=20, progress=False, log=None)
    lines: list[str] = []

    parallel = quality(data, tmp_path / "parallel", models=["pop", "fpmc"], seeds=[0, 1],
                       epochs=1, threads=1, negatives=20, progress=False, log=lines.append,
                       jobs=2)

    assert "2 at a time" in lines[0]
    assert sum(line.startswith("benchmark [") for line in lines) == 4
    assert parallel["settings"]["jobs"] == 2
    for model in ("pop", "fpmc"):  # seeded training: the same numbers in another process
        for protocol in ("full", "popularity"):
            for metric in METRICS:
                assert parallel["results"][model][protocol][metric]["values"] == pytest.approx(
                    serial["results"][model][protocol][metric]["values"])
    markdown = (tmp_path / "parallel" / "quality.md").read_text(encoding="utf-8")
    assert "2 runs trained at a time" in markdown


def test_resume_keys_of_budgeted_baselines_say_what_the_budget_counts(log_path: Path) -> None:
    data = load_interactions(log_path)
    machine = benchmark.machine_info()

    def key(model: str, settings: dict[str, Any]) -> dict[str, Any]:
        return benchmark._run_key(model, settings, "demo", 20, data, 1, machine)

    assert key("fpmc", {"seed": 0, "time_budget": 60.0})["budget_counts"] == "training steps"
    assert "budget_counts" not in key("fpmc", {"seed": 0, "epochs": 2})
    assert "budget_counts" not in key("bert4rec", {"seed": 0, "time_budget": 60.0})


def test_a_gru4rec_run_from_before_its_top1_loss_is_not_resumed(log_path: Path) -> None:
    # gru4rec once trained with full softmax cross-entropy, now gru4rec-ce: an old run's key
    # (no loss in it) must differ from today's, or --resume would reuse it as TOP1 GRU4Rec.
    data = load_interactions(log_path)
    machine = benchmark.machine_info()
    settings = {"seed": 0, "time_budget": 60.0}

    today = benchmark._run_key("gru4rec", settings, "demo", 20, data, 1, machine)
    before = {k: v for k, v in today.items() if k != "loss"}

    assert today["loss"] == "top1" and today != before
    assert "loss" not in benchmark._run_key("gru4rec-ce", settings, "demo", 20, data, 1, machine)
    assert "loss" not in benchmark._run_key("gru4rec+", settings, "demo", 20, data, 1, machine)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_ends_soon_after_the_benchmark_is_killed() -> None:
    # The parent starts a worker that watches it, then is killed (SIGKILL: no clean-up runs).
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         "worker = subprocess.Popen([sys.executable, '-c', 'import sys; "
         "from bert4rec.benchmark import exit_with_parent; "
         "print(\"watching\", flush=True); exit_with_parent(int(sys.argv[1]), 0.05)', "
         "str(os.getpid())], stdout=subprocess.PIPE, text=True)\n"
         "assert worker.stdout.readline().strip() == 'watching'\n"
         "print(worker.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert _alive(worker)

    parent.kill()
    parent.wait()
    parent.stdout.close()

    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = not _alive(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)  # leave nothing running behind a failed test
    assert ended


def test_only_100_negatives_are_called_the_paper_s_protocol() -> None:
    from bert4rec.benchmark import _protocol_title

    assert _protocol_title("popularity", 100).endswith("(the paper's protocol)")
    assert "paper" not in _protocol_title("popularity", 20)


def test_a_preset_s_own_time_budget_does_not_apply_to_bert4rec_alone(
    tmp_path: Path, log_path: Path
) -> None:
    demo = (Path(benchmark.__file__).parent / "presets" / "demo.toml").read_text()
    preset = tmp_path / "budgeted.toml"
    preset.write_text(demo.replace("time_budget = 150", "time_budget = 1e-9"), encoding="utf-8")
    data = load_interactions(log_path)
    report = quality(data, tmp_path / "out", models=["bert4rec"], preset=str(preset), seeds=[0],
                     epochs=2, threads=1, negatives=20, progress=False, log=None,
                     overrides={"bert4rec": {"hidden_size": 16, "max_len": 12,
                                             "eval_every": 1}})
    (run,) = report["results"]["bert4rec"]["runs"]
    assert run["epochs"] == 2 and run["stopped"] != "time budget"  # no budget was asked for
