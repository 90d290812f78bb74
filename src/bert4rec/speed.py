"""Training speed measured against the hardware's own limit.

``measure_peak`` times dense matrix products (fp32 and bf16) on this machine: the practical
ceiling. ``measure_epochs`` trains real epochs of a preset and reports sequences/s, tokens/s,
seconds per epoch, peak memory, the model's FLOPs per step (counted from the shapes of every
batch) and the achieved FLOP/s as a share of that ceiling. ``time_to_quality`` trains until
validation NDCG@10 (full ranking) first reaches a target and reports the wall clock.
"""

from __future__ import annotations

import itertools
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bert4rec.data import Interactions, PrepareOptions
from bert4rec.model import BERT4RecConfig
from bert4rec.presets import Preset
from bert4rec.training import Trainer


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def measure_peak(device: torch.device, dtype: torch.dtype, size: int = 2048,
                 repeats: int = 10) -> float:
    """Best FLOP/s of ``size``-square matrix products: what dense math reaches here."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def step_flops(config: BERT4RecConfig, batch: int, length: int, masked: int,
               scored: int | None = None) -> float:
    """Forward + backward FLOPs of one training step on a (batch, length) block with
    ``masked`` predicted positions, each scored against ``scored`` items (every item for the
    full softmax, the default; the target and the shared negatives for a sampled loss);
    backward counted as twice the forward (the usual rule). Matrix products only: they are all
    but a few percent of the work."""
    d, f = config.hidden_size, config.ffn_size
    tokens = batch * length
    per_layer = (
        2 * tokens * d * 3 * d  # Q, K, V projections
        + 2 * tokens * d * d  # attention output projection
        + 2 * 2 * batch * length * length * d  # scores Q K^T and the weighted sum of V
        + 2 * 2 * tokens * d * f  # the two feed-forward layers
    )
    items = config.num_items if scored is None else scored
    head = 2 * masked * d * d + 2 * masked * d * items  # dense + tied logits
    return 3.0 * (config.num_layers * per_layer + head)


@dataclass
class EpochSpeed:
    epochs: int
    seconds_per_epoch: float
    sequences_per_second: float
    tokens_per_second: float  # real (non-padding) items per second
    padded_tokens_per_second: float  # what the model computed on, padding included
    flops_per_step: float  # mean over the epoch's steps
    achieved_flops: float  # FLOP/s
    peak_rss_mb: float
    peak_gpu_mb: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure_epochs(data: Interactions, preset: Preset, epochs: int = 1) -> EpochSpeed:
    """Train ``epochs`` real epochs (bucketed batches, fresh masks) and time them."""
    trainer = Trainer(data, preset.model_config(data.num_items), preset.train, progress=False)
    config = trainer.model.config
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    trainer.model.train()
    # A sampled loss scores each prediction against its target and the batch's negatives.
    scored = None if preset.train.loss == "softmax" else preset.train.num_negatives + 1
    flops = sequences = real = padded = 0.0
    steps = 0
    seconds = 0.0
    for _ in range(epochs):
        for batch in trainer.epoch_batches():
            lengths = trainer.ends[batch] - trainer.starts[batch]
            width = int(lengths.max())
            started = time.perf_counter()
            trainer.train_step(batch)
            if cuda:
                torch.cuda.synchronize()
            seconds += time.perf_counter() - started
            masked = _expected_masked(lengths, preset)
            flops += step_flops(config, len(batch), width, masked, scored)
            sequences += len(batch)
            real += float(lengths.sum())
            padded += len(batch) * width
            steps += 1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else None
    return EpochSpeed(
        epochs=epochs, seconds_per_epoch=seconds / epochs,
        sequences_per_second=sequences / seconds, tokens_per_second=real / seconds,
        padded_tokens_per_second=padded / seconds, flops_per_step=flops / max(1, steps),
        achieved_flops=flops / seconds, peak_rss_mb=rss, peak_gpu_mb=gpu,
    )


def _expected_masked(lengths: np.ndarray, preset: Preset) -> int:
    """Masked positions of a batch, as the Cloze masking draws them (last-item-only samples
    counted at their expected share)."""
    cfg = preset.train
    counts = np.minimum(np.clip(np.floor(lengths * cfg.mask_prob + 0.5), 1,
                                cfg.max_predictions), lengths)
    p = cfg.last_item_prob
    return round(float(((1 - p) * counts + p).sum()))


class _WallClockTrainer(Trainer):
    """Records the wall clock (evaluation included) at every epoch's report."""

    started = 0.0
    reached: float | None = None
    target = 0.0

    def _report(self, record: dict[str, Any]) -> None:
        record["wall"] = time.perf_counter() - self.started
        metric = record.get("valid_NDCG@10")
        if self.reached is None and metric is not None and metric >= self.target:
            self.reached = record["wall"]
        super()._report(record)


def time_to_quality(data: Interactions, preset: Preset, target: float,
                    keep: Path | None = None,
                    options: PrepareOptions | None = None) -> dict[str, Any]:
    """Train with the preset (its budget and early stopping apply) and report when validation
    NDCG@10 under full ranking first reached ``target`` (the clock starts before the trainer
    is built, so warm starts count), then score the kept weights on the validation and test
    splits under both protocols (settings are compared by the validation numbers). With
    ``keep``, the kept weights are also saved there as a run directory, with the ``options``
    the data was prepared with (so the run reads that data again)."""
    started = time.perf_counter()
    trainer = _WallClockTrainer(data, preset.model_config(data.num_items), preset.train,
                                progress=False)
    trainer.target = target
    trainer.started = started
    result = trainer.fit()
    # The best weights on the test split: does reaching the target quickly cost quality?
    from bert4rec.errors import ConfigError
    from bert4rec.evaluation import evaluate

    splits: tuple[Literal["valid", "test"], ...] = ("valid", "test")
    protocols: tuple[Literal["full", "popularity"], ...] = ("full", "popularity")
    scores: dict[str, dict[str, Any]] = {split: {} for split in splits}
    for split, protocol in itertools.product(splits, protocols):
        try:
            scores[split][protocol] = evaluate(result.model, data, split=split,
                                               protocol=protocol, progress=False).metrics
        except ConfigError as exc:  # a catalogue too small for 100 sampled negatives
            scores[split][protocol] = {"skipped": str(exc)}
    if keep is not None:
        from bert4rec.api import save

        save(result.model, keep, data, options)
    return {
        "target": target,
        "reached_seconds": trainer.reached,
        "best_valid_NDCG@10": result.state.best_metric,
        "best_epoch": result.state.best_epoch,
        "train_seconds": result.state.elapsed,
        "valid": scores["valid"],
        "test": scores["test"],
        "epochs": result.state.epoch,
        "stopped": result.state.stopped,
        "history": result.state.history,
    }
