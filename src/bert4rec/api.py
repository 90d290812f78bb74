"""The Python API in a few calls: ``fit`` a model, ``save`` it, and ``load_model``,
``evaluate`` and ``recommend``, all at the package root.

    import bert4rec
    data = bert4rec.load_interactions("ml-1m.txt")
    model = bert4rec.fit(data, preset="ml-1m", time_budget=600)
    bert4rec.evaluate(model, data, protocol="full").metrics
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bert4rec import distributed
from bert4rec.checkpoints import remove_checkpoint, start_over
from bert4rec.data import Interactions, PrepareOptions
from bert4rec.model import BERT4Rec
from bert4rec.presets import Preset, load_preset
from bert4rec.runs import check_output, save_run
from bert4rec.training import Trainer, TrainResult


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(
    data: Interactions,
    preset: str = "default",
    output: str | Path | None = None,
    options: PrepareOptions | None = None,
    titles: dict[Any, str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
    overwrite: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train BERT4Rec with a preset (name or .toml path) and ``overrides`` of any of its
    settings. With ``output``, checkpoints go there every epoch (an interrupted call resumes
    from them) and the finished run is saved there. A finished run already in ``output`` is
    replaced only with ``overwrite``, which also starts an unfinished one over; the old run
    stays until the new one is saved.

    Under ``torchrun`` every process calls this with the same arguments; they train one model
    together (:mod:`bert4rec.distributed`), rank 0 writes ``output``, and every rank returns the
    same result once it is written."""
    chosen = load_preset(preset, overrides)
    model_config = chosen.model_config(data.num_items)  # every setting checked before anything
    run_dir = Path(output) if output is not None else None
    with distributed.session(chosen.train.device) as group:
        with distributed.main_first(group) as main:  # no rank resumes what rank 0 removes
            if run_dir is not None and main:
                check_output(run_dir, overwrite, resumable=True)
                if overwrite:
                    start_over(run_dir)
        trainer = Trainer(data, model_config, chosen.train, run_dir=run_dir, progress=progress,
                          log=log)
        result = trainer.fit()
        device = str(trainer.device)
        del trainer  # its DDP wrapper holds the process group, which the session closes
        with distributed.main_first(group) as main:  # every rank returns once it is written
            if run_dir is not None and main:
                _save_trained(run_dir, result, chosen, model_config.to_dict(), data, options,
                              titles, device, 1 if group is None else group.world_size)
    return result


def _save_trained(run_dir: Path, result: TrainResult, chosen: Preset, config: dict[str, Any],
                  data: Interactions, options: PrepareOptions | None,
                  titles: dict[Any, str] | None, device: str, processes: int) -> None:
    """Save a finished training as a run directory, and remove its checkpoint."""
    state = result.state
    metrics = {
        "valid_full": result.valid_metrics,
        "train_seconds": round(state.elapsed, 2),
        "epochs": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "stopped": state.stopped,
        "history": state.history,
    }
    save_run(run_dir, result.model.name, config, result.model.tensors(), data,
             options or PrepareOptions(), metrics=metrics, seed=chosen.train.seed,
             titles=titles,
             extra_provenance={"preset": chosen.name, "train": chosen.train.to_dict(),
                               "threads": torch.get_num_threads(), "processes": processes,
                               "device": device})
    remove_checkpoint(run_dir)


def save(
    model: BERT4Rec,
    output: str | Path,
    data: Interactions,
    options: PrepareOptions | None = None,
    titles: dict[Any, str] | None = None,
) -> None:
    """Save a model trained on ``data`` as a run directory that ``load_model`` reads back."""
    save_run(Path(output), model.name, model.config.to_dict(), model.tensors(), data,
             options or PrepareOptions(), titles=titles)


def fit(data: Interactions, preset: str = "default", output: str | Path | None = None,
        **overrides: Any) -> BERT4Rec:
    """Train and return the model (best validation weights); see :func:`train`."""
    return train(data, preset, output, **overrides).model
