"""The paper's comparison (Sun et al. 2019, Table 2) rerun on one data set: train each chosen
model for each seed under the same time budget, evaluate it on the test split under full
ranking and the paper's popularity-sampled protocol, and write the table.

``OUTPUT/quality.json``  everything, machine-readable: command, commit, machine, date, settings,
                         per-seed metrics, means and spreads, confidence intervals, paired
                         comparisons with BERT4Rec
``OUTPUT/quality.md``    the paper-style tables, full ranking first
``OUTPUT/quality.png``   full-ranking NDCG@10 against training time, one point per model
``OUTPUT/runs/MODEL-seedS/``  each trained run (``bert4rec evaluate`` reads it), with its
                         per-user test metrics in ``test-full.parquet`` and
                         ``test-popularity.parquet``

Fairness: every trainable model gets the same ``time_budget`` per training run (seconds of
training steps; validation passes are not counted, for any model), the same thread count and
device. Negatives are drawn with seed 0 for every run, so all models rank
their targets against the same candidates and the per-user results pair up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bert4rec.checkpoints import has_checkpoint, mark_replacing, start_over
from bert4rec.data import Interactions, PrepareOptions
from bert4rec.errors import CheckpointError, ConfigError
from bert4rec.evaluation import (
    METRICS,
    EvaluationResult,
    Protocol,
    bootstrap_ci,
    compare,
    evaluate,
    item_popularity,
    sample_negatives,
)
from bert4rec.presets import unset_limits
from bert4rec.runs import atomic_write, write_json
from bert4rec.split import eval_cases

# The paper's order: non-sequential baselines, then sequential ones, BERT4Rec last.
# GRU4Rec-CE and SASRec-CE, the two models trained with a loss their papers do not use, follow
# their own model.
MODELS = ("pop", "bpr", "ncf", "fpmc", "gru4rec", "gru4rec+", "gru4rec-ce", "caser", "sasrec",
          "sasrec-ce", "bert4rec")
LABELS = {"pop": "POP", "bpr": "BPR-MF", "ncf": "NCF", "fpmc": "FPMC", "gru4rec": "GRU4Rec",
          "gru4rec+": "GRU4Rec+", "gru4rec-ce": "GRU4Rec-CE", "caser": "Caser",
          "sasrec": "SASRec", "sasrec-ce": "SASRec-CE", "bert4rec": "BERT4Rec"}
PROTOCOL_NAMES: tuple[Protocol, ...] = ("full", "popularity")  # full ranking first
REFERENCE = "bert4rec"  # the model every other one is compared with
CI_METRICS = ("NDCG@10", "HR@10")
COMPARED_METRIC = "NDCG@10"
NEGATIVE_SEED = 0
CONFIDENCE = 0.95
# What a time budget counts, in the resume keys of baseline runs and tuning trials.
BUDGET_COUNTS = "training steps"
# gru4rec once named GRU4Rec trained with full softmax cross-entropy (now gru4rec-ce); since it
# took the 2016 paper's TOP1 loss, its keys name the loss, so --resume never mixes the two.
MARKED_LOSSES = {"gru4rec": "top1"}
# Settings the benchmark itself gives every model alike; a per-model --set may not change them.
SHARED = {"seed": "--seeds", "time_budget": "--time-budget", "threads": "--threads",
          "device": "--device", "valid_users": "--valid-users"}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Options


def parse_models(text: str) -> list[str]:
    """``pop,bert4rec,...`` as a list; unknown or repeated names are errors."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--models is empty; choose from {','.join(MODELS)}")
    for name in names:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r} in --models; choose from "
                              f"{','.join(MODELS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--models names {', '.join(repeated)} more than once")
    return names


