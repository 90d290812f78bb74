"""What the trainable baselines share.

Plumbing: a base for their frozen config dataclasses (:class:`Settings`), a base for the models
with the run-directory round trip (:class:`BaselineModel`), and the start of every ``fit``
(:func:`start_fit`).

The training loop (:func:`fit_loop`): Adam, mini-batches over a model's own training examples,
early stopping on validation NDCG@10 under full ranking, a time budget, and the best validation
weights at the end. Each baseline defines its examples and its loss; the loop knows nothing
about either. As in BERT4Rec's trainer, the time budget counts training steps only, not the
validation passes between epochs, and ``valid_users`` validates on a fixed random share of the
users: on a large catalogue a full-ranking pass over every user can cost several epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bert4rec import checkpoints
from bert4rec.checks import check_optimisation, check_range, check_types
from bert4rec.data import Interactions
from bert4rec.device import resolve_device
from bert4rec.errors import ConfigError
from bert4rec.evaluation import check_valid_users, evaluate, validation_users
from bert4rec.training import DIVERGED, blew_up, nothing_kept, probe_histories


@dataclass(frozen=True)
class Settings:
    """Base of a baseline's architecture config: a frozen dataclass that goes to a plain dict
    for the run directory and back, refusing keys it does not have."""

    label: ClassVar[str]  # the model as error messages name it

    num_items: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            settable = sorted(known - {"num_items", "loss"})
            raise ConfigError(f"unknown {cls.label} setting(s): {', '.join(sorted(unknown))}; "
                              f"its settings: {', '.join(settable)}, and the optimisation "
                              f"settings ({', '.join(f.name for f in fields(FitConfig))})")
        return cls(**values)


class BaselineModel(nn.Module):
    """Base of the trainable baselines: ``num_items`` for the recommender contract, the device
    the weights are on, and the run-directory round trip. A subclass names its config class in
    ``settings_class`` and takes a config of that class."""

    name: str
    settings_class: ClassVar[type[Settings]]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    @property
    def num_items(self) -> int:
        return self.settings.num_items

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # Run-directory round trip: the config as a plain dict, the weights as the state dict.
    def config(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Self:
        model = cls(cls.settings_class.from_dict(config))
        model.load_state_dict(tensors)
        model.eval()
        return model


CHECKPOINT_VERSION = 1
# Settings a resumed run may change: how long it trains and where, not what it trains.
RESUMABLE = ("epochs", "patience", "time_budget", "threads", "device")


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings common to the trainable baselines."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 1
    patience: int = 10  # evaluations without improvement; 0 disables early stopping
    time_budget: float | None = None  # seconds of training steps (validation not counted)
    valid_users: int | None = None  # validate on this many users drawn once; None: all
    seed: int = 0
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("epochs", "batch_size", "eval_every"):
            check_range(name, getattr(self, name), 1)
        check_optimisation(self)
        check_valid_users(self.valid_users)


@dataclass
class FitResult:
    epochs: int = 0
    best_epoch: int = 0
    best_metric: float = -1.0
    seconds: float = 0.0
    stopped: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    valid_metrics: dict[str, float] = field(default_factory=dict)


SettingsT = TypeVar("SettingsT", bound=Settings)
ModelT = TypeVar("ModelT", bound=BaselineModel)


def check_num_items(num_items: int, data: Interactions) -> None:
    """Refuse a model of ``num_items`` items for ``data`` with another item vocabulary."""
    if num_items != data.num_items:
        raise ConfigError(f"the model is set up for {num_items} items but the data has "
                          f"{data.num_items}; build its config with num_items={data.num_items}")


def start_fit(
    data: Interactions, config: SettingsT, fit: FitConfig, build: Callable[[SettingsT], ModelT]
) -> tuple[ModelT, torch.device]:
    """The start of every baseline's ``fit``: check ``config`` against ``data``, pick the device
    ``fit.device`` asks for, and build the model there. Torch is seeded first so that the initial
    weights are reproducible too; :func:`fit_loop` seeds training itself."""
    check_num_items(config.num_items, data)
    device = resolve_device(fit.device)
    torch.manual_seed(fit.seed)
    return build(config).to(device), device


def fit_loop(
    model: BaselineModel,
    data: Interactions,
    config: FitConfig,
    num_examples: int,
    loss_fn: Callable[[np.ndarray, torch.Generator], torch.Tensor],
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
) -> FitResult:
    """Train ``model`` in place. ``loss_fn(example_indices, generator)`` returns the mean loss
    of a batch of the model's ``num_examples`` training examples; the generator is the one
    source of randomness (negatives, dropout masks come from torch's global seed).

    With ``run_dir``, a checkpoint is written there after every epoch
    (:mod:`bert4rec.checkpoints`), and a checkpoint found there is resumed from: same seed and
    threads, same result as a run never stopped. A checkpoint of another model, other data or
    other settings is refused; the epochs, patience, time budget, threads and device may differ.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    result = FitResult()
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = 0
    valid_users = validation_users(data, config.valid_users, config.seed)
    probe = probe_histories(data)
    identity = {"version": CHECKPOINT_VERSION, "model": model.name, "config": model.config(),
                "fit": {k: v for k, v in asdict(config).items() if k not in RESUMABLE},
                "data": data.fingerprint, "examples": num_examples}
    saved = checkpoints.read_checkpoint(run_dir) if run_dir is not None else None
    if run_dir is not None and saved is not None:
        meta, tensors = saved
        checkpoints.check_identity(meta, identity, run_dir)
        with checkpoints.restoring(run_dir):
            model.load_state_dict(checkpoints.prefixed(tensors, "model."))
            best = checkpoints.weights_like(best, tensors, "best.")
            checkpoints.restore_optimizer(optimizer, tensors, meta["param_groups"])
            checkpoints.restore_rng(tensors, generator, model.device)
            result, bad = FitResult(**meta["result"]), int(meta["bad"])
        if log is not None:
            log(f"resumed from the checkpoint in {run_dir} at epoch {result.epochs}")
    trained = result.seconds  # seconds spent in training steps, what the time budget counts
    for epoch in range(result.epochs + 1, config.epochs + 1):
        if result.stopped:
            break
        model.train()
        order = torch.randperm(num_examples, generator=generator).numpy()
        losses = []
        batches = range(0, num_examples, config.batch_size)
        started = time.perf_counter()
        for start in tqdm(batches, desc=f"epoch {epoch}", leave=False, delay=1.0,
                          disable=None if progress else True):
            loss = loss_fn(order[start : start + config.batch_size], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if config.time_budget and trained + time.perf_counter() - started > config.time_budget:
                result.stopped = "time budget"
                break
        trained += time.perf_counter() - started
        result.epochs = epoch
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses))}
        model.eval()
        if blew_up(record["loss"], bool(losses), model, probe):
            result.stopped = DIVERGED  # whatever else ended the epoch (the time budget)
        elif epoch % config.eval_every == 0 or epoch == config.epochs or result.stopped:
            metrics = evaluate(model, data, split="valid", protocol="full",  # type: ignore[arg-type]
                               progress=False, users=valid_users).metrics
            record["valid_NDCG@10"] = metrics["NDCG@10"]
            if metrics["NDCG@10"] > result.best_metric:
                result.best_metric, result.best_epoch = metrics["NDCG@10"], epoch
                result.valid_metrics = metrics
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad = 0
            else:
                bad += 1
                if config.patience and bad >= config.patience:
                    result.stopped = result.stopped or "early stopping"
        result.history.append(record)
        result.seconds = trained
        if log is not None:
            log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in record.items()))
        if run_dir is not None and result.stopped != DIVERGED:  # nothing to go on from after it
            _save_checkpoint(run_dir, model, best, optimizer, generator,
                             {"identity": identity, "result": asdict(result), "bad": bad})
    result.stopped = result.stopped or "epochs done"
    if result.stopped == DIVERGED and not result.best_epoch:
        raise nothing_kept(run_dir, result.epochs)
    model.load_state_dict(best)
    model.eval()
    return result


def _save_checkpoint(run_dir: Path, model: BaselineModel, best: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     meta: dict[str, Any]) -> None:
    tensors = {**checkpoints.named(model.state_dict(), "model."),
               **checkpoints.named(best, "best."),
               **checkpoints.optimizer_tensors(optimizer),
               **checkpoints.rng_tensors(generator, model.device)}
    meta = {**meta, "param_groups": checkpoints.optimizer_groups(optimizer)}
    checkpoints.write_checkpoint(run_dir, tensors, meta, meta["result"]["epochs"])
