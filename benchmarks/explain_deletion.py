"""Deletion test of the explanation methods: remove the m items a method ranks highest from a
user's history and see whether the recommendation moves.

    python benchmarks/explain_deletion.py --run /tmp/explain-ml1m \
        --data /work/main/.devdata/ml-1m.txt --users 500 --greedy-users 100

For each sampled user: the real history (every interaction, the last ``max_len - 1`` of which
the model sees) and the model's top-1 recommendation (history excluded). Each method orders the
history positions; removing its top m (m = 1..10), the recommended item's new rank among the
items the user has not seen, its score drop, and whether it leaves the top-10 are recorded.

Methods: ``counterfactual`` (leave-one-out score drop), ``attention-rollout``,
``attention-last-layer`` (last layer, mean over heads, from [MASK]), ``gradient-x-input``,
``random`` (a seeded permutation per user); ``counterfactual-greedy`` (the greedy set after m
steps, each step re-scoring all single removals) on the first ``--greedy-users`` users, as it
costs m forward passes of the whole history.

Writes the JSON report, a PNG plot, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec import explain as ex
from bert4rec.benchmark import provenance_header
from bert4rec.data import load_interactions
from bert4rec.recommender import recommend
from bert4rec.runs import atomic_write, load_model, write_json

METHODS = ("counterfactual", "attention-rollout", "attention-last-layer", "gradient-x-input",
           "random")
GREEDY = "counterfactual-greedy"
SAME = "counterfactual, greedy's users"


def orders(model: Any, history: np.ndarray, item: int, k: int,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each method's history positions, most important first."""
    loo = ex.leave_one_out(model, history, item, k)
    maps = ex.attention_maps(model, history)
    gradient = ex.gradient_x_input(model, history, item)
    # Stable sorts on the negated values: ties keep the more recent item first.
    def by(values: np.ndarray) -> np.ndarray:
        return len(values) - 1 - np.argsort(-values[::-1], kind="stable")

    return {
        "counterfactual": by(loo.score_drops),
        "attention-rollout": by(maps.rollout),
        "attention-last-layer": by(maps.last_layer_mean),
        "gradient-x-input": by(gradient),
        "random": rng.permutation(len(history)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--greedy-users", type=int, default=100)
    parser.add_argument("--max-m", type=int, default=10)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/explain-deletion.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/explain-deletion.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    header = provenance_header()  # the code that runs, read before anything can change it
    model, info = load_model(args.run)
    data = load_interactions(args.data, info.prepare)
    info.check_data(data)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(data.num_users, size=min(args.users, data.num_users), replace=False)
    ms = list(range(1, args.max_m + 1))
    methods = [*METHODS, GREEDY]
    ranks: dict[str, list[list[int]]] = {m: [] for m in methods}  # per user, per m
    drops: dict[str, list[list[float]]] = {m: [] for m in methods}
    lengths: list[int] = []
    for done, user in enumerate(users, start=1):
        full = data.sequence(int(user)).astype(np.int64)
        history = ex.visible(model, full)
        lengths.append(len(history))
        ids, _ = recommend(model, [full], k=1)
        item = int(ids[0, 0])
        order = orders(model, history, item, args.k, rng)
        removals = [order[name][:m] for name in METHODS for m in ms if m <= len(history)]
        base, _ = ex.removal_ranks(model, history, item, [[]], args.k, exclude=full)
        scores, got = ex.removal_ranks(model, history, item, removals, args.k, exclude=full)
        at = 0
        for name in METHODS:
            count = sum(m <= len(history) for m in ms)
            ranks[name].append(got[at : at + count].tolist())
            drops[name].append((base[0] - scores[at : at + count]).tolist())
            at += count
        if done <= args.greedy_users:
            greedy = ex.greedy_counterfactual(model, history, item, args.k, args.max_m,
                                              stop_when_found=False, exclude=full)
            ranks[GREEDY].append([s.rank for s in greedy.steps])
            drops[GREEDY].append([float(base[0]) - s.score for s in greedy.steps])
        if done % 50 == 0:
            print(f"{done}/{len(users)} users, {time.perf_counter() - started:.0f}s", flush=True)

    # The greedy row covers the first --greedy-users users only; the leave-one-out ranking on
    # the same users sits beside it, so the two compare like with like.
    same = SAME
    ranks[same] = ranks["counterfactual"][: len(ranks[GREEDY])]
    drops[same] = drops["counterfactual"][: len(drops[GREEDY])]
    results: dict[str, Any] = {}
    for name in [*methods, same]:
        rows = {}
        for m in ms:
            r = [u[m - 1] for u in ranks[name] if len(u) >= m]
            d = [u[m - 1] for u in drops[name] if len(u) >= m]
            if not r:
                continue
            rows[str(m)] = {
                "users": len(r),
                "left_top_k": float(np.mean(np.asarray(r) > args.k)),
                "mean_rank": float(np.mean(r)),
                "median_rank": float(np.median(r)),
                "mean_score_drop": float(np.mean(d)),
            }
        results[name] = rows
    at3 = {name: results[name]["3"]["left_top_k"] for name in methods if "3" in results[name]}
    bar = {
        "counterfactual_beats_attention_and_gradient": all(
            at3["counterfactual"] > at3[n] for n in
            ("attention-rollout", "attention-last-layer", "gradient-x-input")),
        "counterfactual_at_least_twice_random": at3["counterfactual"] >= 2 * at3["random"],
    }
    report = {
        "benchmark": "explain-deletion",
        "command": "python benchmarks/explain_deletion.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        **header,
        "threads": args.threads,
        "run": {"path": str(args.run), "model": info.model, "config": info.config,
                "valid_full": info.metrics.get("valid_full"),
                "train_seconds": info.metrics.get("train_seconds"),
                "epochs": info.metrics.get("epochs")},
        "data": {"source": str(args.data), "users": data.num_users, "items": data.num_items},
        "settings": {"users": len(users), "greedy_users": min(args.greedy_users, len(users)),
                     "k": args.k, "max_m": args.max_m, "seed": args.seed},
        "history_length": {"mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
                           "min": int(min(lengths)), "max": int(max(lengths))},
        "results": results,
        "left_top_k_at_3": at3,
        "bar": bar,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, report)
    plot(report, args.plot)
    print(table(report))
    print(json.dumps(bar))


def table(report: dict[str, Any]) -> str:
    k = report["settings"]["k"]
    shown = [m for m in ("1", "2", "3", "5", "10") if m in report["results"]["counterfactual"]]
    lines = [
        f"| method | users | {' | '.join(f'left top-{k}, m={m}' for m in shown)} | "
        "mean rank, m=3 | mean score drop, m=3 |",
        "|---|---:|" + "---:|" * (len(shown) + 2),
    ]
    for name, rows in report["results"].items():
        if "3" not in rows:
            continue
        cells = [f"{rows[m]['left_top_k']:.1%}" if m in rows else "" for m in shown]
        lines.append(f"| {name} | {rows['1']['users']} | {' | '.join(cells)} | "
                     f"{rows['3']['mean_rank']:.1f} | {rows['3']['mean_score_drop']:.3f} |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    k = report["settings"]["k"]
    for name, rows in report["results"].items():
        ms = [int(m) for m in rows]
        style = "--" if name in ("random", GREEDY, SAME) else "-"
        label = name if rows["1"]["users"] == report["settings"]["users"] else (
            f"{name} ({rows['1']['users']} users)")
        left.plot(ms, [rows[str(m)]["left_top_k"] for m in ms], style, marker="o",
                  markersize=3, label=label)
        right.plot(ms, [rows[str(m)]["mean_score_drop"] for m in ms], style, marker="o",
                   markersize=3, label=label)
    left.set_xlabel("history items removed (m, top-m of each method)")
    left.set_ylabel(f"share of top-1 items leaving the top-{k}")
    right.set_xlabel("history items removed (m)")
    right.set_ylabel("mean drop of the item's score (logit)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    users = report["settings"]["users"]
    fig.suptitle(f"Deletion test on ML-1m, {users} users: removing what each method ranks "
                 "highest", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


if __name__ == "__main__":
    main()
