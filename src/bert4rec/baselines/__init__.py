"""The paper's baselines, each in its own file, all implementing the recommender contract.

``train_baseline`` and ``load_baseline`` are the two places that turn a model name from the
command line or a run directory into one of them, by plain branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import torch

from bert4rec.baselines.common import FitConfig, FitResult
from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.data import Interactions
from bert4rec.errors import ConfigError

TRAINABLE = ("sasrec", "sasrec-ce", "gru4rec", "gru4rec+", "caser", "fpmc", "bpr", "ncf")
FIT_KEYS = {f.name for f in fields(FitConfig)}

__all__ = ["TRAINABLE", "PopularityRecommender", "load_baseline", "train_baseline"]


def train_baseline(
    name: str,
    data: Interactions,
    overrides: dict[str, Any],
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, FitResult, FitConfig]:
    """Train baseline ``name`` with the paper defaults of its config, ``overrides`` applied to
    the model config or the optimisation settings (each key belongs to one of them)."""
    fit_values = {k: v for k, v in overrides.items() if k in FIT_KEYS}
    model_values: dict[str, Any] = {k: v for k, v in overrides.items() if k not in FIT_KEYS}
    model_values["num_items"] = data.num_items
    fit = replace(FitConfig(), **fit_values)
    model: Any
    result: FitResult
    if name in ("sasrec", "sasrec-ce"):
        from bert4rec.baselines import sasrec

        model_values["loss"] = "bce" if name == "sasrec" else "ce"
        fit = replace(sasrec.PAPER_FIT, **fit_values)
        model, result = sasrec.fit(data, sasrec.SASRecConfig.from_dict(model_values), fit,
                                   progress, log)
    elif name in ("gru4rec", "gru4rec+"):
        from bert4rec.baselines import gru4rec

        model_values["loss"] = "ce" if name == "gru4rec" else "bpr-max"
        model, result = gru4rec.fit(data, gru4rec.GRU4RecConfig.from_dict(model_values), fit,
                                    progress, log)
    elif name == "caser":
        from bert4rec.baselines import caser

        model, result = caser.fit(data, caser.CaserConfig.from_dict(model_values), fit,
                                  progress, log)
    elif name == "fpmc":
        from bert4rec.baselines import fpmc

        model, result = fpmc.fit(data, fpmc.FPMCConfig.from_dict(model_values), fit,
                                 progress, log)
    elif name == "bpr":
        from bert4rec.baselines import bpr

        model, result = bpr.fit(data, bpr.BPRConfig.from_dict(model_values), fit, progress, log)
    elif name == "ncf":
        from bert4rec.baselines import ncf

        model, result = ncf.fit(data, ncf.NCFConfig.from_dict(model_values), fit, progress, log)
    else:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(TRAINABLE)}")
    return model, result, fit


def load_baseline(name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild a saved baseline; ``None`` for a name that is not one."""
    if name == "pop":
        return PopularityRecommender.from_tensors(config, tensors)
    if name in ("sasrec", "sasrec-ce"):
        from bert4rec.baselines.sasrec import SASRec

        return SASRec.from_tensors(config, tensors)
    if name in ("gru4rec", "gru4rec+"):
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
