"""Seconds per training step (median of several) and the implied epoch time for presets.

    python benchmarks/step_time.py --data ../shared/data/ml-1m/ml-1m.txt --presets ml-1m ml-1m-small

Full batches of the longest windows are timed, the worst case of an epoch; the epoch estimate
multiplies by the number of steps per epoch, so it is an upper bound when batches are bucketed
by length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bert4rec.data import load_interactions
from bert4rec.presets import load_preset
from bert4rec.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_interactions(args.data)
    rows = []
    for name in args.presets:
        preset = load_preset(name, {"precision": args.precision, "threads": args.threads})
        trainer = Trainer(data, preset.model_config(data.num_items), preset.train,
                          progress=False)
        lengths = trainer.ends - trainer.starts
        longest = np.argsort(-lengths, kind="stable")[: preset.train.batch_size]
        trainer.train_step(longest)  # warm-up
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            trainer.train_step(longest)
            times.append(time.perf_counter() - started)
        step = statistics.median(times)
        row = {"preset": name, "precision": args.precision, "threads": args.threads,
               "windows": len(trainer.starts), "steps_per_epoch": trainer.steps_per_epoch,
               "max_window": int(lengths.max()), "seconds_per_step": round(step, 4),
               "epoch_seconds_upper_bound": round(step * trainer.steps_per_epoch, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"data": args.data, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
