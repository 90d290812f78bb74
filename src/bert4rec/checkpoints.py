"""The files of an unfinished run: ``RUN_DIR/checkpoint`` holds its tensors (weights, best
weights, optimiser slots, random generator states) in ``state.safetensors`` and the rest in
``state.json``. BERT4Rec's trainer and the baselines' training loop write one after every epoch,
so that a run stopped part way resumes where it stopped instead of starting over.

Each file is written atomically, the tensors first; both carry the step they were written at,
so a run stopped between the two writes is found out rather than resumed from a mixed state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bert4rec.errors import CheckpointError
from bert4rec.runs import (
    CHECKPOINT_DIR,
    CHECKPOINT_META,
    REPLACING,
    RUN_FILE,
    atomic_write,
    has_checkpoint,
    write_json,
)

__all__ = [
    "CHECKPOINT_DIR",
    "check_identity",
    "has_checkpoint",
    "mark_replacing",
    "named",
    "optimizer_groups",
    "optimizer_tensors",
    "prefixed",
    "read_checkpoint",
    "remove_checkpoint",
    "restore_optimizer",
    "restore_rng",
    "restoring",
    "rng_tensors",
    "start_over",
    "tensors_file",
    "weights_like",
    "write_checkpoint",
]

_TENSORS = "state.safetensors"
_META = CHECKPOINT_META


def write_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                     step: int) -> None:
    """Write the checkpoint of ``run_dir`` at training step (or epoch) ``step``.

    The tensors go to a file of their step, then the JSON, written whole, names it: stopped at
    any point, the folder holds the previous checkpoint or this one, never a mix or neither.
    Tensor files the JSON no longer names are removed last."""
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state-{step}.safetensors"
    atomic_write(folder / name,
                 lambda tmp: save_file(tensors, tmp, metadata={"step": str(step)}))
    write_json(folder / _META, {**meta, "checkpoint_step": step, "tensors": name})
    for old in folder.glob("state*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def tensors_file(run_dir: Path, meta: dict[str, Any]) -> Path:
    """The tensors file that the checkpoint JSON ``meta`` of ``run_dir`` names (a checkpoint
    from before step-named files: ``state.safetensors``)."""
    name = meta.get("tensors", _TENSORS)
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{run_dir / CHECKPOINT_DIR} is damaged ({_META} names no tensors "
                              "file); pass --overwrite to start over")
    return run_dir / CHECKPOINT_DIR / name


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The JSON and the tensors of ``run_dir``'s checkpoint; ``None`` when it has none. A
    damaged checkpoint, or one whose two files are from different steps, is a
    :class:`CheckpointError`."""
    folder = run_dir / CHECKPOINT_DIR
    if not has_checkpoint(run_dir):
        return None
    damaged = f"{folder} is damaged ({{}}); pass --overwrite to start over"
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(damaged.format(exc)) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(damaged.format(f"{_META} is not a JSON object"))
    path = tensors_file(run_dir, meta)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            written = (handle.metadata() or {}).get("step")
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(damaged.format(exc)) from exc
    step = _step_of(meta)
    if step is not None and str(step) != written:
        raise CheckpointError(damaged.format(f"{_META} is of step {step} but {path.name} of "
                                             f"step {written}"))
    return meta, tensors


def _step_of(meta: dict[str, Any]) -> Any:
    """The step the JSON was written at; from its progress where it predates
    ``checkpoint_step`` (BERT4Rec counts steps, the baselines epochs)."""
    if "checkpoint_step" in meta:
        return meta["checkpoint_step"]
    progress = meta.get("state", meta.get("result"))
    if isinstance(progress, dict):
        return progress.get("step", progress.get("epochs"))
    return None


def check_identity(meta: dict[str, Any], identity: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a checkpoint whose identity (what was trained: model, settings, data)
    is not ``identity``; compared as JSON gives it back (a tuple comes back a list)."""
    if meta.get("identity") != json.loads(json.dumps(identity)):
        raise CheckpointError(f"{run_dir} holds an unfinished run of another model, other data "
                              "or other settings; pass --overwrite to start over or choose "
                              "another --output")


@contextmanager
def restoring(run_dir: Path) -> Iterator[None]:
    """Around restoring a checkpoint read by :func:`read_checkpoint`: an entry missing or of
    the wrong shape is a damaged checkpoint, a :class:`CheckpointError`. Running out of
    memory is not."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir / CHECKPOINT_DIR} is damaged ({exc!r}); pass "
                              "--overwrite to start over") from exc


def remove_checkpoint(run_dir: Path) -> None:
    """Remove ``run_dir``'s checkpoint, if any (a finished run, or one to start over),
    temporary files of a write cut short included."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    for name in (_META, REPLACING):
        (folder / name).unlink(missing_ok=True)
    for pattern in ("state*.safetensors", ".state*.safetensors.*.tmp", f".{_META}.*.tmp"):
        for leftover in folder.glob(pattern):
            leftover.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def mark_replacing(run_dir: Path) -> None:
    """Note that the training starting in ``run_dir`` replaces the finished run there (asked
    for with ``--overwrite``), so that, interrupted, it may go on without ``--overwrite``
    (:func:`bert4rec.runs.check_output`). Nothing is noted where no finished run is."""
    if (run_dir / RUN_FILE).exists():
        (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINT_DIR / REPLACING).touch()


def start_over(run_dir: Path) -> None:
    """Clear ``run_dir`` for a training asked to start over (``--overwrite``): its checkpoint
    goes, and a finished run there stays until the new one is saved (:func:`mark_replacing`)."""
    remove_checkpoint(run_dir)
    mark_replacing(run_dir)


def named(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``tensors`` on the CPU with ``prefix`` before each name, for the tensors file."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in tensors.items()}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def weights_like(reference: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                 prefix: str) -> dict[str, torch.Tensor]:
    """The weights saved under ``prefix``, on ``reference``'s devices, checked to have exactly
    its names and shapes (a ValueError otherwise: within :func:`restoring`, a damaged
    checkpoint)."""
    saved = prefixed(tensors, prefix)
    if saved.keys() != reference.keys():
        missing = sorted(reference.keys() - saved.keys()) or sorted(saved.keys() - reference.keys())
        raise ValueError(f"the {prefix.rstrip('.')} weights do not match the model "
                         f"({', '.join(missing[:3])})")
    for name, value in saved.items():
        if value.shape != reference[name].shape:
            raise ValueError(f"{prefix}{name} has shape {tuple(value.shape)}, not "
                             f"{tuple(reference[name].shape)}")
    return {name: value.to(reference[name].device) for name, value in saved.items()}


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
    for key, value in prefixed(tensors, "optim.").items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    if not state:  # a checkpoint follows at least one step, which gives the optimiser state
        raise ValueError("the optimiser state is missing")
    current = optimizer.state_dict()["param_groups"]
    for group, saved in zip(current, groups, strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict({"state": state, "param_groups": current})


def rng_tensors(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Torch's global random state (dropout), ``generator``'s (the data) and, on a GPU, the
    device's."""
    tensors = {"rng.torch": torch.get_rng_state(), "rng.data": generator.get_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator,
                device: torch.device) -> None:
    """Set the random states :func:`rng_tensors` saved."""
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
