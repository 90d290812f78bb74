"""Seconds to explain one recommendation exactly (leave-one-out over a full-window history).

    python benchmarks/explain_speed.py --run /tmp/explain-ml1m \
        --data /work/main/.devdata/ml-1m.txt --repeats 20

Takes the first user with at least ``max_len`` interactions, so the model sees a full window
(``max_len - 1`` history items plus [MASK]), explains the model's top-1 recommendation, and
reports the median of ``--repeats`` timed leave-one-out calls (``n + 1`` histories in one
forward pass) for each thread count and precision, interleaved round by round after one
warm-up round, and the whole ``explain`` (also the greedy set, attention and gradient x input)
for reference. The 1-minute load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec import explain as ex
from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.recommender import recommend
from bert4rec.runs import load_model, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--full-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    header = provenance_header()
    model, info = load_model(args.run)
    data = load_interactions(args.data, info.prepare)
    window = model.config.max_len - 1
    user = next(u for u in range(data.num_users) if len(data.sequence(u)) >= window + 1)
    full = data.sequence(user).astype(np.int64)
    history = ex.visible(model, full)
    ids, _ = recommend(model, [full], k=1)
    item = int(ids[0, 0])
    originals = [str(v) for v in info.vocab.decode(full)]
    configs = [(threads, precision) for threads in args.threads for precision in ("fp32", "bf16")]
    times: dict[tuple[int, str], list[float]] = {c: [] for c in configs}
    loads = [os.getloadavg()[0]]
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for threads, precision in configs:  # interleaved: a noisy machine slows all alike
            torch.set_num_threads(threads)
            start = time.perf_counter()
            ex.leave_one_out(model, history, item, 10, precision)
            if round_:
                times[(threads, precision)].append(time.perf_counter() - start)
    loads.append(os.getloadavg()[0])
    torch.set_num_threads(min(args.threads))
    whole = []
    for _ in range(args.full_repeats):
        start = time.perf_counter()
        ex.explain(model, info, originals, k=10)
        whole.append(time.perf_counter() - start)
    loads.append(os.getloadavg()[0])
    results = []
    for (threads, precision), values in times.items():
        row = {"threads": threads, "precision": precision,
               "leave_one_out_median_ms": round(1000 * statistics.median(values), 1),
               "leave_one_out_min_ms": round(1000 * min(values), 1),
               "leave_one_out_max_ms": round(1000 * max(values), 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    explain_row = {"threads": min(args.threads), "precision": "fp32",
                   "explain_median_ms": round(1000 * statistics.median(whole), 1)}
    print(json.dumps(explain_row))
    report: dict[str, Any] = {
        "benchmark": "explain-speed",
        "command": "python benchmarks/explain_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()),
        **header,
        "load_average_1min": loads,
        "run": str(args.run),
        "history_items": len(history),
        "tokens": len(history) + 1,
        "batch": len(history) + 1,
        "repeats": args.repeats,
        "leave_one_out": results,
        "explain": explain_row,
    }
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
