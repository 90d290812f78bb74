"""The paper's baselines, each in its own file, all implementing the recommender contract.

``baseline_config``, ``train_baseline`` and ``load_baseline`` are the places that turn a model
name from the command line or a run directory into one of them, by plain branches.
``save_baseline`` writes any trained baseline, POP included, as a run directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from bert4rec.baselines.common import FitConfig, FitResult
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.checkpoints import remove_checkpoint
from bert4rec.data import Interactions, PrepareOptions
from bert4rec.errors import ConfigError
from bert4rec.evaluation import evaluate
from bert4rec.runs import save_run
from bert4rec.split import train_sequences

TRAINABLE = ("sasrec", "sasrec-ce", "gru4rec", "gru4rec+", "gru4rec-ce", "caser", "fpmc", "bpr",
             "ncf")
FIT_KEYS = {f.name for f in fields(FitConfig)}

__all__ = [
    "TRAINABLE",
    "PopularityRecommender",
    "baseline_config",
    "fit_pop",
    "load_baseline",
    "save_baseline",
    "train_baseline",
]


def baseline_config(
    name: str, num_items: int, overrides: dict[str, Any]
) -> tuple[Any, FitConfig]:
    """The model config and optimisation settings of baseline ``name``: the paper defaults with
    ``overrides`` applied (each key belongs to one of the two). Checks every key and value
    without training, so a typo fails before hours of other work."""
    fit_values = {k: v for k, v in overrides.items() if k in FIT_KEYS}
    model_values: dict[str, Any] = {k: v for k, v in overrides.items() if k not in FIT_KEYS}
    model_values["num_items"] = num_items
    fit = replace(FitConfig(), **fit_values)
    if name in ("sasrec", "sasrec-ce"):
        from bert4rec.baselines import sasrec

        model_values["loss"] = "bce" if name == "sasrec" else "ce"
        return (sasrec.SASRecConfig.from_dict(model_values),
                replace(sasrec.PAPER_FIT, **fit_values))
    if name in ("gru4rec", "gru4rec+", "gru4rec-ce"):
        from bert4rec.baselines import gru4rec

        model_values["loss"] = {v: k for k, v in gru4rec.LOSSES.items()}[name]
        return gru4rec.GRU4RecConfig.from_dict(model_values), fit
    if name == "caser":
        from bert4rec.baselines import caser

        return caser.CaserConfig.from_dict(model_values), fit
    if name == "fpmc":
        from bert4rec.baselines import fpmc

        return fpmc.FPMCConfig.from_dict(model_values), fit
    if name == "bpr":
        from bert4rec.baselines import bpr

        return bpr.BPRConfig.from_dict(model_values), fit
    if name == "ncf":
        from bert4rec.baselines import ncf

        return ncf.NCFConfig.from_dict(model_values), fit
    raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(TRAINABLE)}")


def train_baseline(
    name: str,
    data: Interactions,
    overrides: dict[str, Any],
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> tuple[Any, FitResult, FitConfig]:
    """Train baseline ``name`` with the settings of :func:`baseline_config`; with ``run_dir``,
    checkpoints go there every epoch and an unfinished run there is resumed
    (:func:`bert4rec.baselines.common.fit_loop`)."""
    config, fit = baseline_config(name, data.num_items, overrides)
    model: Any
    result: FitResult
    if name in ("sasrec", "sasrec-ce"):
        from bert4rec.baselines import sasrec

        model, result = sasrec.fit(data, config, fit, progress, log, run_dir)
    elif name in ("gru4rec", "gru4rec+", "gru4rec-ce"):
        from bert4rec.baselines import gru4rec

        model, result = gru4rec.fit(data, config, fit, progress, log, run_dir)
    elif name == "caser":
        from bert4rec.baselines import caser

        model, result = caser.fit(data, config, fit, progress, log, run_dir)
    elif name == "fpmc":
        from bert4rec.baselines import fpmc

        model, result = fpmc.fit(data, config, fit, progress, log, run_dir)
    elif name == "bpr":
        from bert4rec.baselines import bpr

        model, result = bpr.fit(data, config, fit, progress, log, run_dir)
    else:  # ncf: baseline_config has refused every other name
        from bert4rec.baselines import ncf

        model, result = ncf.fit(data, config, fit, progress, log, run_dir)
    return model, result, fit


def fit_pop(data: Interactions, progress: bool = False) -> tuple[PopularityRecommender, FitResult]:
    """POP counted on the training sequences, with its validation metrics (full ranking) in the
    same record the trainable baselines return."""
    started = time.perf_counter()
    model = PopularityRecommender.fit(train_sequences(data), data.num_items)
    seconds = time.perf_counter() - started
    valid = evaluate(model, data, split="valid", protocol="full", progress=progress)
    result = FitResult(seconds=seconds, stopped="counted", valid_metrics=valid.metrics,
                       best_metric=valid.metrics["NDCG@10"])
    return model, result


def save_baseline(
    run_dir: Path,
    model: Any,
    result: FitResult,
    data: Interactions,
    options: PrepareOptions,
    seed: int | None = None,
    fit: FitConfig | None = None,
    titles: dict[Any, str] | None = None,
) -> None:
    """Save a trained baseline as a run directory that ``load_model`` reads back, its training
    record as the run's metrics, and remove the checkpoint its training left there. ``fit`` is
    ``None`` for POP, which has no training loop (and no checkpoint)."""
    metrics: dict[str, Any] = {"valid_full": result.valid_metrics,
                               "train_seconds": round(result.seconds, 3)}
    extra: dict[str, Any] | None = None
    if fit is not None:
        metrics.update({"epochs": result.epochs, "best_epoch": result.best_epoch,
                        "stopped": result.stopped, "history": result.history})
        extra = {"fit": asdict(fit), "threads": torch.get_num_threads()}
    save_run(run_dir, model.name, model.config(), model.tensors(), data, options,
             metrics=metrics, seed=seed, titles=titles, extra_provenance=extra)
    if fit is not None:
        remove_checkpoint(run_dir)


def load_baseline(name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild a saved baseline; ``None`` for a name that is not one."""
    if name == "pop":
        return PopularityRecommender.from_tensors(config, tensors)
    if name in ("sasrec", "sasrec-ce"):
        from bert4rec.baselines.sasrec import SASRec

        return SASRec.from_tensors(config, tensors)
    if name in ("gru4rec", "gru4rec+", "gru4rec-ce"):
        from bert4rec.baselines.gru4rec import GRU4Rec

        return GRU4Rec.from_tensors(config, tensors)
    if name == "caser":
        from bert4rec.baselines.caser import Caser

        return Caser.from_tensors(config, tensors)
    if name == "fpmc":
        from bert4rec.baselines.fpmc import FPMC

        return FPMC.from_tensors(config, tensors)
    if name == "bpr":
        from bert4rec.baselines.bpr import BPR

        return BPR.from_tensors(config, tensors)
    if name == "ncf":
        from bert4rec.baselines.ncf import NCF

        return NCF.from_tensors(config, tensors)
    return None
