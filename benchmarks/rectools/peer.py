"""RecTools' BERT4Rec and SASRec on our leave-one-out split: epoch times, or top-100 lists.

Runs in ``.venv-rectools`` (made by ``benchmarks/rectools/setup.sh``: RecTools needs numpy < 2,
our ``.venv`` has numpy 2). The split is built with our own code (``bert4rec.split``), so it is
the same split our models get:

* **Fit** on the training part of every sequence, ``s_1 .. s_{n-2}`` (the validation and test
  items are never targets). RecTools keeps the last ``session_max_len`` of them per user (SASRec:
  one more, for its shifted targets): one window per user per epoch, like our
  ``window_step = None``.
* **Test recommendations** read the history ``s_1 .. s_{n-1}``, the validation item included,
  as ours do: RecTools takes the history from the data set given to ``recommend``, and
  ``filter_viewed`` removes exactly those items. Items that never occur in training are unknown
  to RecTools: they are never recommended and are dropped from histories (counted in the output).

Epoch times (``--mode epoch-time``) are seconds per training epoch, from its first batch to its
last, measured by a Lightning callback: no validation, no data preparation. Quality
(``--mode quality``) trains until ``--time-budget`` seconds have passed (Lightning's
``max_time``), then writes every user's top 100 for the test case as Parquet (``user``, ``item``,
``rank``, ``score``, original ids), with a JSON file beside it that says how it was made;
``compare.py`` scores it with our metrics.

    .venv-rectools/bin/python benchmarks/rectools/peer.py --data ../shared/data/ml-1m/ml-1m.txt \
        --model bert4rec --mode epoch-time --epochs 3 --out /tmp/bert4rec-epochs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import rectools
import torch
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import BERT4RecModel, SASRecModel

from bert4rec.data import Interactions, load_interactions
from bert4rec.split import eval_cases, train_sequences

MODELS = ("bert4rec", "sasrec")
TOP_K = 100


class EpochTimer(pl.Callback):
    """Wall seconds of every training epoch, first batch to last."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.steps: list[int] = []
        self._started = 0.0
        self._step = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        self._step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._started)
        self.steps.append(trainer.global_step - self._step)


def interaction_frame(data: Interactions, users: np.ndarray, starts: np.ndarray,
                      ends: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    """RecTools' interaction columns for ``items[starts[i]:ends[i]]`` of user ``users[i]``, with
    original ids. The datetime is the row's position, so RecTools' stable sort by time keeps
    every sequence in its order."""
    lengths = ends - starts
    rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    return pd.DataFrame({
        Columns.User: np.repeat(data.user_ids[users], lengths),
        Columns.Item: data.vocab.item_ids[items[rows] - 1],
        Columns.Weight: 1.0,
        Columns.Datetime: pd.to_datetime(np.arange(len(rows)), unit="s"),
    })


def build_model(name: str, trainer: pl.Trainer, args: argparse.Namespace) -> Any:
    """The configuration compared with ours: d = 64, 2 blocks, 2 heads, N = 200, dropout 0.2
    (hidden and attention), batch 256, Adam lr 1e-3, full-softmax loss."""
    common: dict[str, Any] = {
        "n_blocks": 2, "n_heads": 2, "n_factors": 64, "dropout_rate": 0.2,
        "session_max_len": args.max_len, "batch_size": args.batch_size, "lr": args.lr,
        "loss": "softmax", "dataloader_num_workers": 0, "recommend_torch_device": "cpu",
        "recommend_batch_size": 256, "get_trainer_func": lambda: trainer,
    }
    if name == "bert4rec":
        return BERT4RecModel(mask_prob=args.mask_prob, **common)
    return SASRecModel(**common)


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "rectools": rectools.__version__,
            "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the paper's ml-1m.txt")
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--mode", choices=("epoch-time", "quality"), required=True)
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time (epoch-time)")
    parser.add_argument("--time-budget", type=float, default=600.0,
                        help="seconds of training (quality)")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-prob", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True,
                        help="JSON file (epoch-time) or Parquet file (quality)")
    args = parser.parse_args()
    if args.mode == "epoch-time" and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.mode == "quality" and args.time_budget <= 0:
        parser.error("--time-budget must be positive")

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    data = load_interactions(args.data)
    train = train_sequences(data)
    users = np.flatnonzero(train.lengths > 0)
    train_frame = interaction_frame(data, users, train.offsets[users], train.offsets[users + 1],
                                    train.items)

    timer = EpochTimer()
    trainer_args: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [timer],
    }
    if args.mode == "epoch-time":
        trainer_args.update(max_epochs=args.epochs, min_epochs=args.epochs)
    else:
        trainer_args.update(max_epochs=-1, max_time=timedelta(seconds=args.time_budget))
    trainer = pl.Trainer(**trainer_args)
    model = build_model(args.model, trainer, args)

    started = time.perf_counter()
    model.fit(Dataset.construct(train_frame))
    fit_seconds = time.perf_counter() - started
    # RecTools trains a deep copy of the trainer, callbacks included: read the copy's timer.
    timer = next(c for c in model.fit_trainer.callbacks if isinstance(c, EpochTimer))
    report: dict[str, Any] = {
        "model": args.model, "mode": args.mode, "command": " ".join(sys.argv),
        "versions": versions(), "threads": args.threads, "seed": args.seed,
        "config": {"n_blocks": 2, "n_heads": 2, "n_factors": 64, "dropout_rate": 0.2,
                   "session_max_len": args.max_len, "batch_size": args.batch_size,
                   "lr": args.lr, "loss": "softmax",
                   **({"mask_prob": args.mask_prob} if args.model == "bert4rec" else {})},
        "train_users": len(users), "train_interactions": len(train_frame),
        "epochs": len(timer.seconds), "steps_per_epoch": timer.steps[0] if timer.steps else 0,
        "epoch_seconds": [round(s, 3) for s in timer.seconds],
        "fit_seconds": round(fit_seconds, 1),
    }
    if timer.seconds:
        report["median_epoch_seconds"] = round(statistics.median(timer.seconds), 3)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.mode == "quality":
        cases = eval_cases(data, "test")
        history = interaction_frame(data, cases.users, cases.starts, cases.ends, data.items)
        known = history[Columns.Item].isin(train_frame[Columns.Item].unique())
        started = time.perf_counter()
        recs = model.recommend(users=data.user_ids[cases.users],
                               dataset=Dataset.construct(history[known]), k=TOP_K,
                               filter_viewed=True)
        report.update(
            budget_seconds=args.time_budget,
            recommend_seconds=round(time.perf_counter() - started, 1),
            history_items_unknown=int((~known).sum()),
            users_recommended=int(recs[Columns.User].nunique()),
            recommendations=str(out),
        )
        recs = recs.rename(columns={Columns.User: "user", Columns.Item: "item",
                                    Columns.Rank: "rank", Columns.Score: "score"})
        recs[["user", "item", "rank", "score"]].to_parquet(out, index=False)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    else:
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("config", "versions")}),
          flush=True)


if __name__ == "__main__":
    main()
