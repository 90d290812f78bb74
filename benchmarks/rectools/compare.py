"""Side by side with RecTools: epoch times at one configuration, and the peer's lists scored
with our metrics.

Runs in our ``.venv``; RecTools runs in ``.venv-rectools`` (``benchmarks/rectools/setup.sh``)
through ``peer.py``, one process per measurement, and hands back JSON and Parquet files.

**Epoch time.** The configuration of both: ML-1m, d = 64, L = 2 blocks, 2 heads, N = 200,
dropout 0.2 (hidden and attention), batch 256, lr 1e-3, mask proportion 0.2, full-softmax loss,
one window (the most recent N items) per user per epoch, ``--threads`` threads; RecTools in
fp32 (as it ships), ours in fp32 and in bf16 autocast (``--precisions``). Ours is
the ``ml-1m-small`` preset with ``window_step = None`` and ``last_item_prob = 0`` (RecTools has no
last-item-only samples), timed as the training loop of one epoch (no validation), with
batches bucketed by length as shipped (``--unbucketed`` adds a run with every batch padded like
RecTools'). Measurements are interleaved, round after round, so that a shared machine slows
all alike; medians are reported.

**Quality.** ``--quality-budget SECONDS`` has ``peer.py`` train each model for that long and
write every user's top 100 for the test case; ``--recs MODEL=FILE`` scores such files. The
test item's rank in the list gives HR@k and NDCG@k exactly for k <= 100 (the list is the
peer's full ranking with seen items removed, the same exclusion our ``full`` protocol makes,
except for a test item that repeats a history item: the peer drops it, ours ranks it; the
report counts such users, none on ML-1m, and warns where there are any);
a test item outside the list is counted at the bottom of the ranking, so MRR is a lower bound,
exact when every test item is within the top 100 (its upper bound is given beside it).
``--ours-budget SECONDS`` trains ours at the same settings for that long and evaluates it
under our ``full`` protocol, for a side by side at equal training time: our BERT4Rec beside
RecTools' BERT4Rec, our SASRec with the full-softmax loss (``sasrec-ce``: d = 64, 2 blocks, 2
heads, N = 200, dropout 0.2, batch 256, Adam at 1e-3, as RecTools' SASRec) beside RecTools'
SASRec. With ``--together`` the peer's training and ours run at the same time, ``--threads``
threads each, so that both meet the same machine (on two cores: one thread each).

    python benchmarks/rectools/compare.py --data ../shared/data/ml-1m/ml-1m.txt \
        --rounds 3 --epochs 2 --out benchmarks/results/rectools-peer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bert4rec.baselines import sasrec
from bert4rec.baselines.common import FitConfig
from bert4rec.benchmark import provenance_header
from bert4rec.data import Interactions, load_interactions
from bert4rec.evaluation import METRICS, evaluate, metrics_from_ranks
from bert4rec.presets import load_preset
from bert4rec.runs import write_json
from bert4rec.split import eval_cases
from bert4rec.training import Trainer

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(__file__).resolve().parent / "peer.py"
PEER_PYTHON = ROOT / ".venv-rectools" / "bin" / "python"
PEER_MODELS = ("bert4rec", "sasrec")
TOP_K = 100

# The ml-1m-small preset moved to the configuration RecTools runs: see the module docstring.
OURS: dict[str, Any] = {
    "window_step": None, "hidden_dropout": 0.2, "attention_dropout": 0.2, "batch_size": 256,
    "lr": 1e-3, "mask_prob": 0.2, "max_predictions": 40, "last_item_prob": 0.0, "max_len": 200,
    "hidden_size": 64, "num_layers": 2, "num_heads": 2, "precision": "fp32", "device": "cpu",
    "time_budget": None,
}


# ----------------------------------------------------------------------------------------------
# Epoch times


def run_peer(arguments: list[str], log: Path) -> None:
    """Run ``peer.py`` in the RecTools environment; its output goes to ``log``."""
    if not PEER_PYTHON.exists():
        sys.exit(f"{PEER_PYTHON} not found: run `bash benchmarks/rectools/setup.sh` first")
    with open(log, "a") as out:
        out.write(f"$ peer.py {' '.join(arguments)}\n")
        out.flush()
        done = subprocess.run([str(PEER_PYTHON), str(PEER), *arguments], cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        sys.exit(f"peer.py failed (exit {done.returncode}); see {log}")


def peer_epochs(args: argparse.Namespace, model: str, log: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "epochs.json"
        run_peer(["--data", args.data, "--model", model, "--mode", "epoch-time",
                  "--epochs", str(args.epochs), "--threads", str(args.threads),
                  "--out", str(out)], log)
        return json.loads(out.read_text())


def our_trainer(data: Interactions, bucket: bool, threads: int,
                budget: float | None = None, precision: str = "fp32") -> Trainer:
    preset = load_preset("ml-1m-small", {**OURS, "bucket_by_length": bucket, "threads": threads,
                                         "time_budget": budget, "precision": precision})
    return Trainer(data, preset.model_config(data.num_items), preset.train, progress=False)


def our_epoch(trainer: Trainer) -> float:
    """Seconds of one training epoch: every batch of ``epoch_batches``, no validation."""
    trainer.model.train()
    started = time.perf_counter()
    for batch in trainer.epoch_batches():
        trainer.train_step(batch)
    return time.perf_counter() - started


def epoch_times(args: argparse.Namespace, data: Interactions, log: Path,
                save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Interleaved epoch times; ``save`` gets the summary so far after every round."""
    ours = {f"ours ({precision}, bucketed)": our_trainer(data, True, args.threads,
                                                          precision=precision)
            for precision in args.precisions}
    if args.unbucketed:
        ours["ours (fp32, unbucketed)"] = our_trainer(data, False, args.threads)
    for trainer in ours.values():  # warm-up: first-call allocations are not an epoch's cost
        trainer.train_step(trainer.epoch_batches()[0])
    labels = [f"rectools {m}" for m in args.models] + list(ours)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    peer_reports: dict[str, list[dict[str, Any]]] = {m: [] for m in args.models}
    for round_ in range(args.rounds):
        order = labels if round_ % 2 == 0 else labels[::-1]  # alternate who goes first
        for label in order:
            if label.startswith("rectools "):
                model = label.removeprefix("rectools ")
                report = peer_epochs(args, model, log)
                peer_reports[model].append(report)
                seconds[label] += report["epoch_seconds"]
            else:
                seconds[label] += [our_epoch(ours[label]) for _ in range(args.epochs)]
            print(f"round {round_ + 1}/{args.rounds} {label}: "
                  f"{', '.join(f'{s:.1f}' for s in seconds[label][-args.epochs:])} s/epoch "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        save(summarise_epochs(args, seconds, ours, peer_reports, rounds_done=round_ + 1))
    return summarise_epochs(args, seconds, ours, peer_reports, rounds_done=args.rounds)


def summarise_epochs(args: argparse.Namespace, seconds: dict[str, list[float]],
                     ours: dict[str, Trainer], peer_reports: dict[str, list[dict[str, Any]]],
                     rounds_done: int) -> dict[str, Any]:
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    ours_labels = [label for label in seconds if label.startswith("ours")]
    rows: dict[str, dict[str, Any]] = {
        label: {"median_epoch_seconds": round(medians[label], 2),
                "epoch_seconds": [round(s, 2) for s in seconds[label]]}
        for label in seconds
    }
    for label in seconds:  # how many times as long as each of ours, by the medians
        rows[label]["times_ours"] = {o: round(medians[label] / medians[o], 2)
                                     for o in ours_labels}
    for label, trainer in ours.items():
        rows[label]["steps_per_epoch"] = trainer.steps_per_epoch
    for model, reports in peer_reports.items():
        rows[f"rectools {model}"]["steps_per_epoch"] = reports[0]["steps_per_epoch"]
        rows[f"rectools {model}"]["versions"] = reports[0]["versions"]
        rows[f"rectools {model}"]["config"] = reports[0]["config"]
    return {"rounds": rounds_done, "epochs_per_round": args.epochs, "threads": args.threads,
            "ours_settings": {"preset": "ml-1m-small", **OURS}, "rows": rows}


# ----------------------------------------------------------------------------------------------
# Quality of the peer's lists


def score_recommendations(data: Interactions, path: Path) -> dict[str, Any]:
    """Our full-ranking metrics from a peer's top-k lists of the test case (see the module
    docstring for what is exact and what is a bound)."""
    recs = pd.read_parquet(path)
    missing = {"user", "item", "rank"} - set(recs.columns)
    if missing:
        sys.exit(f"{path}: no column(s) {', '.join(sorted(missing))}")
    cases = eval_cases(data, "test")
    histories = cases.histories(data.items, np.arange(len(cases)))
    frame = pd.DataFrame({"user": data.user_ids[cases.users],
                          "item": data.vocab.item_ids[cases.targets - 1]})
    found = frame.merge(recs[["user", "item", "rank"]], on=["user", "item"], how="left")
    rank = found["rank"].to_numpy(dtype=np.float64)  # 1-based, NaN where not listed
    listed = ~np.isnan(rank)
    # Candidates in our full protocol: every item but the user's history (the target stays).
    candidates = np.array([data.num_items - len(np.setdiff1d(h, [t]))
                           for h, t in zip(histories, cases.targets.tolist(), strict=True)])
    greater_low = np.where(listed, np.nan_to_num(rank) - 1, candidates - 1).astype(np.int64)
    greater_high = np.where(listed, np.nan_to_num(rank) - 1, TOP_K).astype(np.int64)
    ties = np.zeros(len(cases), dtype=np.int64)
    low = metrics_from_ranks(greater_low, ties)
    high = metrics_from_ranks(greater_high, ties, names=["MRR"])
    item_index = data.vocab.index
    unknown_users = set(recs["user"].tolist()) - set(frame["user"].tolist())
    unknown_items = set(recs["item"].tolist()) - set(item_index)
    if unknown_users or unknown_items:
        sys.exit(f"{path}: {len(unknown_users)} user(s) and {len(unknown_items)} item(s) of the "
                 "lists are not in the data; the lists were made on other data")
    seen_in_lists = 0
    by_user = recs.groupby("user")["item"].agg(list)
    for user, history in zip(frame["user"].tolist(), histories, strict=True):
        listed_items = by_user.get(user, [])
        internal = np.array([item_index[i] for i in listed_items], dtype=np.int64)
        seen_in_lists += int(np.isin(internal, history).sum())
    if seen_in_lists:  # the peer removes every seen item: these lists are of another split
        sys.exit(f"{path}: the lists hold {seen_in_lists} item(s) of the users' histories; "
                 "they were made on other data or another split")
    repeats = sum(int(t in set(h.tolist())) for h, t in zip(histories, cases.targets.tolist(),
                                                           strict=True))
    if repeats:
        print(f"warning: {repeats} test item(s) repeat a history item; the peer's lists leave "
              "them out (counted at the bottom), while our full protocol ranks them",
              file=sys.stderr)
    return {
        "file": str(path),
        "users": len(cases),
        "users_with_list": int(recs["user"].nunique()),
        "list_length_min": int(recs.groupby("user").size().min()),
        "targets_in_list": round(float(listed.mean()), 4),
        "history_items_in_lists": seen_in_lists,
        "targets_repeating_a_history_item": repeats,
        "metrics": {m: round(float(low[m].mean()), 6) for m in METRICS},
        "MRR_upper_bound": round(float(high["MRR"].mean()), 6),
    }


def our_quality(args: argparse.Namespace, data: Interactions) -> dict[str, Any]:
    """Ours beside each of the peer's models, one after another, keyed ``ours MODEL``."""
    runs = {}
    for model in args.models:
        run = our_bert4rec(args, data) if model == "bert4rec" else our_sasrec(args, data)
        runs[f"ours {run['model']}"] = run
        print(f"ours {run['model']}: full HR@10 {run['metrics']['HR@10']:.4f} NDCG@10 "
              f"{run['metrics']['NDCG@10']:.4f} after {run['epochs']} epochs", flush=True)
    return runs


def our_bert4rec(args: argparse.Namespace, data: Interactions) -> dict[str, Any]:
    """Our BERT4Rec at the same settings and training budget as the peer, scored on the test
    split. As shipped, it validates every ``eval_every`` epochs (outside the budget), keeps the
    best validation weights and decays the learning rate to zero when the budget ends."""
    trainer = our_trainer(data, True, args.threads, budget=args.ours_budget)
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    return {"model": "bert4rec", "metrics": full_test_metrics(result.model, data),
            "budget_seconds": args.ours_budget, "epochs": result.state.epoch,
            "best_epoch": result.state.best_epoch, "stopped": result.state.stopped,
            "train_seconds": round(result.state.elapsed, 1), "wall_seconds": round(wall, 1),
            "settings": {"preset": "ml-1m-small", **OURS, "time_budget": args.ours_budget}}


def our_sasrec(args: argparse.Namespace, data: Interactions) -> dict[str, Any]:
    """Our SASRec with the full-softmax loss at RecTools' SASRec settings, trained for the
    budget (seconds of training steps; the validation after every epoch is not counted) at a
    constant learning rate, no early stopping, keeping the best validation weights."""
    config = sasrec.SASRecConfig(num_items=data.num_items, loss="ce", max_len=OURS["max_len"],
                                 hidden_size=OURS["hidden_size"], num_layers=OURS["num_layers"],
                                 num_heads=OURS["num_heads"], dropout=OURS["hidden_dropout"])
    fit = FitConfig(epochs=100_000, batch_size=OURS["batch_size"], lr=OURS["lr"], patience=0,
                    time_budget=args.ours_budget, threads=args.threads, device="cpu")
    started = time.perf_counter()
    model, result = sasrec.fit(data, config, fit)
    wall = time.perf_counter() - started
    return {"model": config.name, "metrics": full_test_metrics(model, data),
            "budget_seconds": args.ours_budget, "epochs": result.epochs,
            "best_epoch": result.best_epoch, "stopped": result.stopped,
            "train_seconds": round(result.seconds, 1), "wall_seconds": round(wall, 1),
            "settings": {**config.to_dict(), **vars(fit)}}


def full_test_metrics(model: Any, data: Interactions) -> dict[str, float]:
    """Test metrics of one of ours under the ``full`` protocol, rounded as the report keeps them."""
    test = evaluate(model, data, split="test", protocol="full", progress=False)
    return {m: round(v, 6) for m, v in test.metrics.items()}


def quality(args: argparse.Namespace, data: Interactions, log: Path) -> dict[str, Any]:
    files = dict(item.split("=", 1) for item in args.recs)
    runs: dict[str, Any] = {}
    if args.quality_budget:
        folder = Path(args.runs)
        folder.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            out = folder / f"{model}-test-top{TOP_K}.parquet"
            run_peer(["--data", args.data, "--model", model, "--mode", "quality",
                      "--time-budget", str(args.quality_budget), "--threads", str(args.threads),
                      "--out", str(out)], log)
            files[model] = str(out)
    for model, file in files.items():
        path = Path(file)
        info = path.with_suffix(".json")
        scored = score_recommendations(data, path)
        if info.exists():
            peer = json.loads(info.read_text())
            scored["peer"] = {k: peer[k] for k in ("budget_seconds", "epochs", "fit_seconds",
                                                   "recommend_seconds", "history_items_unknown",
                                                   "versions", "config", "command") if k in peer}
        runs[model] = scored
        print(f"rectools {model}: full HR@10 {scored['metrics']['HR@10']:.4f} "
              f"NDCG@10 {scored['metrics']['NDCG@10']:.4f}; target in top {TOP_K}: "
              f"{scored['targets_in_list']:.1%}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the paper's ml-1m.txt")
    parser.add_argument("--models", nargs="+", choices=PEER_MODELS, default=list(PEER_MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="epoch-time rounds (0: none)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per model and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        default=["fp32", "bf16"], help="our precisions to time (RecTools: fp32)")
    parser.add_argument("--unbucketed", action="store_true",
                        help="also time ours with every batch padded to its longest window")
    parser.add_argument("--quality-budget", type=float, default=0.0,
                        help="seconds of peer training per model before its lists (0: none)")
    parser.add_argument("--ours-budget", type=float, default=0.0,
                        help="seconds of training for ours at the same settings (0: none)")
    parser.add_argument("--together", action="store_true",
                        help="train the peer's models and ours at the same time")
    parser.add_argument("--recs", action="append", default=[],
                        help="MODEL=FILE: score a peer's top-k Parquet file (repeatable)")
    parser.add_argument("--runs", default="runs/rectools", help="where the peer's lists go")
    parser.add_argument("--log", default="runs/rectools/peer.log")
    parser.add_argument("--out", default="benchmarks/results/rectools-peer.json")
    args = parser.parse_args()
    for item in args.recs:
        if "=" not in item:
            parser.error(f"--recs expects MODEL=FILE, got {item!r}")
    if args.together and not (args.quality_budget and args.ours_budget):
        parser.error("--together needs both --quality-budget and --ours-budget")
    torch.set_num_threads(args.threads)
    started = datetime.now(UTC)
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    data = load_interactions(args.data)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **provenance_header(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "data": args.data,
        "data_summary": {k: v for k, v in data.describe().items() if k != "source"},
    }
    out = Path(args.out)

    def save(epoch_time: dict[str, Any]) -> None:  # partial results survive an interruption
        write_json(out, {**report, "epoch_time": epoch_time})

    if args.rounds > 0:
        report["epoch_time"] = epoch_times(args, data, log, save)
    if args.together:  # the peer trains in its own process while ours trains in this one
        with ThreadPoolExecutor(max_workers=1) as pool:
            peer = pool.submit(quality, args, data, log)
            ours = our_quality(args, data)
            report["quality"] = {**peer.result(), **ours}
        report["quality_together"] = True
    else:
        if args.quality_budget or args.recs:
            report["quality"] = quality(args, data, log)
        if args.ours_budget:
            report.setdefault("quality", {}).update(our_quality(args, data))
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    write_json(out, report)
    for label, row in report.get("epoch_time", {}).get("rows", {}).items():
        times = ", ".join(f"{ratio:.2f}x {other}" for other, ratio in row["times_ours"].items())
        print(f"{label}: median {row['median_epoch_seconds']:.1f} s/epoch, {times}")


if __name__ == "__main__":
    main()
