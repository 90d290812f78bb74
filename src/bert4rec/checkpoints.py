"""The files of an unfinished run: ``RUN_DIR/checkpoint`` holds its tensors (weights, best
weights, optimiser slots, random generator states) in ``state.safetensors`` and the rest in
``state.json``. BERT4Rec's trainer and the baselines' training loop write one after every epoch,
so that a run stopped part way resumes where it stopped instead of starting over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bert4rec.errors import RunError
from bert4rec.runs import atomic_write, write_json

CHECKPOINT_DIR = "checkpoint"
_TENSORS = "state.safetensors"
_META = "state.json"


def write_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                     step: int) -> None:
    """Write the checkpoint of ``run_dir``: the tensors first, the JSON last (each atomically),
    so a JSON file always has its tensors beside it."""
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / _TENSORS,
                 lambda tmp: save_file(tensors, tmp, metadata={"step": str(step)}))
    write_json(folder / _META, meta)


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The JSON and the tensors of ``run_dir``'s checkpoint; ``None`` when it has none."""
    folder = run_dir / CHECKPOINT_DIR
    if not (folder / _META).exists():
        return None
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / _TENSORS))
    except (OSError, ValueError) as exc:
        raise RunError(f"{folder} is damaged ({exc}); remove it to start over") from exc
    if not isinstance(meta, dict):
        raise RunError(f"{folder / _META} is damaged (not a JSON object); remove it to start "
                       "over")
    return meta, tensors


def remove_checkpoint(run_dir: Path) -> None:
    """Remove ``run_dir``'s checkpoint, if any (a finished run, or one to start over)."""
    folder = run_dir / CHECKPOINT_DIR
    for name in (_TENSORS, _META):
        path = folder / name
        if path.exists():
            os.unlink(path)
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter slots as ``optim.<index>.<slot>`` tensors."""
    tensors = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    return tensors


def optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimiser's parameter groups without their parameters (learning rate and the like),
    for the JSON file."""
    return [{k: v for k, v in group.items() if k != "params"}
            for group in optimizer.state_dict()["param_groups"]]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      groups: list[dict[str, Any]]) -> None:
    """Load what :func:`optimizer_tensors` and :func:`optimizer_groups` saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = value
    current = optimizer.state_dict()["param_groups"]
    for group, saved in zip(current, groups, strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict({"state": state, "param_groups": current})


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
