"""Does a moving average of the weights (``ema_decay``) beat the weights themselves? Both on
one training run, so that the seed's trajectory is shared and only the averaging differs.

    python benchmarks/weight_averaging.py --data ../shared/data/ml-1m/ml-1m.txt \
        --preset ml-1m-cpu --seed 0 --threads 2 --decays 0.999 \
        --out benchmarks/results/weight-averaging-seed0.json

The preset trains as it ships (its budget, schedule and early stopping on its own weights);
beside it one average per decay is updated after every step as ``ema_decay`` would, validated
(full ranking) at every evaluation of the run, and its best weights kept. The budget counts
training only, so the extra validations do not shorten the run. At the end the kept weights of
each, the run's own and every average's, are scored on the validation and test splits under
both protocols: choose on validation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.evaluation import evaluate
from bert4rec.model import BERT4Rec
from bert4rec.presets import load_preset, parse_assignment
from bert4rec.runs import write_json
from bert4rec.training import Trainer, moving_average


class AveragingTrainer(Trainer):
    """Trains as the preset says and keeps moving averages of the weights beside the run."""

    decays: tuple[float, ...] = ()
    averages: dict[float, AveragedModel]
    best: dict[float, tuple[float, int, dict[str, torch.Tensor]]]
    curves: dict[float, list[tuple[int, float]]]
    first_reached: dict[str, float]
    target = 0.15
    started = 0.0

    def start(self, decays: tuple[float, ...]) -> None:
        self.decays = decays
        self.averages = {d: moving_average(self.model, d) for d in decays}
        self.best = {d: (-1.0, 0, {}) for d in decays}
        self.curves = {d: [] for d in decays}
        self.first_reached = {}
        self.started = time.perf_counter()

    def train_step(self, batch: np.ndarray, elapsed: float = 0.0) -> float:
        loss = super().train_step(batch, elapsed)
        for average in self.averages.values():
            average.update_parameters(self.model)
        return loss

    def validate(self) -> dict[str, float]:
        if not self.model.training:  # the final rescoring of the kept weights
            return super().validate()
        metrics = super().validate()
        self._reached("weights", metrics["NDCG@10"])
        epoch = self.state.epoch
        for decay, average in self.averages.items():
            module = cast(BERT4Rec, average.module)
            ndcg = evaluate(module, self.data, split="valid", protocol="full",
                            progress=False, batch_size=512).metrics["NDCG@10"]
            self.curves[decay].append((epoch, ndcg))
            self._reached(f"ema {decay}", ndcg)
            if ndcg > self.best[decay][0]:
                weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
                self.best[decay] = (ndcg, epoch, weights)
        return metrics

    def _reached(self, name: str, ndcg: float) -> None:
        if name not in self.first_reached and ndcg >= self.target:
            self.first_reached[name] = self.state.elapsed


def scores(model: BERT4Rec, data: Any) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {"valid": {}, "test": {}}
    for split, protocol in itertools.product(("valid", "test"), ("full", "popularity")):
        out[split][protocol] = evaluate(model, data, split=split,  # type: ignore[arg-type]
                                        protocol=protocol, progress=False).metrics  # type: ignore[arg-type]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="ml-1m-cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.999])
    parser.add_argument("--target", type=float, default=0.15,
                        help="report the training seconds until validation NDCG@10 reaches it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset setting, as in `bert4rec benchmark speed --set`")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = provenance_header()
    overrides = dict(parse_assignment(text) for text in args.set)
    overrides.update(seed=args.seed, threads=args.threads)
    preset = load_preset(args.preset, overrides)
    if preset.train.ema_decay is not None:
        parser.error("the preset averages already: this compares against its own weights")
    data = load_interactions(args.data)
    trainer = AveragingTrainer(data, preset.model_config(data.num_items), preset.train,
                               progress=False, log=print)
    trainer.target = args.target
    trainer.start(tuple(args.decays))
    result = trainer.fit()
    kept: dict[str, dict[str, Any]] = {"weights": {"best_epoch": result.state.best_epoch,
                        "best_valid_NDCG@10": result.state.best_metric,
                        **scores(result.model, data)}}
    for decay in trainer.decays:
        ndcg, epoch, weights = trainer.best[decay]
        result.model.load_state_dict(weights)
        kept[f"ema {decay}"] = {"best_epoch": epoch, "best_valid_NDCG@10": ndcg,
                                **scores(result.model, data)}
    for name, row in kept.items():
        v, t = row["valid"], row["test"]
        print(f"{name:12s} epoch {row['best_epoch']:>3}  valid {v['full']['NDCG@10']:.4f} / "
              f"{v['popularity']['NDCG@10']:.4f}  test {t['full']['NDCG@10']:.4f} "
              f"{t['full']['HR@10']:.4f} / {t['popularity']['NDCG@10']:.4f} "
              f"{t['popularity']['HR@10']:.4f}")
    command = (f"python benchmarks/weight_averaging.py --data {args.data} --preset {args.preset}"
               f" --seed {args.seed} --threads {args.threads} --decays "
               + " ".join(map(str, args.decays))
               + "".join(f" --set {s}" for s in args.set) + f" --out {args.out}")
    write_json(args.out, {
        "command": command, **header, "data": data.describe(), "preset": args.preset,
        "overrides": overrides, "epochs": result.state.epoch, "stopped": result.state.stopped,
        "train_seconds": result.state.elapsed, "target": args.target,
        "reached_train_seconds": trainer.first_reached, "kept": kept,
        "curves": {"weights": [(r["epoch"], r["valid_NDCG@10"]) for r in result.state.history
                               if "valid_NDCG@10" in r],
                   **{f"ema {d}": c for d, c in trainer.curves.items()}},
        "history": result.state.history,
    })
    print(json.dumps({name: round(row["test"]["popularity"]["NDCG@10"], 4)
                      for name, row in kept.items()}))


if __name__ == "__main__":
    main()
