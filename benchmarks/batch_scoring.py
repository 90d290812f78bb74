"""Time batch scoring: the top-k of every user of a log written to Parquet, as
``bert4rec recommend --run RUN --data DATA --output recs.parquet`` does it.

    python benchmarks/batch_scoring.py --run runs/ml-1m --data ml-1m.txt \\
        --output benchmarks/results/batch-scoring.json

Each precision is timed ``--repeats`` times (the median is reported); bf16's top-k is compared
with fp32's, item by item.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bert4rec.batch import score_users  # noqa: E402
from bert4rec.benchmark import provenance_header  # noqa: E402
from bert4rec.data import load_interactions  # noqa: E402
from bert4rec.runs import load_model, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=None, help="write the report (JSON)")
    args = parser.parse_args()

    if args.workers > 1:
        torch.set_num_threads(1)  # as the CLI: parallel over chunks of users
    model, info = load_model(args.run)
    data = load_interactions(args.data, info.prepare)
    report = {
        "command": shlex.join(["python", *sys.argv]), **provenance_header(),
        "data": data.describe(), "run": str(args.run),
        "model": {"name": info.model, "config": info.config},
        "k": args.k, "workers": args.workers, "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
    }
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            out = Path(tmp) / f"{precision}.parquet"
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                rows = score_users(model, info, data, out, k=args.k, workers=args.workers,
                                   bf16=precision == "bf16")
                seconds.append(time.perf_counter() - start)
            tables[precision] = pd.read_parquet(out)
            report[precision] = {"seconds": [round(s, 2) for s in seconds],
                                 "median_seconds": round(float(np.median(seconds)), 2),
                                 "users": data.num_users, "rows": rows,
                                 "users_per_second": round(data.num_users
                                                           / float(np.median(seconds)))}
            print(precision, report[precision], flush=True)
    same = (tables["fp32"]["item"].to_numpy() == tables["bf16"]["item"].to_numpy())
    report["bf16_same_item_share"] = round(float(same.mean()), 4)
    report["bf16_same_top_k_users"] = int(same.reshape(-1, args.k).all(axis=1).sum())
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["load_average_after"] = os.getloadavg()
    print({k: report[k] for k in ("bf16_same_item_share", "bf16_same_top_k_users",
                                  "peak_rss_mb")})
    if args.output is not None:
        write_json(args.output, report)


if __name__ == "__main__":
    main()
