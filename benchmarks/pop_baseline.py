"""POP on the paper's ML-1m and Beauty files: a check of the evaluation harness.

POP is trained and evaluated through the library API on the leave-one-out test split under the
three protocols: popularity-sampled (the paper's), uniform-sampled (seed 0) and full ranking.
The paper's protocol samples its negatives at random, so it is also run with seeds 0..4 and
reported as median and min/max. Popularity-sampled metrics are given under the three tie rules,
since many items share a count and POP scores them alike. Two diagnostics rerun the paper's
protocol (seed 0) with POP counting more than the training part: train + validation, and the
whole log (test items included, a leak).

    python benchmarks/pop_baseline.py [--ml-1m PATH] [--beauty PATH] [--output PATH]

Writes ``benchmarks/results/pop.json`` (commit, machine, command, metrics) and prints Markdown
tables. The data paths default to ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec.baselines.pop import PopularityRecommender
from bert4rec.benchmark import provenance_header
from bert4rec.data import Interactions, PrepareOptions, load_interactions
from bert4rec.evaluation import (
    METRICS,
    TIE_RULES,
    EvaluationResult,
    evaluate,
    item_popularity,
    metrics_from_ranks,
)
from bert4rec.runs import write_json
from bert4rec.split import eval_cases, train_sequences

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEEDS = (0, 1, 2, 3, 4)

# Sun et al. 2019, Table 2: POP, 100 popularity-sampled negatives.
PAPER_POP = {
    "ml-1m": dict(zip(METRICS, (0.0141, 0.0715, 0.1358, 0.0416, 0.0621, 0.0627), strict=True)),
    "beauty": dict(zip(METRICS, (0.0077, 0.0392, 0.0762, 0.0230, 0.0349, 0.0437), strict=True)),
}
LABELS = {"ml-1m": "ML-1m", "beauty": "Beauty"}


def by_rule(result: EvaluationResult) -> dict[str, dict[str, float]]:
    """Mean metrics of one evaluation under every tie rule (the rank outcomes are shared)."""
    greater = result.per_user["greater"].to_numpy()
    ties = result.per_user["ties"].to_numpy()
    return {rule: {name: float(values.mean())
                   for name, values in metrics_from_ranks(greater, ties, rule).items()}
            for rule in TIE_RULES}


def tie_stats(result: EvaluationResult) -> dict[str, float]:
    """How often the target shares its score with other candidates."""
    ties = result.per_user["ties"].to_numpy()
    return {"cases_with_ties": float((ties > 0).mean()), "mean_ties": float(ties.mean())}


def summary(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {name: {"median": statistics.median(r[name] for r in runs),
                   "min": min(r[name] for r in runs), "max": max(r[name] for r in runs)}
            for name in METRICS}


def benchmark(name: str, path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    # The paper's files are already filtered: users >= 5 (as prepared), items as they are.
    data = load_interactions(path, PrepareOptions(format="pairs", min_user_count=5))
    model = PopularityRecommender.fit(train_sequences(data), data.num_items)
    print(f"{name}: {data.num_users} users, {data.num_items} items, "
          f"{data.num_interactions} interactions", file=sys.stderr, flush=True)

    def run(protocol: Any, seed: int = 0, recommender: Any = model) -> EvaluationResult:
        return evaluate(recommender, data, split="test", protocol=protocol, seed=seed,
                        progress=False)

    full = run("full")
    uniform = run("uniform")
    popularity = {seed: run("popularity", seed) for seed in SEEDS}
    pop_rules = {seed: by_rule(result) for seed, result in popularity.items()}
    out: dict[str, Any] = {
        "data": describe(data),
        "test_users": full.users,
        "full": {"tie_rules": by_rule(full), "ties": tie_stats(full)},
        "uniform": {"seed": 0, "tie_rules": by_rule(uniform), "ties": tie_stats(uniform)},
        "popularity": {
            "seeds": list(SEEDS),
            "per_seed": {str(seed): rules for seed, rules in pop_rules.items()},
            "summary": {rule: summary([pop_rules[s][rule] for s in SEEDS])
                        for rule in TIE_RULES},
            "ties": tie_stats(popularity[0]),
        },
        "paper_pop": PAPER_POP[name],
    }
    # Diagnostics: which interactions POP counts. The library's POP counts the training part
    # only. Counting the validation items too is still fair at test time (the model sees them
    # as history); counting the whole log leaks every test item into its own score.
    whole_log = item_popularity(data)
    train_valid = whole_log.copy()
    np.subtract.at(train_valid, eval_cases(data, "test").targets, 1)
    out["diagnostics"] = {}
    for label, counts in (("pop_counts_train_valid", train_valid),
                          ("pop_counts_whole_log", whole_log)):
        variant = run("popularity", 0, PopularityRecommender(torch.from_numpy(counts).float()))
        out["diagnostics"][label] = {"protocol": "popularity", "seed": 0,
                                     "tie_rules": by_rule(variant), "ties": tie_stats(variant)}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def describe(data: Interactions) -> dict[str, Any]:
    counts = np.bincount(train_sequences(data).items, minlength=data.num_items + 1)[1:]
    _, first, sizes = np.unique(counts, return_index=True, return_counts=True)
    return {**data.describe(),
            "distinct_train_counts": len(first),
            "items_sharing_their_train_count": int(sizes[sizes > 1].sum())}


def fmt(value: float) -> str:
    return f"{value:.4f}".lstrip("0") if value < 1 else f"{value:.4f}"


def relative(ours: float, paper: float) -> str:
    return f"{100.0 * (ours - paper) / paper:+.1f}%"


def table(name: str, res: dict[str, Any]) -> str:
    paper = PAPER_POP[name]
    pop = res["popularity"]
    median = {m: pop["summary"]["expected"][m]["median"] for m in METRICS}
    seed0 = pop["per_seed"]["0"]
    diag = res["diagnostics"]
    rows = [
        ("paper, POP (popularity-sampled)", [fmt(paper[m]) for m in METRICS]),
        ("ours, popularity-sampled, expected, seed 0", [fmt(seed0["expected"][m])
                                                        for m in METRICS]),
        ("ours, popularity-sampled, expected, median seeds 0-4", [fmt(median[m])
                                                                  for m in METRICS]),
        ("  relative difference of the median to the paper",
         [relative(median[m], paper[m]) for m in METRICS]),
        ("  min-max over seeds 0-4",
         [f"{fmt(pop['summary']['expected'][m]['min'])}-"
          f"{fmt(pop['summary']['expected'][m]['max'])}" for m in METRICS]),
        ("ours, popularity-sampled, pessimistic, seed 0", [fmt(seed0["pessimistic"][m])
                                                           for m in METRICS]),
        ("ours, popularity-sampled, optimistic, seed 0", [fmt(seed0["optimistic"][m])
                                                          for m in METRICS]),
        ("ours, uniform-sampled, expected, seed 0",
         [fmt(res["uniform"]["tie_rules"]["expected"][m]) for m in METRICS]),
        ("ours, full ranking, expected",
         [fmt(res["full"]["tie_rules"]["expected"][m]) for m in METRICS]),
        ("diagnostic: POP counting train + validation, popularity-sampled, seed 0",
         [fmt(diag["pop_counts_train_valid"]["tie_rules"]["expected"][m]) for m in METRICS]),
        ("diagnostic: POP counting the whole log (leaks test items), popularity-sampled, seed 0",
         [fmt(diag["pop_counts_whole_log"]["tie_rules"]["expected"][m]) for m in METRICS]),
    ]
    lines = [f"| {LABELS[name]} | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ml-1m", type=Path, default=DATA / "ml-1m" / "ml-1m.txt")
    parser.add_argument("--beauty", type=Path, default=DATA / "beauty" / "beauty.txt")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pop.json")
    args = parser.parse_args(argv)

    record: dict[str, Any] = {
        "benchmark": "pop_baseline",
        **provenance_header(),
        "command": shlex.join(["python", *sys.argv]),
        "protocol": {"split": "test", "negatives": 100, "metrics": list(METRICS),
                     "default_tie_rule": "expected"},
        "results": {},
    }
    for name, path in (("ml-1m", args.ml_1m), ("beauty", args.beauty)):
        record["results"][name] = benchmark(name, path)
        print(table(name, record["results"][name]) + "\n", flush=True)
    write_json(args.output, record)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