def parse_settings(assignments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``MODEL.key=value`` assignments as ``{model: {key: value}}``; the value is read as TOML
    (``0.2``, ``true``, ``"x"``), as ``bert4rec train --set`` reads it."""
    from bert4rec.presets import parse_assignment

    out: dict[str, dict[str, Any]] = {}
    for text in assignments:
        target, sep, value = text.partition("=")
        model, dot, key = target.strip().partition(".")
        if not sep or not dot or not model or not key.strip():
            raise ConfigError(f"--set expects MODEL.key=value (e.g. bert4rec.hidden_size=64), "
                              f"got {text!r}")
        if model not in MODELS:
            raise ConfigError(f"--set {text!r}: unknown model {model!r}; choose from "
                              f"{','.join(MODELS)}")
        name, parsed = parse_assignment(f"{key.strip()}={value}")
        out.setdefault(model, {})[name] = parsed
    return out


def _check_settings(
    models: Sequence[str], overrides: Mapping[str, Mapping[str, Any]], preset: str,
    num_items: int, shared: dict[str, Any],
) -> None:
    """Refuse a bad setting before any training: a typo must not surface hours in."""
    for model, values in overrides.items():
        if model not in models:
            raise ConfigError(f"--set {model}.…: {model} is not among --models "
                              f"({','.join(models)})")
        if model == "pop" and values:
            raise ConfigError("pop has no settings to --set")
        for key in values:
            if key in SHARED:
                raise ConfigError(f"--set {model}.{key}: {key} is the same for every model; "
                                  f"use {SHARED[key]}")
    for model in models:
        check_model_settings(model, preset, num_items, {**shared, **overrides.get(model, {})})


def check_model_settings(model: str, preset: str, num_items: int,
                         values: Mapping[str, Any]) -> None:
    """Build ``model``'s configuration with ``values`` applied, training nothing; a bad key or
    value is a ConfigError that names the model."""
    try:
        if model == "bert4rec":
            from bert4rec.presets import load_preset

            load_preset(preset, dict(values)).model_config(num_items)
        elif model != "pop":
            from bert4rec.baselines import baseline_config

            baseline_config(model, num_items, dict(values))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{model}: invalid setting ({exc})") from exc
    except ConfigError as exc:
        raise ConfigError(f"{model}: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Where the numbers come from


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU and library versions of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__}


def provenance_header() -> dict[str, Any]:
    """What every benchmark result starts with: commit (and whether it was dirty), machine,
    date."""
    return {**commit_info(), "machine": machine_info(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def commit_info() -> dict[str, Any]:
    """The commit of the code that runs (``git rev-parse HEAD`` where the package's source lies)
    and whether tracked files differ from it. Without git history, ``$BERT4REC_COMMIT`` or
    ``unknown``."""
    where = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:  # --no-optional-locks: reading the state must not write the index
            return subprocess.run(["git", "--no-optional-locks", *args], cwd=where,
                                  capture_output=True, text=True, check=False,
                                  timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD").strip()
    if len(commit) != 40:
        return {"commit": os.environ.get("BERT4REC_COMMIT", "unknown"), "dirty": None,
                "dirty_paths": []}
    # Result files are outputs, not code: rewriting them does not make a run dirty.
    changed = [line[3:] for line in
               git("status", "--porcelain", "--untracked-files=no").splitlines()
               if line and not line[3:].startswith("benchmarks/results/")]
    return {"commit": commit, "dirty": bool(changed), "dirty_paths": changed}


# ----------------------------------------------------------------------------------------------
# One run: train, save, evaluate


def _train(
    model: str, data: Interactions, settings: dict[str, Any], preset: str, run_dir: Path,
    options: PrepareOptions, titles: dict[Any, str] | None, progress: bool,
    log: Callable[[str], None] | None, fresh: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` into ``run_dir`` (``fresh``: from the start, else from its
    checkpoint); the recommender and its training record."""
    seed = settings["seed"]
    if model == "bert4rec":
        from bert4rec.api import train

        result = train(data, preset, run_dir, options=options, titles=titles,
                       progress=progress, log=log, overwrite=fresh, **settings)
        state = result.state
        return result.model, {"train_seconds": state.elapsed, "epochs": state.epoch,
                              "best_epoch": state.best_epoch, "stopped": state.stopped,
                              "valid_full": result.valid_metrics}
    from bert4rec.baselines import fit_pop, save_baseline, train_baseline

    fit = None
    if model == "pop":
        recommender, fitted = fit_pop(data, progress=progress)
    else:
        recommender, fitted, fit = train_baseline(model, data, settings, progress=progress,
                                                  log=log, run_dir=run_dir)
    save_baseline(run_dir, recommender, fitted, data, options, seed=seed, fit=fit, titles=titles)
    return recommender, {"train_seconds": fitted.seconds, "epochs": fitted.epochs,
                         "best_epoch": fitted.best_epoch, "stopped": fitted.stopped,
                         "valid_full": fitted.valid_metrics}


def _write_per_user(result: EvaluationResult, path: Path) -> None:
    atomic_write(path, lambda tmp: result.per_user.to_parquet(tmp, index=False))


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}


RECORD = "benchmark-run.json"  # in each run directory: what was run, and what it measured
STARTED = "benchmark-started.json"  # in a run directory while it trains: the run's key


def _run(
    model: str, data: Interactions, settings: dict[str, Any], preset: str, run_dir: Path,
    options: PrepareOptions, titles: dict[Any, str] | None, negatives: int,
    key: dict[str, Any], commit: str, progress: bool, log: Callable[[str], None] | None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one run, evaluate it on the test split under both protocols, write its per-user
    results and its record (last, so a run with a record is a finished run); the record.
    ``commit`` is the code's commit when the benchmark started: HEAD may move while it trains.

    Training writes a checkpoint into ``run_dir`` after every epoch. With ``resume``, an
    unfinished run there that was started with the same ``key`` goes on from its checkpoint;
    otherwise the run starts over."""
    (run_dir / RECORD).unlink(missing_ok=True)  # a record never outlives the run it describes
    started = _started(run_dir)
    resumed = resume and started.get("key") == key and has_checkpoint(run_dir)
    if not resumed:  # a checkpoint of other settings, or on another machine, is not this run's
        started = _start_over(run_dir, key, commit)
    else:  # going on replaces a finished run left there (a checkpoint may predate the mark)
        mark_replacing(run_dir)
    wall = time.perf_counter()
    try:
        recommender, record = _train(model, data, settings, preset, run_dir, options, titles,
                                     progress, log, fresh=not resumed)
    except CheckpointError as exc:
        if not resumed:
            raise
        # A checkpoint that cannot be resumed (damaged, or written by other code) is not worth
        # stopping the benchmark for: the run starts over.
        refused = str(exc)
        (log or _stderr)(f"benchmark: {model} seed {settings['seed']} cannot go on from its "
                         f"checkpoint, so it starts over: {refused}")
        started = _start_over(run_dir, key, commit)
        resumed = False
        wall = time.perf_counter()
        recommender, record = _train(model, data, settings, preset, run_dir, options, titles,
                                     progress, log)
        record["checkpoint_refused"] = refused
    record = {"seed": settings["seed"], "run": str(run_dir), "commit": commit,
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "wall_seconds": time.perf_counter() - wall, "resumed": resumed, **record}
    if resumed and started.get("commit"):  # the training before the interruption
        record["started"] = {k: started.get(k) for k in ("commit", "date")}
    for protocol in PROTOCOL_NAMES:
        result = evaluate(recommender, data, split="test", protocol=protocol,
                          num_negatives=negatives, seed=NEGATIVE_SEED, progress=progress)
        per_user = run_dir / f"test-{protocol}.parquet"
        _write_per_user(result, per_user)
        record[protocol] = {"metrics": result.metrics, "per_user": str(per_user)}
    write_json(run_dir / RECORD, {"key": key, "record": record})
    (run_dir / STARTED).unlink(missing_ok=True)
    return record


def _start_over(run_dir: Path, key: dict[str, Any], commit: str) -> dict[str, Any]:
    """Remove an unfinished run's checkpoint from ``run_dir`` (a finished run there is
    replaced when the new one is saved) and note the run starting."""
    start_over(run_dir)
    started = {"key": key, "commit": commit,
               "date": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json(run_dir / STARTED, started)
    return started


def _started(run_dir: Path) -> dict[str, Any]:
    """How an unfinished run in ``run_dir`` was started (its key, commit and date), or {}."""
    try:
        started = json.loads((run_dir / STARTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return started if isinstance(started, dict) else {}


def _run_key(model: str, settings: dict[str, Any], preset: str, negatives: int,
             data: Interactions, jobs: int, machine: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run (as JSON would give it back): the model's settings
    (BERT4Rec's preset by content, not name), the data, the negatives, and, since a time budget
    buys different training on other hardware or beside other runs, the CPU, the GPU and how
    many runs shared the machine."""
    shipped = preset_content(preset) if model == "bert4rec" else None
    key = {"model": model, "settings": settings, "preset": shipped, "negatives": negatives,
           "negative_seed": NEGATIVE_SEED, "data": data.describe().get("fingerprint"),
           "jobs": jobs, "cpu": machine["cpu"], "gpu": machine["gpu"]}
    if model not in ("bert4rec", "pop") and settings.get("time_budget") is not None:
        # A baseline's budget once counted its validation passes too; such runs are others.
        key["budget_counts"] = BUDGET_COUNTS
    if model in MARKED_LOSSES:
        key["loss"] = MARKED_LOSSES[model]
    return json.loads(json.dumps(key, default=str))


def preset_content(preset: str) -> dict[str, Any]:
    """A BERT4Rec preset by content, not name: a preset edited since is another preset."""
    from bert4rec.presets import load_preset

    loaded = load_preset(preset)
    return {"name": preset, "model": loaded.model, "train": asdict(loaded.train)}


def _finished(run_dir: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run in ``run_dir`` made with ``key``, or None."""
    try:
        saved = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    record = saved.get("record")
    if not isinstance(record, dict):
        return None
    try:
        for protocol in PROTOCOL_NAMES:  # found where the run is now, wherever it was made
            per_user = run_dir / f"test-{protocol}.parquet"
            if not per_user.exists():
                return None
            record[protocol]["per_user"] = str(per_user)
    except (KeyError, TypeError):
        return None
    record["run"] = str(run_dir)
    return record


def stored_result(record: dict[str, Any], protocol: Protocol,
                  negatives: int | None = None) -> EvaluationResult:
    """A run's evaluation read back from its per-user file (intervals and paired tests).
    ``negatives``: the count a sampled protocol drew (the run key's), drawn with
    :data:`NEGATIVE_SEED`, so that results of different draws are never paired."""
    saved = record[protocol]
    per_user = pd.read_parquet(saved["per_user"])
    sampled = protocol != "full" and negatives is not None
    return EvaluationResult(protocol=protocol, split="test", metrics=dict(saved["metrics"]),
                            per_user=per_user, num_negatives=negatives if sampled else None,
                            seed=NEGATIVE_SEED if sampled else None)


def _start_worker(threads: int | None, parent: int) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the group: the parent alone stops the runs (a worker
    # would take it as its run's result and start the next one).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A benchmark stopped by kill (not Ctrl-C, which reaches every process) would otherwise leave
    # its runs training on, unseen, for the rest of their budget.
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this process soon after ``parent`` ends (the process is then adopted by another).

    A run cut short writes no record, so ``--resume`` trains it again, from its last
    checkpoint.
    """
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


# ----------------------------------------------------------------------------------------------
# The benchmark


def quality(
    data: Interactions,
    output: str | Path,
    models: Sequence[str] = MODELS,
    preset: str = "default",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    time_budget: float | None = None,
    epochs: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    negatives: int = 100,
    options: PrepareOptions | None = None,
    titles: dict[Any, str] | None = None,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
    jobs: int = 1,
    resume: bool = False,
    tuning: Mapping[str, Mapping[str, Any]] | None = None,
    valid_users: int | None = None,
) -> dict[str, Any]:
    """Train every model in ``models`` once per seed on ``data``, evaluate each on the test split
    under full ranking and popularity-sampled ``negatives``, and write ``quality.json``,
    ``quality.md``, ``quality.png`` and the runs under ``output``. Returns the JSON's content.

    ``preset`` is BERT4Rec's; ``overrides`` maps a model name to settings of that model
    (``{"bert4rec": {"hidden_size": 128}}``). ``time_budget``, ``epochs``, ``threads`` and
    ``device`` apply to every trainable model alike (a per-model ``epochs`` wins). ``progress``
    shows bars and per-epoch lines; ``log`` receives one line per model and seed.

    ``jobs`` trains that many runs at a time, each in its own process (``threads`` torch
    threads each; by default the cores shared out); all of them share the machine, so a time
    budget buys each run less than it would alone. ``resume`` reuses the runs already finished
    in ``output`` with the same settings, data and negatives, and goes on with the unfinished
    ones from their last checkpoint (written after every epoch), so an interrupted benchmark
    goes on where it stopped; the rest are trained.

    ``valid_users`` validates every trainable model on that many users, drawn once (the same
    draw for every model of a seed), rather than all of them.

    ``tuning`` maps a model to the search its settings came from (:func:`tuning_summary` of a
    ``bert4rec tune`` result); the table shows each model's tuning budget beside its numbers.
    """
    output = Path(output)
    models = list(models)
    seeds = list(seeds)
    per_model = {model: dict(values) for model, values in (overrides or {}).items()}
    for name in models:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; choose from {','.join(MODELS)}")
    if not models or len(set(models)) != len(models):
        raise ConfigError("give each model to train once, and at least one")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: give at least one seed, each once (got {seeds})")
    if negatives < 1:
        raise ConfigError("--negatives must be at least 1")
    if time_budget is not None and time_budget <= 0:
        raise ConfigError("--time-budget must be positive")
    if epochs is not None and epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be at least 1")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if valid_users is not None and valid_users < 1:
        raise ConfigError("--valid-users must be at least 1")  # the flag's name, not the key's
    if jobs > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output} exists and is not a directory")
    shared = {key: value for key, value in (("time_budget", time_budget), ("epochs", epochs),
                                            ("threads", threads), ("device", device),
                                            ("valid_users", valid_users))
              if value is not None}
    _check_settings(models, per_model, preset, data.num_items, {"seed": seeds[0], **shared})
    # The negatives are the same for every run; drawing them once here checks that the
    # catalogue is large enough before anything trains.
    try:
        sample_negatives(data, eval_cases(data, "test").users, negatives, item_popularity(data),
                         seed=NEGATIVE_SEED)
    except ConfigError as exc:
        raise ConfigError(f"--negatives {negatives}: {exc}") from exc

    started = datetime.now(UTC)
    code = commit_info()  # now, before anything trains: the code that runs is this commit's
    clock = time.perf_counter()
    say = log or (lambda message: None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # evaluation and POP too, not only the training loops
    total = len(models) * len(seeds)
    budget = f", time budget {time_budget:g}s per run" if time_budget is not None else ""
    at_once = f", {jobs} at a time" if jobs > 1 else ""
    say(f"benchmark: {len(models)} model(s) x {len(seeds)} seed(s) = {total} runs{budget}"
        f"{at_once}")
    tasks = [(model, seed) for model in models for seed in seeds]
    machine = machine_info()
    pinned = unset_limits(preset, shared) if "bert4rec" in models else {}

    def settings_of(task: tuple[str, int]) -> dict[str, Any]:
        own = {**pinned, **per_model.get("bert4rec", {})} if task[0] == "bert4rec" else \
            per_model.get(task[0], {})
        return {"seed": task[1], **shared, **own}

    keys = {task: _run_key(task[0], settings_of(task), preset, negatives, data, jobs, machine)
            for task in tasks}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    if resume:
        for task in tasks:
            found = _finished(output / "runs" / f"{task[0]}-seed{task[1]}", keys[task])
            if found is not None:
                records[task] = {**found, "reused": True}
        if records:
            say(f"benchmark: {len(records)} of {total} run(s) already in {output}, reused")
        others = [task for task in tasks if task not in records
                  and (output / "runs" / f"{task[0]}-seed{task[1]}" / RECORD).exists()]
        if others:
            say(f"benchmark: {len(others)} finished run(s) in {output} were made with other "
                "settings, data, negatives, machine or --jobs; trained again")
    try:
        pending = [task for task in tasks if task not in records]
        arguments = {task: (task[0], data, settings_of(task), preset,
                            output / "runs" / f"{task[0]}-seed{task[1]}",
                            options or PrepareOptions(), titles, negatives, keys[task],
                            code["commit"])
                     for task in pending}
        if jobs > 1 and len(pending) > 1:
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context,
                                       initializer=_start_worker,
                                       initargs=(threads, os.getpid()))
            try:
                futures = {pool.submit(_run, *arguments[task], False, None, resume): task
                           for task in pending}
                for future in as_completed(futures):
                    task = futures[future]
                    records[task] = future.result()
                    say(_progress_line(len(records), total, task[0], records[task]))
            except BaseException:
                # Ctrl-C or a failed run: runs already finished keep their records and the
                # others their last checkpoint (--resume goes on from both); none goes on
                # training, and no queued one starts.
                pool.shutdown(wait=False, cancel_futures=True)
                for worker in multiprocessing.active_children():
                    worker.terminate()
                raise
            pool.shutdown(wait=True)
        else:
            for task in pending:
                records[task] = _run(*arguments[task], progress, log if progress else None,
                                     resume)
                say(_progress_line(len(records), total, task[0], records[task]))
    finally:
        torch.set_num_threads(previous_threads)
    runs = {model: [records[(model, seed)] for seed in seeds] for model in models}
    reference_results: dict[str, dict[str, EvaluationResult]] = {
        model: {protocol: stored_result(runs[model][0], protocol, negatives)
                for protocol in PROTOCOL_NAMES}
        for model in models}

    report: dict[str, Any] = {
        "command": command or _python_call(data, models, preset, per_model, seeds, shared,
                                           negatives, output),
        **code,
        "machine": {**machine_info(), "threads": threads or previous_threads},
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": time.perf_counter() - clock,
        "data": data.describe(),
        "synthetic": data.synthetic,
        "settings": {
            "models": models, "seeds": seeds, "reference_seed": seeds[0],
            "preset": preset if "bert4rec" in models else None, "overrides": per_model,
            "time_budget": time_budget, "epochs": epochs, "threads": threads,
            "device": device, "valid_users": valid_users, "jobs": jobs, "split": "test",
            "protocols": list(PROTOCOL_NAMES),
            "negatives": negatives, "negative_seed": NEGATIVE_SEED, "tie_rule": "expected",
            "confidence": CONFIDENCE,
        },
        "results": {model: _summarise(model, runs[model], reference_results)
                    for model in models},
        "tuning": {model: dict(info) for model, info in (tuning or {}).items()
                   if model in models},
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "quality.json", report)
    markdown = render_markdown(report)

    def write_markdown(tmp: str) -> None:
        Path(tmp).write_text(markdown, encoding="utf-8")

    atomic_write(output / "quality.md", write_markdown)
    plot(report, output / "quality.png")
    say(f"wrote {output / 'quality.md'}, {output / 'quality.json'}, {output / 'quality.png'}")
    return report


def _progress_line(done: int, total: int, model: str, record: dict[str, Any]) -> str:
    full, sampled = record["full"]["metrics"], record["popularity"]["metrics"]
    return (f"benchmark [{done}/{total}] {model} seed {record['seed']}: trained in "
            f"{record['train_seconds']:.1f}s ({record['epochs']} epochs, "
            f"{record['stopped'] or 'done'}); test full NDCG@10 {full['NDCG@10']:.4f} "
            f"HR@10 {full['HR@10']:.4f}, popularity NDCG@10 {sampled['NDCG@10']:.4f} "
            f"HR@10 {sampled['HR@10']:.4f}")


def _python_call(
    data: Interactions, models: list[str], preset: str, overrides: dict[str, dict[str, Any]],
    seeds: list[int], shared: dict[str, Any], negatives: int, output: Path,
) -> str:
    arguments = [repr(data.source), f"{str(output)!r}", f"models={models!r}",
                 f"preset={preset!r}", f"overrides={overrides!r}", f"seeds={seeds!r}",
                 *(f"{key}={value!r}" for key, value in shared.items()),
                 f"negatives={negatives}"]
    return f"bert4rec.benchmark.quality({', '.join(arguments)})"


def _summarise(
    model: str, runs: list[dict[str, Any]],
    reference_results: dict[str, dict[str, EvaluationResult]],
) -> dict[str, Any]:
    """Means and spreads over seeds, intervals over users and the paired comparison with
    BERT4Rec, both on the first seed's run."""
    out: dict[str, Any] = {"label": LABELS[model], "runs": runs}
    for protocol in PROTOCOL_NAMES:
        out[protocol] = {metric: _spread([r[protocol]["metrics"][metric] for r in runs])
                         for metric in METRICS}
    out["train_seconds"] = _spread([r["train_seconds"] for r in runs])
    ours = reference_results[model]
    out["ci"] = {protocol: {metric: list(bootstrap_ci(ours[protocol].per_user[metric].to_numpy(),
                                                      CONFIDENCE))
                            for metric in CI_METRICS}
                 for protocol in PROTOCOL_NAMES}
    if model != REFERENCE and REFERENCE in reference_results:
        out["vs_bert4rec"] = {
            protocol: paired_comparison(ours[protocol], reference_results[REFERENCE][protocol])
            for protocol in PROTOCOL_NAMES}
    return out


def paired_comparison(ours: EvaluationResult, reference: EvaluationResult) -> dict[str, Any]:
    """``ours`` minus ``reference`` on the compared metric, paired over users, with its verdict:
    better or worse where the interval excludes zero."""
    paired = compare(ours, reference, metric=COMPARED_METRIC, confidence=CONFIDENCE)
    if paired.ci_low > 0:
        verdict = "better"
    elif paired.ci_high < 0:
        verdict = "worse"
    else:
        verdict = "no clear difference"
    return {**asdict(paired), "verdict": verdict}


# ----------------------------------------------------------------------------------------------
# The report


def _num(value: float) -> str:
    """``.4f`` without the leading zero, as the paper prints its tables."""
    text = f"{value:.4f}"
    return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _num(value)


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.0f}"


def _protocol_title(protocol: str, negatives: int) -> str:
    if protocol == "full":
        return "Full ranking (every item; the user's history removed)"
    paper = " (the paper's protocol)" if negatives == 100 else ""
    return f"Popularity-sampled: {negatives} negatives drawn by popularity{paper}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: provenance, one table per protocol (full ranking first), the
    comparison with BERT4Rec in words, training times."""
    settings, data, results = report["settings"], report["data"], report["results"]
    models: list[str] = settings["models"]
    seeds: list[int] = settings["seeds"]
    ref_seed = settings["reference_seed"]
    machine = report["machine"]
    tag = "SYNTHETIC " if report["synthetic"] else ""
    dirty = {True: "yes", False: "no", None: "unknown"}[report["dirty"]]
    if report["dirty_paths"]:
        dirty += f" ({', '.join(report['dirty_paths'])})"
    budget = settings["time_budget"]
    lines = [
        f"# Quality benchmark on {tag}data: {data.get('source') or 'a data frame'}",
        "",
    ]
    if report["synthetic"]:
        lines += ["**SYNTHETIC data**: generated with a planted sequential pattern; these "
                  "numbers check the harness, they say nothing about real recommendations.", ""]
    lines += [
        f"- Command: `{report['command']}`",
        f"- Commit: `{report['commit']}`, dirty: {dirty}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch "
        f"threads; GPU: {machine['gpu'] or 'none'}; torch {machine['torch']}, Python "
        f"{machine['python']}",
        f"- Date: {report['date']}; {_seconds(report['duration_seconds'])}s in all",
        f"- Data: {data['users']:,} users, {data['items']:,} items, "
        f"{data['interactions']:,} interactions; leave-one-out, test split",
        f"- Seeds: {' '.join(map(str, seeds))}; each cell is the mean"
        + (" ± standard deviation over seeds" if len(seeds) > 1 else " of one seed"),
        "- Training: "
        + (f"time budget {budget:g}s of training steps per run (validation not counted), the "
           "same for every model" if budget is not None else "no time budget")
        + f"; epochs: {settings['epochs'] or 'each model’s default'}; "
        f"device: {settings['device'] or 'auto'}"
        + (f"; validation on {settings['valid_users']:,} users drawn once, for every trained "
           "model" if settings.get("valid_users") and settings["valid_users"] < data["users"]
           else "")
        + (f"; BERT4Rec preset `{settings['preset']}`" if settings["preset"] else "")
        + (f"; {settings['jobs']} runs trained at a time, sharing the machine"
           if settings.get("jobs", 1) > 1 else ""),
    ]
    older = sorted({f"{LABELS[model]} seed {run['seed']} (`{run['commit']}`, {run['date']})"
                    for model in models for run in results[model]["runs"]
                    if run.get("reused") and run.get("commit") != report["commit"]})
    if older:
        lines.append("- Runs reused from another commit: " + "; ".join(older))
    resumed = sorted(f"{LABELS[model]} seed {run['seed']} (started at `{run['started']['commit']}`"
                     f", {run['started']['date']}; resumed at `{run['commit']}`)"
                     for model in models for run in results[model]["runs"]
                     if run.get("resumed") and run.get("started"))
    if resumed:
        lines.append("- Runs resumed from a checkpoint after an interruption: "
                     + "; ".join(resumed))
    for model, values in settings["overrides"].items():
        lines.append(f"- {LABELS[model]} settings: {_settings_text(values)}")
    lines += [
        f"- Ties: expected rank under random tie-breaking; sampled negatives use seed "
        f"{settings['negative_seed']} for every run. The {int(settings['confidence'] * 100)} % "
        f"intervals are a bootstrap over users of the seed-{ref_seed} run.",
        "",
    ]
    for protocol in settings["protocols"]:
        lines += [f"## {_protocol_title(protocol, settings['negatives'])}", ""]
        head = [*METRICS, *(f"{m} 95 % CI" for m in CI_METRICS)]
        lines += ["| model | " + " | ".join(head) + " |",
                  "|---|" + "---:|" * len(head)]
        for model in models:
            res = results[model]
            cells = []
            for metric in METRICS:
                spread = res[protocol][metric]
                cell = _num(spread["mean"])
                if len(seeds) > 1:
                    cell += f" ± {_num(spread['std'])}"
                cells.append(cell)
            for metric in CI_METRICS:
                low, high = res["ci"][protocol][metric]
                cells.append(f"{_num(low)}–{_num(high)}")
            lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _tuning_section(report)
    lines += _comparison_section(report)
    lines += _order_section(report)
    lines += ["## Training time", "",
              "| model | training seconds | epochs | stopped by |", "|---|---:|---:|---|"]
    for model in models:
        res = results[model]
        secs = res["train_seconds"]
        cell = _seconds(secs["mean"]) + (f" ± {_seconds(secs['std'])}" if len(seeds) > 1 else "")
        epochs = "/".join(str(r["epochs"]) for r in res["runs"])
        stopped = "; ".join(sorted({r["stopped"] or "done" for r in res["runs"]}))
        lines.append(f"| {LABELS[model]} | {cell} | {epochs} | {stopped} |")
    lines += ["", "![full-ranking NDCG@10 against training time](quality.png)", ""]
    return "\n".join(lines)


def tuning_summary(search: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """What the table says of a model's tuning: the budget spent and what it chose."""
    budget = search["budget"]
    return {"file": str(path), "trials": budget["trials"],
            "time_budget_per_trial": budget.get("time_budget_per_trial"),
            "epochs_per_trial": budget.get("epochs_per_trial"),
            "train_seconds": budget.get("train_seconds"),
            "best_trial": search["best"]["trial"], "settings": search["best"]["settings"],
            "best_valid_NDCG@10": search["best"].get("valid_NDCG@10")}


def _settings_text(values: Mapping[str, Any]) -> str:
    """A model's settings as the tables show them: ``key=value`` pairs, or its own defaults."""
    return ", ".join(f"{key}={value!r}" for key, value in values.items()) or "its own defaults"


def _unsearched_settings(report: dict[str, Any], model: str) -> str:
    """What a model without a search trained with: its --set values or its own defaults, and for
    BERT4Rec its preset (which may itself have been chosen on validation, outside this table)."""
    settings = report["settings"]
    overrides = settings["overrides"].get(model) or {}
    if model != "bert4rec":
        return _settings_text(overrides)
    preset = f"preset `{settings['preset']}`"
    return f"{preset}, {_settings_text(overrides)}" if overrides else preset


def _tuning_section(report: dict[str, Any]) -> list[str]:
    tuning: dict[str, Any] = report.get("tuning") or {}
    if not tuning:
        return []
    models: list[str] = report["settings"]["models"]
    lines = ["## Tuning (validation split only)", "",
             "| model | trials | per trial | training seconds spent | best valid NDCG@10 | "
             "chosen settings |", "|---|---:|---:|---:|---:|---|"]
    for model in models:
        if model == "pop":
            continue
        info = tuning.get(model)
        if info is None:
            lines.append(f"| {LABELS[model]} | not searched | | | | "
                         f"{_unsearched_settings(report, model)} |")
            continue
        per_trial = " / ".join(
            part for part in (
                f"{info['time_budget_per_trial']:g} s" if info["time_budget_per_trial"] else "",
                f"{info['epochs_per_trial']} epochs" if info["epochs_per_trial"] else "")
            if part)
        lines.append(f"| {LABELS[model]} | {info['trials']} | {per_trial} | "
                     f"{_seconds(info['train_seconds'])} | {_num(info['best_valid_NDCG@10'])} | "
                     f"{_settings_text(info['settings'])} |")
    trainable = [m for m in models if m != "pop"]
    budgets = {(tuning[m]["trials"], tuning[m]["time_budget_per_trial"],
                tuning[m]["epochs_per_trial"]) if m in tuning else None for m in trainable}
    lines += ["", "Every trainable model had the same tuning budget." if len(budgets) == 1
              else "**The tuning budgets differ between models**: compare with care.", ""]
    return lines


def _comparison_section(report: dict[str, Any]) -> list[str]:
    settings, results = report["settings"], report["results"]
    ref_seed = settings["reference_seed"]
    lines = [f"## Against BERT4Rec: paired {COMPARED_METRIC}, seed {ref_seed}", ""]
    if REFERENCE not in results:
        return [*lines, "BERT4Rec was not trained, so nothing is compared with it.", ""]
    others = [m for m in settings["models"] if m != REFERENCE]
    if not others:
        return [*lines, "BERT4Rec was the only model trained.", ""]
    lines += [f"Difference = model − BERT4Rec over the same test users; a model beats "
              f"BERT4Rec where the whole {int(settings['confidence'] * 100)} % interval of "
              "the difference lies above zero.", "",
              "| model | protocol | difference | 95 % CI | paired t p | Wilcoxon p | verdict |",
              "|---|---|---:|---|---:|---:|---|"]
    sentences = []
    for model in others:
        for protocol in settings["protocols"]:
            c = results[model]["vs_bert4rec"][protocol]
            name = "full ranking" if protocol == "full" else "popularity-sampled"
            lines.append(f"| {LABELS[model]} | {name} | {_signed(c['difference'])} | "
                         f"{_signed(c['ci_low'])} to {_signed(c['ci_high'])} | "
                         f"{c['t_pvalue']:.3g} | {c['wilcoxon_pvalue']:.3g} | {c['verdict']} |")
            if c["difference"] > 0:
                detail = (f"{_signed(c['difference'])} (95 % CI {_signed(c['ci_low'])} to "
                          f"{_signed(c['ci_high'])}, paired t p = {c['t_pvalue']:.3g}, "
                          f"Wilcoxon p = {c['wilcoxon_pvalue']:.3g})")
                if c["verdict"] == "better":
                    sentences.append(f"- **{LABELS[model]} beats BERT4Rec** on {name} "
                                     f"{COMPARED_METRIC}: {detail}.")
                else:
                    sentences.append(f"- {LABELS[model]} scores above BERT4Rec on {name} "
                                     f"{COMPARED_METRIC}, but the interval includes zero: "
                                     f"{detail}.")
    lines.append("")
    if sentences:
        lines += sentences
    else:
        lines.append(f"No model scores above BERT4Rec on {COMPARED_METRIC} under either "
                     "protocol.")
    return [*lines, ""]


def _order_section(report: dict[str, Any]) -> list[str]:
    """Say so where the two protocols rank the models differently (Krichene & Rendle 2020)."""
    results, models = report["results"], report["settings"]["models"]
    if len(models) < 2:
        return []
    orders = {}
    for protocol in PROTOCOL_NAMES:
        means = {m: results[m][protocol]["NDCG@10"]["mean"] for m in models}
        orders[protocol] = sorted(models, key=lambda m: -means[m])
    if orders["full"] == orders["popularity"]:
        return ["Both protocols order the models the same way by mean NDCG@10.", ""]
    shown = {p: " > ".join(LABELS[m] for m in order) for p, order in orders.items()}
    return ["**The protocols disagree** on the order of the models by mean NDCG@10: full "
            f"ranking {shown['full']}; popularity-sampled {shown['popularity']}. Full ranking "
            "is the one to trust.", ""]


def plot(report: dict[str, Any], path: Path) -> None:
    """Full-ranking NDCG@10 against training seconds, one point per model (mean over seeds,
    bars = standard deviation), drawn with Agg: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results, models = report["results"], report["settings"]["models"]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    floor = 1e-3  # POP counts in well under a millisecond; a log axis needs a positive value
    for model in models:
        res = results[model]
        x = max(res["train_seconds"]["mean"], floor)
        y = res["full"]["NDCG@10"]["mean"]
        xerr = res["train_seconds"]["std"] if x > floor else None
        ax.errorbar(x, y, xerr=xerr, yerr=res["full"]["NDCG@10"]["std"],
                    fmt="o", capsize=3, color="C3" if model == REFERENCE else "C0")
        ax.annotate(LABELS[model], (x, y), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds per run (log scale)")
    ax.set_ylabel("NDCG@10, full ranking (test)")
    title = f"Quality against training time: {report['data'].get('source') or 'data'}"
    if report["synthetic"]:
        title += " (SYNTHETIC)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    def write_png(tmp: str) -> None:
        fig.savefig(tmp, format="png")

    atomic_write(path, write_png)
