"""Choosing where a model runs, shared by training and by loading a run for evaluation."""

from __future__ import annotations

import torch

from bert4rec.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU when there is one), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)
