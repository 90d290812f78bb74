"""Seconds per epoch of data-parallel training on CPU: N processes x 1 thread under torchrun
against 1 process x N threads, in interleaved rounds (the machine may be shared and noisy).

Each run is the package's CLI for one epoch; the epoch time is the run's own training clock
(``history[0].elapsed``: first batch to last, no validation, no data preparation). Each run
records the machine's 1-minute load average before and after it.

    BERT4REC_CACHE=/tmp/b4cache python benchmarks/ddp_cpu.py --data ml-1m.txt \
        --preset ml-1m-small --rounds 2 --out benchmarks/results/ddp-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bert4rec.benchmark import provenance_header
from bert4rec.runs import write_json


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    run_dir = Path(args.runs) / f"p{processes}"
    train = ["-m", "bert4rec", "train", "--model", "bert4rec", "--data", args.data,
             "--preset", args.preset, "--epochs", "1", "--output", str(run_dir), "--overwrite",
             "--quiet"]
    for item in args.set:
        train += ["--set", item]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), "--master-port", str(free_port()), *train, "--threads", "1"]
    else:
        command = [sys.executable, *train, "--threads", str(args.cores)]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    metrics = json.loads((run_dir / "run.json").read_text())["metrics"]
    return {"processes": processes, "threads": 1 if processes > 1 else args.cores,
            "epoch_seconds": metrics["history"][0]["elapsed"], "steps": metrics["steps"],
            "loss": metrics["history"][0]["loss"], "valid_full": metrics["valid_full"],
            "wall_seconds": round(wall, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="ml-1m-small")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cores", type=int, default=2, help="processes, or threads of one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", default="/tmp/ddp-cpu-runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    header = provenance_header()
    runs = []
    for round_ in range(args.rounds):
        # Alternate which goes first, so neither always meets the same load.
        order = (args.cores, 1) if round_ % 2 == 0 else (1, args.cores)
        for processes in order:
            result = one_run(args, processes) | {"round": round_ + 1}
            print(json.dumps({k: result[k] for k in ("round", "processes", "threads",
                                                      "epoch_seconds", "wall_seconds")}),
                  flush=True)
            runs.append(result)
    median = {label: round(statistics.median(r["epoch_seconds"] for r in runs
                                             if (r["processes"] > 1) == several), 2)
              for label, several in (("processes", True), ("threads", False))}
    report = {
        "what": f"seconds per epoch, {args.cores} processes x 1 thread (torchrun, gloo) vs "
                f"1 process x {args.cores} threads",
        "data": args.data, "preset": args.preset, "set": args.set, "rounds": args.rounds,
        "median_epoch_seconds": {f"{args.cores}x1": median["processes"],
                                 f"1x{args.cores}": median["threads"]},
        "runs": runs, **header,
    }
    write_json(args.out, report)
    print(json.dumps(report["median_epoch_seconds"]))


if __name__ == "__main__":
    main()
