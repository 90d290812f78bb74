"""Train BERT4Rec with one preset for several seeds and evaluate each on the test split.

Every seed runs the package's own CLI (``bert4rec train`` then ``bert4rec evaluate``) in its own
process, several at once if asked (one GPU or many cores serve several small models well).
Writes one JSON file with per-seed metrics under both protocols, their mean and spread, and a
95 % bootstrap interval over users per seed.

    python benchmarks/bert4rec_seeds.py --data ../shared/data/ml-1m/ml-1m.txt --preset ml-1m \
        --seeds 0 1 2 --parallel 3 --out benchmarks/results/bert4rec-ml-1m.json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from bert4rec.benchmark import provenance_header
from bert4rec.evaluation import METRICS, bootstrap_ci
from bert4rec.runs import write_json

ROOT = Path(__file__).resolve().parent.parent

# The CLI processes running now, so that ending this script (SIGTERM, SIGHUP) ends them too
# rather than leaving them to train on unseen; once it is ending, no seed starts another.
_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()
_ending = threading.Event()


def run_child(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(command, check=True, text=True)`, the child ended if this script is."""
    with _children_lock:
        if _ending.is_set():
            raise RuntimeError(f"not started, the script is ending: {' '.join(command)}")
        process = subprocess.Popen(command, text=True, **kwargs)
        _children.add(process)
    with process:
        try:
            stdout, stderr = process.communicate()
        finally:
            with _children_lock:
                _children.discard(process)
    if process.returncode:
        if stderr:  # the child's own error message says what to fix
            sys.stderr.write(stderr)
        raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def end_children(signum: int, frame: object) -> None:
    """Signal handler: end every running child, then this script (finished seeds stay saved)."""
    with _children_lock:
        _ending.set()
        for process in _children:
            process.terminate()
    sys.exit(128 + signum)


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    run_dir = Path(args.runs) / f"{args.name}-seed{seed}"
    cli = [sys.executable, "-m", "bert4rec"]
    train = [*cli, "train", "--model", "bert4rec", "--data", args.data, "--preset", args.preset,
             "--output", str(run_dir), "--seed", str(seed), "--overwrite", "--quiet"]
    for item in args.set:
        train += ["--set", item]
    for flag in ("device", "precision", "threads", "time_budget"):
        value = getattr(args, flag)
        if value is not None:
            train += [f"--{flag.replace('_', '-')}", str(value)]
    log_path = Path(args.runs) / f"{args.name}-seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        run_child(train, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    run_info = json.loads((run_dir / "run.json").read_text())
    out: dict[str, Any] = {"seed": seed, "wall_seconds": round(wall, 1),
                           "train": run_info["metrics"],
                           "config": run_info["config"], "log": str(log_path)}
    for protocol in ("full", "popularity"):
        per_user = run_dir / f"test-{protocol}.parquet"
        result = run_child(
            [*cli, "evaluate", "--run", str(run_dir), "--data", args.data, "--protocol", protocol,
             "--json", "--per-user", str(per_user)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        record = json.loads(result.stdout)
        frame = pd.read_parquet(per_user)
        record["ci95"] = {m: bootstrap_ci(frame[m].to_numpy()) for m in ("HR@10", "NDCG@10")}
        out[protocol] = record
    print(f"seed {seed}: full NDCG@10 {out['full']['metrics']['NDCG@10']:.4f} HR@10 "
          f"{out['full']['metrics']['HR@10']:.4f}; popularity NDCG@10 "
          f"{out['popularity']['metrics']['NDCG@10']:.4f} HR@10 "
          f"{out['popularity']['metrics']['HR@10']:.4f}; {wall:.0f}s", flush=True)
    return out


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for protocol in ("full", "popularity"):
        summary[protocol] = {}
        for metric in METRICS:
            values = [s[protocol]["metrics"][metric] for s in seeds]
            summary[protocol][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values),
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--name", default=None, help="label of the runs (default: the preset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--runs", default="runs/seeds")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.name = args.name or args.preset
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **provenance_header(),
        "data": args.data,
        "preset": args.preset,
        "overrides": args.set,
        "seeds": [],
    }
    out = Path(args.out)
    lock = threading.Lock()

    def run(seed: int) -> None:
        result = one_seed(args, seed)
        with lock:  # each finished seed is on disk at once, so a cut-off run keeps it
            report["seeds"] = sorted([*report["seeds"], result], key=lambda s: s["seed"])
            report["summary"] = summarise(report["seeds"])
            write_json(out, report)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, end_children)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(run, args.seeds))
    seeds = report["seeds"]
    for protocol in ("full", "popularity"):
        s = report["summary"][protocol]
        print(f"{args.name} {protocol}: NDCG@10 {s['NDCG@10']['mean']:.4f} +- "
              f"{s['NDCG@10']['std']:.4f}, HR@10 {s['HR@10']['mean']:.4f} +- "
              f"{s['HR@10']['std']:.4f} over {len(seeds)} seeds")


if __name__ == "__main__":
    main()
