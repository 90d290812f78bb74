"""Peak memory and time of training and serving BERT4Rec over a catalogue of a million items.

    python benchmarks/large_catalogue.py --items 1000000 --users 200000 --budget 180 \
        --out benchmarks/results/large-catalogue.json

A synthetic log in the style of :mod:`bert4rec.synthetic`, vectorised: ``--users`` users with
10-50 items each; every next item is the successor in a hidden cycle over all items with
probability ``--follow``, else a Zipf-popular jump (items may repeat within a user, unlike
``bert4rec.synthetic``). Two fresh processes are measured, each reporting its own peak resident
memory (``ru_maxrss``, imports included):

* ``train``: generate the log, train BERT4Rec (d = 64, N = 50) with the sampled softmax for
  ``--budget`` seconds (``Trainer.fit``: validation on ``--valid-users`` users under full
  ranking, best weights kept), save a run directory and the histories of ``--serve-users``
  users;
* ``serve``: load the run directory (no training code, no data) and ``recommend`` the top 10
  for those users, excluding their seen items.

The full softmax is not run at this size: its logits alone, for a batch of 256 windows with
10 masked positions each, would be 2,560 x 1,000,000 float32 = 10.2 GB, before their gradient.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from bert4rec_seeds import git_commit, machine  # the script beside this one


def peak_mb() -> float:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def synthetic_log(num_users: int, num_items: int, min_length: int, max_length: int,
                  follow: float, zipf: float, seed: int) -> Any:
    """Interactions with internal ids 1..num_items, built without pandas or Python loops over
    users: one vectorised step per position."""
    from bert4rec.data import Interactions, ItemVocab

    rng = np.random.default_rng(seed)
    cycle = rng.permutation(num_items)
    successor = np.empty(num_items, dtype=np.int64)
    successor[cycle] = np.roll(cycle, -1)
    popularity = 1.0 / np.arange(1, num_items + 1) ** zipf
    cdf = np.cumsum(popularity[rng.permutation(num_items)])
    cdf /= cdf[-1]

    def popular(size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), num_items - 1)

    lengths = rng.integers(min_length, max_length + 1, size=num_users)
    steps = np.zeros((num_users, max_length), dtype=np.int32)  # (U, L), 0-based item ids
    current = popular(num_users)
    for t in range(max_length):
        steps[:, t] = current
        jump = rng.random(num_users) >= follow
        current = np.where(jump, popular(num_users), successor[current])
    keep = np.arange(max_length)[None, :] < lengths[:, None]  # (U, L)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Interactions(
        user_ids=np.arange(num_users), vocab=ItemVocab(np.arange(1, num_items + 1)),
        offsets=offsets, items=(steps[keep] + 1).astype(np.int32),
        source=f"synthetic large catalogue (seed {seed})", synthetic=True,
    )


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bert4rec.data import PrepareOptions
    from bert4rec.model import BERT4RecConfig
    from bert4rec.runs import save_run
    from bert4rec.split import eval_cases
    from bert4rec.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = synthetic_log(args.users, args.items, 10, 50, args.follow, args.zipf, args.seed)
    generated = time.perf_counter() - started
    after_data = peak_mb()
    model_config = BERT4RecConfig(num_items=data.num_items, max_len=50, hidden_size=64,
                                  num_layers=2, num_heads=2, hidden_dropout=0.1,
                                  attention_dropout=0.0)
    config = TrainConfig(epochs=100, batch_size=256, lr=1e-3, warmup_steps=100,
                         mask_prob=0.2, max_predictions=10, eval_every=1, patience=0,
                         time_budget=args.budget, seed=args.seed, threads=args.threads,
                         loss="sampled", num_negatives=args.negatives,
                         sampling_alpha=args.alpha, valid_users=args.valid_users)
    trainer = Trainer(data, model_config, config, progress=False, log=print)
    fit_started = time.perf_counter()
    result = trainer.fit()
    fit_seconds = time.perf_counter() - fit_started
    run_dir = Path(args.workdir) / "run"
    save_run(run_dir, "bert4rec", result.model.config_dict(), result.model.tensors(), data,
             PrepareOptions(min_user_count=0), metrics={"valid": result.valid_metrics},
             seed=args.seed)
    cases = eval_cases(data, "test")
    users = np.random.default_rng(args.seed + 1).choice(len(cases), args.serve_users,
                                                        replace=False)
    histories = cases.histories(data.items, np.sort(users))
    np.savez(Path(args.workdir) / "histories.npz", *histories)
    return {
        "data": {"users": data.num_users, "items": data.num_items,
                 "interactions": data.num_interactions,
                 "items_seen_in_training": int(np.unique(trainer.train_items).size),
                 "generate_seconds": round(generated, 1)},
        "peak_mb_after_data": after_data,
        "fit_seconds": round(fit_seconds, 1),
        "train_seconds": round(result.state.elapsed, 1),
        "steps": result.state.step,
        "steps_per_epoch": trainer.steps_per_epoch,
        "stopped": result.state.stopped,
        "valid_users": args.valid_users,
        "valid_metrics": {k: round(v, 4) for k, v in result.valid_metrics.items()},
        "history": result.state.history,
        "peak_mb": peak_mb(),
    }


def serve(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bert4rec.recommender import ITEM_CHUNK, recommend
    from bert4rec.runs import load_model

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, _ = load_model(Path(args.workdir) / "run")
    loaded = time.perf_counter() - started
    with np.load(Path(args.workdir) / "histories.npz") as saved:
        histories = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    started = time.perf_counter()
    ids, _ = recommend(model, histories, k=10, exclude_seen=True)
    seconds = time.perf_counter() - started
    seen_overlap = sum(len(set(row.tolist()) & set(h.tolist()))
                       for row, h in zip(ids, histories, strict=True))
    return {"users": len(histories), "k": 10, "item_chunk": ITEM_CHUNK, "batch_size": 256,
            "load_seconds": round(loaded, 1), "recommend_seconds": round(seconds, 1),
            "seen_items_recommended": seen_overlap, "peak_mb": peak_mb()}


def child(stage: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage,
               "--workdir", workdir]
    for key in ("items", "users", "budget", "negatives", "alpha", "valid_users",
                "serve_users", "follow", "zipf", "threads", "seed"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {stage} process failed")
    lines = done.stdout.strip().splitlines()
    sys.stderr.writelines(line + "\n" for line in lines[:-1])  # its training log
    report: dict[str, Any] = json.loads(lines[-1])
    report["process_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds of training")
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--valid-users", type=int, default=1000)
    parser.add_argument("--serve-users", type=int, default=1000)
    parser.add_argument("--follow", type=float, default=0.5)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--stage", choices=("train", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        report = (train if args.stage == "train" else serve)(args)
        print(json.dumps(report, default=float), flush=True)
        return
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bert4rec-large-") as workdir:
        trained = child("train", args, workdir)
        served = child("serve", args, workdir)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **git_commit(),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "settings": {"items": args.items, "users": args.users, "budget": args.budget,
                     "loss": "sampled", "negatives": args.negatives, "alpha": args.alpha,
                     "follow": args.follow, "zipf": args.zipf, "seed": args.seed},
        "train": trained,
        "serve": served,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({"train_peak_mb": trained["peak_mb"], "serve_peak_mb": served["peak_mb"],
                      "train_seconds": trained["train_seconds"], "steps": trained["steps"],
                      "recommend_seconds": served["recommend_seconds"],
                      "valid": trained["valid_metrics"]}))


if __name__ == "__main__":
    main()
