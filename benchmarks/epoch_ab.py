"""Seconds per real training epoch of two commits, alternately on the same machine.

    python benchmarks/epoch_ab.py --data ../shared/data/ml-1m/ml-1m.txt --preset ml-1m-cpu \
        --ref 8a33653 --ref 88c78b3 --rounds 3 --out benchmarks/results/epoch-ab.json

Each commit is checked out in its own git worktree (under ``--workdir``), and ``bert4rec
benchmark speed --epochs 1`` runs from it, the commits taking turns round after round so that
a noisy shared machine slows them alike. Reported: every epoch time, the median per commit,
and the ratio of the medians (first commit over each other).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bert4rec.benchmark import provenance_header
from bert4rec.runs import write_json

ROOT = Path(__file__).resolve().parents[1]


def _checkout(ref: str, workdir: Path) -> tuple[str, Path]:
    sha = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    where = workdir / sha[:12]
    if not where.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), sha], cwd=ROOT,
                       check=True, capture_output=True)
    return sha, where


def _epoch(where: Path, args: argparse.Namespace, report: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bert4rec", "benchmark", "speed", "--data", args.data,
               "--preset", args.preset, "--threads", str(args.threads), "--epochs", "1",
               "--output", str(report)]
    for text in args.set:
        command += ["--set", text]
    env = {"PYTHONPATH": str(where / "src"), "PATH": "/usr/bin:/bin",
           "PYTHONUNBUFFERED": "1"}
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(report.read_text())["epoch"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="ml-1m-cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ref", action="append", required=True, help="a commit (twice or more)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "epoch-ab")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.ref) < 2:
        parser.error("give --ref at least twice")
    args.workdir.mkdir(parents=True, exist_ok=True)
    trees = [_checkout(ref, args.workdir) for ref in args.ref]
    epochs: dict[str, list[dict[str, Any]]] = {sha: [] for sha, _ in trees}
    for round_ in range(args.rounds):
        for sha, where in trees:
            measured = _epoch(where, args, args.workdir / f"{sha[:12]}-{round_}.json")
            epochs[sha].append(measured)
            print(f"round {round_ + 1} {sha[:9]}: {measured['seconds_per_epoch']:.1f} s/epoch",
                  flush=True)
    medians = {sha: statistics.median(e["seconds_per_epoch"] for e in runs)
               for sha, runs in epochs.items()}
    first = trees[0][0]
    result = {
        "command": " ".join(["python", "benchmarks/epoch_ab.py", *sys.argv[1:]]),
        **provenance_header(),
        "preset": args.preset, "overrides": args.set, "threads": args.threads,
        "epochs": epochs, "median_seconds_per_epoch": medians,
        "speed-up over the first": {sha: medians[first] / m for sha, m in medians.items()},
    }
    write_json(args.out, result)
    for sha, median in medians.items():
        print(f"{sha[:9]}: median {median:.1f} s/epoch, {medians[first] / median:.2f}x")


if __name__ == "__main__":
    main()
