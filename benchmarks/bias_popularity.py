"""How much of a trained BERT4Rec's output bias is item popularity, and what shifting it away
does to the two protocols, on the validation split only.

    python benchmarks/bias_popularity.py --run RUN_DIR --data ../shared/data/ml-1m/ml-1m.txt \
        --out benchmarks/results/bias-popularity.json

Reports the correlation and slope of the learned bias against centred log(count + 1) of the
training items, then validation NDCG@10 / HR@10 under full ranking and popularity-sampled
negatives with ``alpha`` times that log-popularity subtracted from the bias (alpha = 0 is the
model as trained). A diagnostic: nothing here changes a saved model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.evaluation import evaluate
from bert4rec.runs import load_model, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, _ = load_model(args.run)
    data = load_interactions(args.data)
    counts = np.asarray(json.loads((args.run / "popularity.json").read_text()))[1:]
    log_pop = np.log(counts + 1.0)
    log_pop -= log_pop.mean()
    learned = model.output_bias.detach().cpu().numpy().copy()
    slope, intercept = np.polyfit(log_pop, learned, 1)
    rows = []
    for alpha in args.alphas:
        with torch.no_grad():
            shifted = torch.from_numpy((learned - alpha * log_pop).astype(np.float32))
            model.output_bias.copy_(shifted)
        row: dict[str, float] = {"alpha": alpha}
        for protocol in ("full", "popularity"):
            metrics = evaluate(model, data, split="valid", protocol=protocol,
                               progress=False).metrics
            row[f"{protocol}_NDCG@10"] = metrics["NDCG@10"]
            row[f"{protocol}_HR@10"] = metrics["HR@10"]
        rows.append(row)
        print(json.dumps(row))
    result = {
        "command": " ".join(["python", "benchmarks/bias_popularity.py", "--run", str(args.run),
                             "--data", args.data, "--out", str(args.out)]),
        **provenance_header(),
        "correlation": float(np.corrcoef(learned, log_pop)[0, 1]), "slope": float(slope),
        "intercept": float(intercept), "validation": rows,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
