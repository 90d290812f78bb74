"""Seconds per training step (median) for presets or variants of one preset, interleaved.

    python benchmarks/step_time.py --data ../shared/data/ml-1m/ml-1m.txt --preset ml-1m-small \
        --variant fp32: --variant no-attn-dropout:attention_dropout=0 \
        --variant bf16:precision="bf16"

To compare two commits, run it in a checkout of each, alternately, with ``--threads 1 --clock
process`` (CPU seconds are far steadier than the wall clock on a shared machine).

Each variant is ``label:key=value,key=value`` applied to the preset. Steps of all variants are
interleaved, round after round, so that a noisy shared machine slows them alike and their
ratios hold. A full batch of the longest windows is timed, the worst case of an epoch; the
epoch estimate multiplies by the steps per epoch, an upper bound when batches are bucketed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.presets import load_preset, parse_assignment
from bert4rec.runs import write_json
from bert4rec.training import Trainer


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    label, _, settings = text.partition(":")
    overrides = dict(parse_assignment(s) for s in settings.split(",") if s.strip())
    return label, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--variant", action="append", default=[],
                        help="label:key=value,... (repeatable; default: the preset as is)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: CPU seconds of this process, steadier than the wall clock "
                             "on a shared machine (use with --threads 1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_interactions(args.data)
    variants = [parse_variant(v) for v in args.variant] or [(args.preset, {})]
    setups = []
    for label, overrides in variants:
        preset = load_preset(args.preset, {**overrides, "threads": args.threads})
        trainer = Trainer(data, preset.model_config(data.num_items), preset.train,
                          progress=False)
        lengths = trainer.ends - trainer.starts
        batch = np.argsort(-lengths, kind="stable")[: preset.train.batch_size]
        trainer.train_step(batch)  # warm-up
        setups.append((label, overrides, trainer, batch))
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {label: [] for label, *_ in setups}
    for _ in range(args.rounds):
        for label, _, trainer, batch in setups:
            started = clock()
            trainer.train_step(batch)
            times[label].append(clock() - started)
    base = statistics.median(times[setups[0][0]])
    rows = []
    for label, overrides, trainer, _ in setups:
        step = statistics.median(times[label])
        row = {"variant": label, "overrides": overrides, "seconds_per_step": round(step, 4),
               "speedup_vs_first": round(base / step, 2),
               "steps_per_epoch": trainer.steps_per_epoch,
               "epoch_seconds_upper_bound": round(step * trainer.steps_per_epoch, 1),
               "all_seconds": [round(t, 4) for t in times[label]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        report = {**provenance_header(), "clock": args.clock,
                  "data": args.data, "preset": args.preset, "threads": args.threads,
                  "rounds": args.rounds, "rows": rows}
        write_json(Path(args.out), report)


if __name__ == "__main__":
    main()
