"""ONNX export parity: the exported model's top-k against PyTorch's on real histories.

    python benchmarks/export_parity.py --run runs/ml-1m --data ml-1m.txt \\
        --output benchmarks/results/export-parity.json

Exports the run, takes ``--histories`` real users' histories (each user's items up to a
different cut, so every history is distinct), and compares the top-10 of PyTorch and
onnxruntime history by history; also times both on batches of 64.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bert4rec.benchmark import provenance_header  # noqa: E402
from bert4rec.data import load_interactions  # noqa: E402
from bert4rec.export import OnnxRecommender, export_onnx  # noqa: E402
from bert4rec.recommender import recommend  # noqa: E402
from bert4rec.runs import load_model, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--histories", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--output", type=Path, default=None, help="write the report (JSON)")
    args = parser.parse_args()

    model, info = load_model(args.run)
    data = load_interactions(args.data, info.prepare)
    rng = np.random.default_rng(0)
    users = rng.choice(data.num_users, size=min(args.histories, data.num_users), replace=False)
    histories = []
    for u in users:  # a random cut of each user's sequence, at least one item
        seq = data.sequence(int(u)).astype(np.int64)
        histories.append(seq[: rng.integers(1, len(seq) + 1)])

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx", run=args.run)
        export_seconds = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        exported = OnnxRecommender(path, info)
        ids_torch, _ = recommend(model, histories, k=args.k, batch_size=64)
        ids_onnx, _ = recommend(exported, histories, k=args.k, batch_size=64)
        diffs = []
        for s in range(0, len(histories), 64):
            batch = histories[s : s + 64]
            diffs.append(float((model.score(batch)[:, 1:] - exported.score(batch)[:, 1:])
                               .abs().max()))
        timing = {}
        for name, recommender in (("torch", model), ("onnx", exported)):
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                with torch.inference_mode():
                    for s in range(0, len(histories), 64):
                        recommender.score(histories[s : s + 64])
                seconds.append(time.perf_counter() - start)
            timing[name] = round(float(np.median(seconds)), 3)

    identical = (ids_torch == ids_onnx).all(axis=1)
    report = {
        "command": shlex.join(["python", *sys.argv]), **provenance_header(),
        "run": str(args.run), "model": {"name": info.model, "config": info.config},
        "histories": len(histories), "k": args.k,
        "identical_top_k": int(identical.sum()),
        "max_abs_score_difference": max(diffs),
        "export_seconds": round(export_seconds, 2), "onnx_mb": round(size_mb, 2),
        "score_seconds_median_batches_of_64": timing,
        "torch_threads": torch.get_num_threads(),
    }
    print({k: report[k] for k in ("histories", "identical_top_k", "max_abs_score_difference",
                                  "score_seconds_median_batches_of_64")})
    if args.output is not None:
        write_json(args.output, report)


if __name__ == "__main__":
    main()
