"""How much the last item alone says on a data set, and how much of it the co-occurrence start
of the item embeddings (``item_embedding_init = "cooccurrence"``) already holds.

    python benchmarks/warmstart_signal.py --data ../shared/data/ml-1m/ml-1m.txt

Three scorers that read only the last history item, evaluated on the validation split under
full ranking (history excluded): item popularity; the training counts of items that followed
the last item within ``window`` positions (weights 1/k); and the dot product of the start
embeddings of the last item and every item (tied, as BERT4Rec's output layer is).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.evaluation import evaluate
from bert4rec.runs import write_json
from bert4rec.split import train_sequences
from bert4rec.warmstart import cooccurrence_embeddings


class LastItem:
    """A recommender that scores every item by one row of a (n + 1, n + 1) table: the last
    history item's."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.num_items = table.shape[1] - 1

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        last = np.array([h[-1] if len(h) else 0 for h in histories])
        scores = torch.from_numpy(np.ascontiguousarray(self.table[last], dtype=np.float32))
        scores[:, 0] = -torch.inf
        return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_interactions(args.data)
    train = train_sequences(data)
    n = data.num_items
    items = train.items.astype(np.int64)
    user = np.repeat(np.arange(len(train.lengths)), train.lengths)

    popularity = np.bincount(items, minlength=n + 1).astype(np.float32)
    follows = np.zeros((n + 1, n + 1), dtype=np.float32)
    for lag in range(1, args.window + 1):
        same = user[:-lag] == user[lag:]
        np.add.at(follows, (items[:-lag][same], items[lag:][same]), 1.0 / lag)
    start = np.vstack([np.zeros((1, args.dim), np.float32),
                       cooccurrence_embeddings(items, train.lengths, n, args.dim, std=0.02,
                                               window=args.window)])
    scorers = {
        "popularity": np.broadcast_to(popularity, (n + 1, n + 1)),
        "followed the last item in training": follows,
        "start embeddings, last item . item": start @ start.T,
    }
    results = {name: evaluate(LastItem(table), data, split="valid", protocol="full",
                              progress=False).metrics
               for name, table in scorers.items()}
    for name, metrics in results.items():
        print(f"{name:40s} valid NDCG@10 {metrics['NDCG@10']:.4f} HR@10 {metrics['HR@10']:.4f}")
    if args.out is not None:
        write_json(args.out, {"command": "python benchmarks/warmstart_signal.py --data "
                              f"{args.data} --dim {args.dim} --window {args.window}",
                              **provenance_header(),
                              "data": data.describe(), "valid_full": results})
    print(json.dumps({name: round(m["NDCG@10"], 4) for name, m in results.items()}))


if __name__ == "__main__":
    main()
