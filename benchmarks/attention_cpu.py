"""PyTorch's fused CPU attention kernel against the written-out one, in bf16 training.

    python benchmarks/attention_cpu.py --data ../shared/data/ml-1m/ml-1m.txt \
        --preset ml-1m-cpu --sizes 64,128 --out benchmarks/results/attention-cpu.json

Two measurements, both interleaved round after round so that a noisy machine slows the
variants alike:

- the attention call alone, forward and backward, at B = 256, T = 200, two heads, in bf16
  and fp32, with left padding of random lengths;
- training steps of the preset at each model width on the batches of one real epoch (the
  first ``--steps`` of them, bucketed by length as training does), the fused kernel forced
  against the choice ``bert4rec.model.attention`` makes by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import bert4rec.model as model_module
from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.model import DropoutMasks, attention
from bert4rec.presets import load_preset
from bert4rec.runs import write_json
from bert4rec.training import Trainer


@contextmanager
def _attention_rule(rule: Callable[..., bool]) -> Iterator[None]:
    """Run with ``rule`` in place of the model's choice between the two attention paths."""
    chosen = model_module._written_out_pays
    model_module._written_out_pays = rule
    try:
        yield
    finally:
        model_module._written_out_pays = chosen


def _kernel_rows(rounds: int, head_dim: int) -> list[dict[str, Any]]:
    b, heads, t = 256, 2, 200
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, t + 1, (b,), generator=generator)
    attend = (torch.arange(t)[None, :] >= (t - lengths)[:, None])[:, None, None, :]
    masks = DropoutMasks(0)

    def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend)

    def written_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with _attention_rule(lambda *_: True):
            return attention(q, k, v, attend, 0.0, masks)

    variants: dict[str, Callable[..., torch.Tensor]] = {"fused": fused,
                                                        "written out": written_out}
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        inputs = [torch.randn(b, heads, t, head_dim, generator=generator).to(dtype)
                  .requires_grad_() for _ in range(3)]
        grad = torch.randn(b, heads, t, head_dim, generator=generator).to(dtype)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_ in range(rounds + 1):
            for name, call in variants.items():
                started = time.perf_counter()
                out = call(*inputs)
                forward = time.perf_counter() - started
                out.backward(grad)
                backward = time.perf_counter() - started - forward
                if round_:  # the first round warms up
                    times[name].append((forward, backward))
        for name, pairs in times.items():
            row = {"measure": "attention call", "head_dim": head_dim,
                   "dtype": str(dtype).removeprefix("torch."), "variant": name,
                   "forward_ms": round(1e3 * statistics.median(f for f, _ in pairs), 1),
                   "backward_ms": round(1e3 * statistics.median(b for _, b in pairs), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _step_rows(data_path: str, preset_name: str, size: int, steps: int, rounds: int,
               threads: int) -> list[dict[str, Any]]:
    data = load_interactions(data_path)
    preset = load_preset(preset_name, {"threads": threads, "hidden_size": size})
    trainer = Trainer(data, preset.model_config(data.num_items), preset.train, progress=False)
    batches = trainer.epoch_batches()[:steps]
    variants: dict[str, Callable[..., bool]] = {"fused": lambda *_: False,
                                                "automatic": model_module._written_out_pays}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, rule in variants.items():
            with _attention_rule(rule):
                started = time.perf_counter()
                for batch in batches:
                    trainer.train_step(batch)
            if round_:
                times[name].append((time.perf_counter() - started) / len(batches))
    base = statistics.median(times["fused"])
    rows = []
    for name, seconds in times.items():
        step = statistics.median(seconds)
        row = {"measure": "training step", "hidden_size": size,
               "precision": preset.train.precision, "variant": name,
               "seconds_per_step": round(step, 4), "speedup_vs_fused": round(base / step, 3),
               "all_seconds": [round(s, 4) for s in seconds]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="ml-1m-cpu")
    parser.add_argument("--sizes", default="64,128", help="model widths, comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="batches of the epoch per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        rows += _kernel_rows(args.rounds, size // 2)
    for size in sizes:
        rows += _step_rows(args.data, args.preset, size, args.steps, args.rounds, args.threads)
    if args.out:
        write_json(Path(args.out), {**provenance_header(), "data": args.data,
                                    "preset": args.preset, "threads": args.threads,
                                    "steps": args.steps, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
