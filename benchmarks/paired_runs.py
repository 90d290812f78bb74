"""The paired test between two finished runs of ``bert4rec benchmark quality``, made by two
different commands: the comparison the benchmark writes for runs of one command, for a pair it
cannot see at once (each model's run chosen on validation from several commands).

    python benchmarks/paired_runs.py \
        runs/quality-ml-1m-cpu7200-capacity2/runs/gru4rec+-seed0 \
        runs/quality-ml-1m-cpu7200-capacity/runs/bert4rec-seed0 \
        --out benchmarks/results/paired-ml-1m-cpu7200-capacity2.json

The difference is the first run minus the second, in NDCG@10 over the test users, under both
protocols, as the benchmark computes it (bootstrap interval, paired t and Wilcoxon). The two
runs must share the data and the sampled negatives (their count and seed); their per-user
files must cover the same users.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bert4rec.benchmark import (
    PROTOCOL_NAMES,
    RECORD,
    paired_comparison,
    provenance_header,
    stored_result,
)
from bert4rec.errors import ConfigError
from bert4rec.runs import write_json

SHARED_KEYS = ("data", "negatives", "negative_seed")


def load_run(run_dir: Path) -> dict[str, Any]:
    """A finished benchmark run's key and record."""
    try:
        saved = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
        key, record = saved["key"], saved["record"]
        for protocol in PROTOCOL_NAMES:  # found where the run is now, as --resume finds it
            record[protocol]["per_user"] = str(run_dir / f"test-{protocol}.parquet")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run_dir}: not a finished benchmark run ({exc})") from exc
    return {"dir": run_dir, "key": key, "record": record}


def paired(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Both runs described, and the first minus the second under each protocol."""
    for name in SHARED_KEYS:
        if first["key"].get(name) != second["key"].get(name):
            raise ConfigError(f"the two runs differ in {name!r}: "
                              f"{first['key'].get(name)} and {second['key'].get(name)}")
    out: dict[str, Any] = {"runs": [
        {"dir": str(run["dir"]), "model": run["key"].get("model"),
         "settings": run["key"].get("settings"), "commit": run["record"].get("commit"),
         "epochs": run["record"].get("epochs"), "best_epoch": run["record"].get("best_epoch"),
         "valid_NDCG@10": run["record"].get("valid_full", {}).get("NDCG@10")}
        for run in (first, second)]}
    out["difference"] = {  # the verdict is the first run's: better, worse or no clear difference
        protocol: paired_comparison(
            stored_result(first["record"], protocol, first["key"].get("negatives")),
            stored_result(second["record"], protocol, second["key"].get("negatives")))
        for protocol in PROTOCOL_NAMES}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path,
                        help="a run folder (runs/<output>/runs/<model>-seed<n>)")
    parser.add_argument("second", type=Path,
                        help="another run folder; the difference is first minus second")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    try:
        result = paired(load_run(args.first), load_run(args.second))
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in result["runs"]:
        print(f"{run['model']} {run['settings']}: epochs {run['epochs']} "
              f"(best {run['best_epoch']}), valid NDCG@10 {run['valid_NDCG@10']:.4f}")
    for protocol, c in result["difference"].items():
        print(f"{protocol}: {c['mean_a']:.4f} - {c['mean_b']:.4f} = {c['difference']:+.4f} "
              f"({c['ci_low']:+.4f} to {c['ci_high']:+.4f}; t p {c['t_pvalue']:.2g}, "
              f"Wilcoxon p {c['wilcoxon_pvalue']:.2g}): {c['verdict']}")
    if args.out:
        write_json(args.out, {**provenance_header(), "command": sys.argv, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
