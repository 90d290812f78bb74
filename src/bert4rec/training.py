"""Cloze training of BERT4Rec with early stopping, a time budget, and resumable checkpoints.

Optimisation follows the paper's released scripts: Adam (0.9, 0.999, eps 1e-6) with decoupled
weight decay 0.01 except on LayerNorm and biases, linear warm-up then linear decay to zero,
gradient clipping at global norm 5, batch 256. Replication studies found the paper's 400k steps
at lr 1e-4 under-train badly; our tuned presets use a higher learning rate and stop early on
validation NDCG@10 under full ranking (never on the test split).

The loss is the paper's full softmax over every item by default. For large catalogues,
``loss = "sampled"`` scores each masked position against ``num_negatives`` items drawn once per
batch in proportion to ``(training count + 1) ** sampling_alpha``, with the logQ correction, and
``loss = "gbce"`` uses gSASRec's calibrated binary cross-entropy against uniform negatives; see
:mod:`bert4rec.model`. ``valid_users`` validates on a fixed random share of the users, so that
early stopping stays cheap on large data.

With ``ema_decay`` set, an exponential moving average of the weights is kept beside them
(:class:`torch.optim.swa_utils.AveragedModel`, updated after every step); validation, early
stopping and the weights the run ends with are the average's, and training itself is unchanged.

A checkpoint is written after every epoch into ``RUN_DIR/checkpoint``: weights, best weights,
optimiser state and every random generator state, in safetensors plus a JSON file. Training
started again with the same command resumes from it and, with the same seed, thread count and
fp32, ends with the same metrics as a run that was never interrupted.

Under ``torchrun`` (see :mod:`bert4rec.distributed`) the model is wrapped in
``DistributedDataParallel`` and each process trains on its share of every batch; rank 0 alone
validates, logs and writes checkpoints, and tells the others when to stop.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from bert4rec import checkpoints
from bert4rec.checks import check_optimisation, check_range, check_types
from bert4rec.data import Interactions
from bert4rec.device import resolve_device
from bert4rec.distributed import (
    Distributed,
    all_gather_int,
    all_reduce_mean,
    broadcast_float,
    broadcast_json,
    broadcast_module,
    current,
    on_main,
    share,
    together,
)
from bert4rec.errors import ConfigError, DivergedError, RunError
from bert4rec.evaluation import check_valid_users, evaluate, validation_users
from bert4rec.masking import cloze_mask, gather_windows, window_bounds
from bert4rec.model import BERT4Rec, BERT4RecConfig, NegativeSample, gbce_beta
from bert4rec.recommender import scores_finite
from bert4rec.split import train_sequences
from bert4rec.warmstart import cooccurrence_embeddings, popularity_bias

CHECKPOINT_VERSION = 1
LOSSES = ("softmax", "sampled", "gbce")
# Settings added after checkpoint version 1: they join a checkpoint's identity only when they
# differ from their defaults, so checkpoints written before them still resume.
LATER_SETTINGS = ("loss", "num_negatives", "sampling_alpha", "gbce_t", "valid_users",
                  "item_embedding_init", "ema_decay")
ITEM_INITS = ("random", "cooccurrence")
DIVERGED = "diverged: the loss or the scores are not finite; lower lr"
PROBE = 8  # users whose scores tell weights that blew up (blew_up)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; presets in ``bert4rec/presets/*.toml`` set these and the model's."""

    epochs: int = 200
    max_steps: int | None = None  # when set, overrides epochs (the paper counts steps)
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip_norm: float = 5.0
    adam_eps: float = 1e-6
    mask_prob: float = 0.2  # rho
    max_predictions: int = 40
    last_item_prob: float = 0.1  # share of samples that mask only the last item
    window_step: int | None = None  # None: one window (the most recent) per user per epoch
    bucket_by_length: bool = True  # batches of similar length: less compute on padding
    popularity_bias_init: bool = False  # output bias starts at log item frequency
    item_embedding_init: str = "random"  # or "cooccurrence": SVD of PPMI (bert4rec.warmstart)
    eval_every: int = 1  # epochs between validation evaluations
    patience: int = 10  # evaluations without improvement before stopping; 0 disables
    time_budget: float | None = None  # seconds of training, then stop with the best weights
    seed: int = 0
    threads: int | None = None
    precision: str = "fp32"  # or "bf16" (autocast)
    device: str = "auto"  # "cpu", "cuda" or "auto"
    loss: str = "softmax"  # "softmax" (full, the paper's), "sampled" or "gbce"
    num_negatives: int = 256  # sampled / gbce: negatives per batch, shared by its positions
    sampling_alpha: float = 0.5  # sampled: draw by (count + 1) ** alpha; 0 is uniform
    gbce_t: float = 0.75  # gbce: calibration t (gSASRec's default; 0 is plain BCE)
    valid_users: int | None = None  # validate on this many users drawn once; None: all
    ema_decay: float | None = None  # validate and keep a moving average of the weights; None: off

    def __post_init__(self) -> None:
        check_types(self)
        check_optimisation(self)
        check_range("max_steps", self.max_steps, 1, none_ok=True)
        check_range("warmup_steps", self.warmup_steps, 0)
        check_range("max_predictions", self.max_predictions, 1)
        if self.item_embedding_init not in ITEM_INITS:
            raise ConfigError(f"item_embedding_init must be one of {', '.join(ITEM_INITS)}, "
                              f"not {self.item_embedding_init!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.num_negatives < 1:
            raise ConfigError("num_negatives must be >= 1")
        if self.sampling_alpha < 0.0:
            raise ConfigError("sampling_alpha must be >= 0")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ConfigError("gbce_t must be in [0, 1]")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), or none for no averaging, "
                              f"not {self.ema_decay!r}")
        check_valid_users(self.valid_users)
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ConfigError("mask_prob must be in (0, 1]")
        if not 0.0 <= self.last_item_prob <= 1.0:
            raise ConfigError("last_item_prob must be in [0, 1]")
        if self.window_step is not None and (
                isinstance(self.window_step, bool) or not isinstance(self.window_step, int)
                or self.window_step < 1):
            raise ConfigError(f"window_step must be a whole number >= 1, or none for one window "
                              f"(the most recent) per user, not {self.window_step!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.eval_every < 1:
            raise ConfigError("batch_size, epochs and eval_every must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass(frozen=True)
class NegativeSampler:
    """Draws negatives i.i.d. with replacement from q(i) proportional to
    ``(count_i + 1) ** alpha`` over items 1..n. The added one keeps every item drawable, which
    the logQ correction needs (it divides by q); ``alpha = 0`` is uniform, ``alpha = 1``
    popularity, as in-batch negatives would be (Yi et al. 2019)."""

    cdf: torch.Tensor  # (n,) float64, cumulative q
    log_q: torch.Tensor  # (n,) float32

    @classmethod
    def from_counts(cls, counts: np.ndarray, alpha: float) -> NegativeSampler:
        """``counts`` (n,): training interactions of items 1..n."""
        weights = (np.asarray(counts, dtype=np.float64) + 1.0) ** alpha
        q = weights / weights.sum()
        return cls(cdf=torch.from_numpy(np.cumsum(q)), log_q=torch.from_numpy(np.log(q)).float())

    def draw(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` item ids (1..n) and the log of their expected counts ``log(k q(i))``."""
        u = torch.rand(k, generator=generator, dtype=torch.float64) * self.cdf[-1]
        index = torch.searchsorted(self.cdf, u, right=True).clamp_(max=len(self.cdf) - 1)
        return index + 1, self.log_q[index] + math.log(k)


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumptions
    best_metric: float = -1.0
    best_epoch: int = 0
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""


@dataclass
class TrainResult:
    model: BERT4Rec
    state: TrainState
    valid_metrics: dict[str, float]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; never LayerNorm weights or biases (BERT's rule)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name.endswith("bias") or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class ClozeLoss(torch.nn.Module):
    """The model's training loss as a module's forward: DistributedDataParallel averages the
    gradients of work done through its wrapped module's forward, and the model's forward is
    not its loss."""

    def __init__(self, model: BERT4Rec) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inputs: torch.Tensor, labels: torch.Tensor, negatives: NegativeSample | None
    ) -> torch.Tensor:
        return self.model.loss(inputs, labels, negatives)


def moving_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights, updated by ``update_parameters``.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so that early on
    the average spans about the last tenth of the steps taken and does not lag behind a model
    that is still learning fast; later it spans about ``1 / (1 - decay)`` steps.
    """

    def update(averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
               current: list[torch.Tensor] | tuple[torch.Tensor, ...],
               updates: torch.Tensor | int) -> None:
        n = int(updates)
        torch._foreach_lerp_(list(averaged), list(current), 1.0 - min(decay, (1 + n) / (10 + n)))

    return AveragedModel(model, multi_avg_fn=update).eval()


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Warm-up from 0 to 1 over ``warmup`` steps, then linear decay reaching 0 when
    ``progress`` (the share of the run done, 0..1) reaches 1."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - progress)


def probe_histories(data: Interactions) -> list[np.ndarray]:
    """A few users' training histories, whose scores tell weights that blew up."""
    return [data.sequence(u)[:-2] for u in range(min(PROBE, data.num_users))]


def blew_up(loss: float, trained: bool, model: Any, probe: list[np.ndarray]) -> bool:
    """Whether an epoch diverged: its mean loss (``trained``: it had steps) or the scores of
    the ``probe`` histories are not finite (weights can blow up with each one still finite).
    Such weights are never kept nor scored, and every step after would be NaN too."""
    return (trained and not math.isfinite(loss)) or not scores_finite(model, probe)


def nothing_kept(run_dir: Path | None, epoch: int) -> DivergedError:
    """The error of a run that diverged in ``epoch`` before any epoch worth keeping. Its
    checkpoint in ``run_dir`` (given by the one process that writes it), the way to the
    blow-up, is not worth resuming and is removed."""
    if run_dir is not None:
        checkpoints.remove_checkpoint(run_dir)
    return DivergedError(f"training diverged (the loss or the scores are not finite) in "
                         f"epoch {epoch}, before any epoch worth keeping; nothing is saved. "
                         "Lower lr and train again")


class Trainer:
    """Owns the model, optimiser, data windows and generators of one training run."""

    def __init__(
        self,
        data: Interactions,
        model_config: BERT4RecConfig,
        config: TrainConfig,
        run_dir: Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.data = data
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.log = log or (lambda message: None)
        # Under torchrun: this process's rank; None in one process.
        self.group: Distributed | None = current()
        if not self.is_main:
            self.progress, self.log = False, (lambda message: None)
        if config.threads:
            torch.set_num_threads(config.threads)
        elif self.group is not None:
            torch.set_num_threads(self.group.default_threads())
        self.device = resolve_device(config.device)
        if self.group is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.group.local_rank)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model = BERT4Rec(model_config).to(self.device)
        self.model.dropout_masks.seed(config.seed)
        train = train_sequences(data)
        self.train_items = train.items.astype(np.int64)
        users, starts, ends = window_bounds(train.lengths, model_config.max_len,
                                            config.window_step)
        if len(users) == 0:
            raise ConfigError("no training sequences: every user has fewer than 3 items")
        base = train.offsets[users]
        self.starts, self.ends = base + starts, base + ends  # positions in train_items
        self.probe = probe_histories(data)
        self.sampler: NegativeSampler | None = None
        self.gbce_beta: float | None = None
        if config.loss != "softmax":
            counts = np.bincount(self.train_items, minlength=data.num_items + 1)[1:]
            # gBCE's calibration is derived for uniform negatives, as gSASRec draws them.
            alpha = config.sampling_alpha if config.loss == "sampled" else 0.0
            self.sampler = NegativeSampler.from_counts(counts, alpha)
            if config.loss == "gbce":
                self.gbce_beta = gbce_beta(config.num_negatives, data.num_items, config.gbce_t)
        self.valid_users = validation_users(data, config.valid_users, config.seed)
        if config.popularity_bias_init:
            bias = popularity_bias(self.train_items, data.num_items)
            with torch.no_grad():
                self.model.output_bias.copy_(torch.from_numpy(bias))
        if config.item_embedding_init == "cooccurrence":
            start = cooccurrence_embeddings(
                self.train_items, train.lengths, data.num_items, model_config.hidden_size,
                std=model_config.init_std, seed=config.seed)
            with torch.no_grad():
                self.model.item_embedding.weight[1 : data.num_items + 1] = torch.from_numpy(
                    start).to(self.device)
        self.steps_per_epoch = math.ceil(len(self.starts) / config.batch_size)
        if config.max_steps:
            self.total_steps = config.max_steps
            self.epochs = math.ceil(config.max_steps / self.steps_per_epoch)
        else:
            self.epochs = config.epochs
            self.total_steps = self.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay), lr=config.lr,
            betas=(0.9, 0.999), eps=config.adam_eps,
        )
        self.state = TrainState()
        self._set_lr(0.0)
        self.average: AveragedModel | None = None
        if config.ema_decay is not None:
            self.average = moving_average(self.model, config.ema_decay)
        self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ddp: DistributedDataParallel | None = None
        if self.group is not None:
            self.ddp = DistributedDataParallel(ClozeLoss(self.model))

    @property
    def is_main(self) -> bool:
        """True in one process, and in rank 0 of several."""
        return self.group is None or self.group.is_main

    # ------------------------------------------------------------------------------------------

    def epoch_batches(self) -> list[np.ndarray]:
        """Window indices per batch. With bucketing, windows of similar length share a batch
        (shuffled within equal lengths, batches in random order), so little is spent on padding.
        """
        order = torch.randperm(len(self.starts), generator=self.generator).numpy()
        if self.config.bucket_by_length:
            lengths = (self.ends - self.starts)[order]
            order = order[np.argsort(lengths, kind="stable")]
        size = self.config.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if self.config.bucket_by_length:
            shuffle = torch.randperm(len(batches), generator=self.generator).tolist()
            batches = [batches[i] for i in shuffle]
        return batches

    def progress_share(self, elapsed: float) -> float:
        """Share of the run done: steps over total steps, or time over the time budget when
        that is further along, so the learning rate reaches zero when the budget ends.
        Without a budget it depends on the step alone and runs are reproducible."""
        done = self.state.step / self.total_steps
        warm = self.config.warmup_steps
        if self.state.step >= warm:  # the decay spans the steps after warm-up
            done = (self.state.step - warm) / max(1, self.total_steps - warm)
        if self.config.time_budget:
            done = max(done, elapsed / self.config.time_budget)
        return done

    def _set_lr(self, progress: float) -> None:
        factor = lr_factor(self.state.step, self.config.warmup_steps, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor

    def train_step(self, batch: np.ndarray, elapsed: float = 0.0) -> float:
        cfg = self.config
        self._set_lr(self.progress_share(elapsed))
        tokens = gather_windows(self.train_items, self.starts[batch], self.ends[batch])
        last_only = torch.rand(len(batch), generator=self.generator) < cfg.last_item_prob
        inputs, labels = cloze_mask(tokens, self.model.config.mask_id, cfg.mask_prob,
                                    cfg.max_predictions, last_only, self.generator)
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        negatives = None
        if self.sampler is not None:
            items, log_expected = self.sampler.draw(cfg.num_negatives, self.generator)
            negatives = NegativeSample(
                items=items.to(self.device),
                log_expected=log_expected.to(self.device) if cfg.loss == "sampled" else None,
                gbce_beta=self.gbce_beta,
            )
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=cfg.precision == "bf16"):
            if self.ddp is None:
                loss = self.model.loss(inputs, labels, negatives)
            else:
                loss = self._rank_loss(inputs, labels, negatives)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        self.state.step += 1
        return float(loss.detach()) if self.group is None else self._batch_loss(loss)

    def _rank_loss(
        self, inputs: torch.Tensor, labels: torch.Tensor, negatives: NegativeSample | None
    ) -> torch.Tensor:
        """This rank's part of the loss of a global batch (B, T), which every rank masked alike.

        The loss of a batch is the mean over its N masked positions. Rank r trains on the rows
        ``share(B, r, R)``, which hold n_r of them; weighting its mean by ``n_r R / N`` makes
        DistributedDataParallel's average of the R gradients the gradient of the mean over all
        N: the step one process takes on the whole batch.
        """
        assert self.ddp is not None and self.group is not None
        counts = (labels > 0).sum(dim=1)  # (B,) masked positions per row, >= 1 each
        rows = share(len(labels), self.group.rank, self.group.world_size)
        weight = counts[rows].sum() * self.group.world_size / counts.sum()
        if rows.start == rows.stop:
            # Fewer rows than ranks: take part in the gradient exchange with a zero weight.
            rows = slice(0, 1)
        # Dropout differs between ranks and follows from (seed, rank, step) alone, so that a
        # resumed run draws it as the uninterrupted run did.
        seed = int(np.random.SeedSequence([self.config.seed, self.group.rank,
                                           self.state.step]).generate_state(1)[0])
        torch.manual_seed(seed)  # GPU dropout
        self.model.dropout_masks.seed(seed)  # CPU dropout
        return self.ddp(inputs[rows], labels[rows], negatives) * weight

    def _batch_loss(self, loss: torch.Tensor) -> float:
        """The global batch's loss: the ranks' weighted parts averaged."""
        return float(all_reduce_mean(loss.detach(), self.group))

    @property
    def validated_model(self) -> BERT4Rec:
        """The weights that validation scores and the run keeps: the moving average when one
        is kept, else the model's own."""
        if self.average is None:
            return self.model
        return cast(BERT4Rec, self.average.module)

    def validate(self) -> dict[str, float]:
        result = evaluate(self.validated_model, self.data, split="valid", protocol="full",
                          progress=False, batch_size=512, users=self.valid_users)
        return result.metrics

    def fit(self) -> TrainResult:
        """Train until the epochs, the step count or the time budget run out, or validation
        stops improving; the model ends with the best validation weights."""
        cfg = self.config
        self._check_together()
        if self.run_dir is not None:
            with together(self.group):  # a checkpoint one rank cannot read stops them all
                self._try_resume()
        self._check_resumed_together()
        self.model.train()
        stop = self.state.stopped
        while not stop and self.state.epoch < self.epochs:
            started = time.perf_counter()
            losses: list[float] = []
            bar = tqdm(self.epoch_batches(), desc=f"epoch {self.state.epoch + 1}/{self.epochs}",
                       unit="batch", leave=False, delay=1.0,
                       disable=None if self.progress else True)  # None: off when not a TTY
            for batch in bar:
                if self.state.step >= self.total_steps:
                    break
                losses.append(self.train_step(batch, self._elapsed(started)))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if cfg.time_budget and self._elapsed(started) > cfg.time_budget:
                    stop = "time budget"
                    break
            bar.close()
            self.state.elapsed += time.perf_counter() - started
            self.state.epoch += 1
            record: dict[str, Any] = {
                "epoch": self.state.epoch, "step": self.state.step,
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "elapsed": round(self.state.elapsed, 2),
            }
            if self.is_main:
                with on_main(self.group):  # the other ranks wait for its verdict
                    stop = self._close_epoch(record, bool(losses), stop)
            stop = broadcast_json(stop, self.group)  # rank 0 decides for every rank
            if not self.is_main:
                self.state.history.append(record)
                self.state.stopped = stop
            self._report(record)
        self.state.stopped = stop or "epochs done"
        self.model.load_state_dict(self.best_weights)
        self.model.eval()
        self.average = None  # the model now holds the weights the run keeps
        valid: dict[str, float] = {}
        if self.is_main and self.state.best_epoch:
            with on_main(self.group):
                valid = self.validate()
        if self.group is not None:  # every rank returns rank 0's result
            state, valid = broadcast_json([asdict(self.state), valid], self.group)
            self.state = TrainState(**state)
            broadcast_module(self.model, self.group)
        if self.state.stopped == DIVERGED and not self.state.best_epoch:
            raise nothing_kept(self.run_dir if self.is_main else None, self.state.epoch)
        return TrainResult(self.model, self.state, valid)

    def _close_epoch(self, record: dict[str, Any], trained: bool, stop: str) -> str:
        """Rank 0's end of an epoch: check the weights, validate, keep the best weights,
        decide whether to stop, write the checkpoint. Returns the reason to stop ("": none)."""
        cfg = self.config
        finished = self.state.epoch >= self.epochs or self.state.step >= self.total_steps
        scored = self.state.epoch % cfg.eval_every == 0 or finished or bool(stop)
        diverged = blew_up(record["loss"], trained, self.validated_model, self.probe)
        if diverged:
            stop = DIVERGED  # whatever else ended the epoch (the time budget)
        elif scored:
            metrics = self.validate()
            self.model.train()
            record["valid_NDCG@10"] = metrics["NDCG@10"]
            record["valid_HR@10"] = metrics["HR@10"]
            if metrics["NDCG@10"] > self.state.best_metric:
                self.state.best_metric = metrics["NDCG@10"]
                self.state.best_epoch = self.state.epoch
                self.state.bad_evals = 0
                self.best_weights = {k: v.detach().clone() for k, v
                                     in self.validated_model.state_dict().items()}
            else:
                self.state.bad_evals += 1
                if cfg.patience and self.state.bad_evals >= cfg.patience:
                    stop = stop or "early stopping"
        if self.state.step >= self.total_steps:
            stop = stop or "steps done"
        self.state.history.append(record)
        self.state.stopped = stop
        if self.run_dir is not None and not diverged:  # nothing to go on from after a blow-up
            self.save_checkpoint()
        return stop

    def _schedule(self) -> dict[str, Any]:
        """What the learning-rate schedule and the stop follow, beside the settings."""
        return {"total_steps": self.total_steps, "time_budget": self.config.time_budget}

    def _elapsed(self, started: float) -> float:
        """Seconds of training so far. Under torchrun with a time budget, rank 0's clock: the
        budget moves the learning rate and the stop, which must be the same on every rank."""
        elapsed = self.state.elapsed + time.perf_counter() - started
        if self.config.time_budget and self.group is not None:
            elapsed = broadcast_float(elapsed, self.group)
        return elapsed

    def _check_together(self) -> None:
        """Under torchrun, refuse processes that would train apart, on other data or settings:
        their steps and exchanges would differ, and the first to finish or to exchange
        otherwise would leave the others waiting."""
        if self.group is None:
            return
        plan = json.dumps([self._identity(), self._schedule()], sort_keys=True, default=str)
        digest = int.from_bytes(hashlib.sha256(plan.encode()).digest()[:7], "big")
        if len(set(all_gather_int(digest, self.group))) > 1:
            raise RunError("the processes of this torchrun hold different data or settings: "
                           "every one must read the same --data with the same options")

    def _check_resumed_together(self) -> None:
        steps = all_gather_int(self.state.step, self.group)
        if len(set(steps)) > 1:
            raise RunError(
                f"the processes resumed at different steps ({', '.join(map(str, steps))}): "
                f"every one must read {self.run_dir}/{checkpoints.CHECKPOINT_DIR}; on several "
                "machines put --output on a file system they share"
            )

    def _report(self, record: dict[str, Any]) -> None:
        per_epoch = self.state.elapsed / max(1, self.state.epoch)
        left = per_epoch * (self.epochs - self.state.epoch)
        if self.config.time_budget:
            left = min(left, max(0.0, self.config.time_budget - self.state.elapsed))
        line = f"epoch {record['epoch']:>4}  loss {record['loss']:.4f}"
        if "valid_NDCG@10" in record:
            line += (f"  valid NDCG@10 {record['valid_NDCG@10']:.4f} HR@10 "
                     f"{record['valid_HR@10']:.4f}  best {self.state.best_metric:.4f}"
                     f" (epoch {self.state.best_epoch})")
        line += f"  {per_epoch:.1f}s/epoch  ETA {_clock(left)}"
        self.log(line)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def _identity(self) -> dict[str, Any]:
        defaults = TrainConfig()
        train = {k: v for k, v in self.config.to_dict().items()
                 if k not in ("time_budget", "threads", "device", "epochs", "max_steps",
                              "patience")
                 and not (k in LATER_SETTINGS and v == getattr(defaults, k))}
        return {
            "version": CHECKPOINT_VERSION,
            "data": self.data.fingerprint,
            "model": self.model.config.to_dict(),
            "train": train,
        }

    def save_checkpoint(self) -> None:
        assert self.run_dir is not None
        tensors = {**checkpoints.named(self.model.state_dict(), "model."),
                   **checkpoints.named(self.best_weights, "best."),
                   **checkpoints.optimizer_tensors(self.optimizer),
                   **checkpoints.rng_tensors(self.generator, self.device)}
        if self.average is not None:
            tensors.update(checkpoints.named(self.average.state_dict(), "average."))
        meta = {
            "identity": self._identity(),
            "dropout_masks": self.model.dropout_masks.get_state(),
            "state": asdict(self.state),
            "param_groups": checkpoints.optimizer_groups(self.optimizer),
            "schedule": self._schedule(),
        }
        checkpoints.write_checkpoint(self.run_dir, tensors, meta, self.state.step)

    def _try_resume(self) -> None:
        assert self.run_dir is not None
        saved = checkpoints.read_checkpoint(self.run_dir)
        if saved is None:
            return
        meta, tensors = saved
        checkpoints.check_identity(meta, self._identity(), self.run_dir)
        with checkpoints.restoring(self.run_dir):
            self.model.load_state_dict(checkpoints.prefixed(tensors, "model."))
            self.best_weights = checkpoints.weights_like(self.best_weights, tensors, "best.")
            if self.average is not None:
                self.average.load_state_dict(checkpoints.prefixed(tensors, "average."))
            checkpoints.restore_optimizer(self.optimizer, tensors, meta["param_groups"])
            checkpoints.restore_rng(tensors, self.generator, self.device)
            if "dropout_masks" in meta:
                self.model.dropout_masks.set_state(meta["dropout_masks"])
            self.state = TrainState(**meta["state"])
        self.log(f"resumed from {self.run_dir / checkpoints.CHECKPOINT_DIR} at epoch "
                 f"{self.state.epoch} (step {self.state.step})")
        before, now = meta.get("schedule"), self._schedule()
        if isinstance(before, dict) and not self.state.stopped:  # it trains on
            changed = [f"{name.replace('_', ' ')} {before.get(name)} -> {value}"
                       for name, value in now.items() if before.get(name) != value]
            if changed:
                self.log("the learning-rate decay changes from this step on: "
                         + ", ".join(changed))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def with_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy with the non-None overrides applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
