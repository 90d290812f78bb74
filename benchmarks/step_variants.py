"""Seconds per training step of BERT4Rec under execution variants that are not settings:
eager against ``torch.compile`` of the encoder, and the fused attention kernel against the
math backend. Steps of the variants are interleaved round after round on the same batches.

    python benchmarks/step_variants.py --out benchmarks/results/step-variants-cpu.json

The batch has ML-1m's shapes at the ``ml-1m-cpu`` preset (256 windows of 200 or 160 items,
3,416 items, 40 % of positions masked, a quarter of the rows with 50 padding slots); item ids
are random, which changes no cost. bf16 autocast as the preset trains.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bert4rec.benchmark import provenance_header
from bert4rec.model import BERT4Rec, BERT4RecConfig
from bert4rec.runs import write_json

ITEMS, BATCH = 3416, 256


def _batches(config: BERT4RecConfig, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        length = 200 if step % 2 == 0 else 160
        tokens = torch.randint(1, ITEMS + 1, (BATCH, length), generator=g)
        tokens[: BATCH // 4, :50] = 0
        masked = (torch.rand(BATCH, length, generator=g) < 0.4) & (tokens > 0)
        labels = torch.where(masked, tokens, 0)
        yield tokens.masked_fill(masked, config.mask_id), labels
        step += 1


def _variant(name: str, config: BERT4RecConfig) -> tuple[Callable[[], float], float]:
    torch.manual_seed(0)
    model = BERT4Rec(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if name == "compiled encoder":
        model.encode = torch.compile(model.encode, dynamic=True)  # type: ignore[method-assign]
    batches = _batches(config, seed=1)

    def context() -> AbstractContextManager[object]:
        return sdpa_kernel(SDPBackend.MATH) if name == "math attention" else nullcontext()

    def step() -> float:
        tokens, labels = next(batches)
        started = time.perf_counter()
        with context(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss(tokens, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    started = time.perf_counter()
    for _ in range(3):  # warm-up: for the compiled variant, both shapes and the dynamic graph
        step()
    return step, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BERT4RecConfig(num_items=ITEMS, max_len=200, hidden_size=64, num_layers=2,
                            num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    names = ["eager", "compiled encoder", "math attention"]
    variants = {name: _variant(name, config) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (step, _) in variants.items():
            seconds[name].append(step())
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "command": " ".join(["python", "benchmarks/step_variants.py", *[
            f"--{k}={v}" for k, v in (("rounds", args.rounds), ("threads", args.threads),
                                     ("out", args.out))]]),
        **provenance_header(),
        "warm_up_seconds": {name: warm for name, (_, warm) in variants.items()},
        "step_seconds": seconds, "median_step_seconds": medians,
        "relative_to_eager": {name: m / medians["eager"] for name, m in medians.items()},
    }
    write_json(args.out, result)
    for name, median in medians.items():
        print(f"{name}: median {median:.3f} s/step ({median / medians['eager']:.2f}x eager)")


if __name__ == "__main__":
    main()
