"""Seconds to explain one recommendation exactly (leave-one-out over a full-window history).

    python benchmarks/explain_speed.py --run /tmp/explain-ml1m \
        --data /work/main/.devdata/ml-1m.txt --repeats 20

Takes the first user with at least ``max_len`` interactions, so the model sees a full window
(``max_len - 1`` history items plus [MASK]), explains the model's top-1 recommendation, and
reports the median of ``--repeats`` timed calls (after one warm-up) for each precision: the
leave-one-out alone (``n + 1`` histories in one forward pass), and the whole ``explain`` (also
the greedy set, attention and gradient x input) for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec import explain as ex
from bert4rec.benchmark import commit_info, machine_info
from bert4rec.data import load_interactions
from bert4rec.recommender import recommend
from bert4rec.runs import load_model, write_json


def timed(call: Callable[[], Any], repeats: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--full-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, info = load_model(args.run)
    data = load_interactions(args.data, info.prepare)
    window = model.config.max_len - 1
    user = next(u for u in range(data.num_users) if len(data.sequence(u)) >= window + 1)
    full = data.sequence(user).astype(np.int64)
    history = ex.visible(model, full)
    ids, _ = recommend(model, [full], k=1)
    item = int(ids[0, 0])
    originals = [str(v) for v in info.vocab.decode(full)]
    report: dict[str, Any] = {
        "benchmark": "explain-speed",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **commit_info(),
        "machine": machine_info(),
        "threads": args.threads,
        "run": str(args.run),
        "history_items": len(history),
        "tokens": len(history) + 1,
        "repeats": args.repeats,
        "results": {},
    }
    for precision in ("fp32", "bf16"):
        loo = timed(lambda p=precision: ex.leave_one_out(model, history, item, 10, p),
                    args.repeats)
        whole = timed(lambda p=precision: ex.explain(model, info, originals, k=10,
                                                     precision=p), args.full_repeats)
        report["results"][precision] = {
            "leave_one_out_median_ms": round(1000 * statistics.median(loo), 1),
            "leave_one_out_min_ms": round(1000 * min(loo), 1),
            "explain_median_ms": round(1000 * statistics.median(whole), 1),
        }
        print(precision, json.dumps(report["results"][precision]), flush=True)
    if args.out:
        write_json(args.out, report)


if __name__ == "__main__":
    main()
