"""Time and peak memory of preparing a MovieLens-20M-sized log, from the file to `Interactions`.

    python benchmarks/prepare_large.py --runs 2 --remove

The files go to ``--dir`` (default ``/tmp/bert4rec-prepare-large``, about 1.3 GB; ``--remove``
deletes them afterwards). ``--src`` times another version of the package instead, e.g. a
checkout of an older commit's ``src`` folder, for before/after comparisons.

Writes a synthetic log the size of ML-20M (138,493 users, 26,744 items, 20,000,263 ratings)
three times, as ``ratings.csv`` (the ML-20M layout), ``ratings.dat`` (``::``-separated, the
ML-1M/10M layout) and ``ratings.parquet``, unless the files are there already. The log is
deterministic and skewed like the real one: item popularity is Zipf-like, user lengths are
log-normal with at least 20 ratings each, timestamps are not sorted and rows are shuffled.

Each measurement runs ``load_interactions(path, use_cache=False)`` in a fresh Python process
and reports its wall time, its CPU time (user + system; on a shared machine the wall time
depends on what else runs) and the process's peak resident memory (``ru_maxrss``), imports
included. Runs are interleaved over the formats, and the median per format is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bert4rec.benchmark import commit_info, machine_info
from bert4rec.runs import write_json

ROOT = Path(__file__).resolve().parent.parent
NUM_USERS = 138_493
NUM_ITEMS = 26_744
NUM_ROWS = 20_000_263
FILES = {"csv": "ratings.csv", "movielens-dat": "ratings.dat", "parquet": "ratings.parquet"}

# Runs in a fresh interpreter, so that the peak memory is this load's alone.
CHILD = """
import json, resource, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started = time.perf_counter()
from bert4rec.data import load_interactions
imported = time.perf_counter()
cpu_imported = cpu()
rss_imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = load_interactions(sys.argv[1], use_cache=False)
done, cpu_done = time.perf_counter(), cpu()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "seconds": done - imported, "cpu_seconds": cpu_done - cpu_imported,
    "import_seconds": imported - started,
    "peak_mb": peak / 1024, "import_peak_mb": rss_imported / 1024,
    "users": data.num_users, "items": data.num_items, "interactions": data.num_interactions,
    "fingerprint": data.fingerprint,
}))
"""


# ----------------------------------------------------------------------------------------------
# The synthetic log


def generate(seed: int = 0) -> dict[str, np.ndarray]:
    """Columns of the log in file order: userId, movieId, rating (halves), timestamp."""
    rng = np.random.default_rng(seed)
    # User lengths: log-normal with a floor of 20 (ML-20M keeps users with >= 20 ratings),
    # scaled so that they add up to exactly NUM_ROWS.
    extra = rng.lognormal(mean=4.0, sigma=1.2, size=NUM_USERS)
    lengths = 20 + np.floor(extra * (NUM_ROWS - 20 * NUM_USERS) / extra.sum()).astype(np.int64)
    short = NUM_ROWS - int(lengths.sum())
    lengths[rng.choice(NUM_USERS, size=short, replace=False)] += 1
    assert lengths.sum() == NUM_ROWS and lengths.min() >= 20
    users = np.repeat(np.arange(1, NUM_USERS + 1, dtype=np.int64), lengths)
    # Items: sparse ids like MovieLens movie ids, popularity ~ 1 / rank^1.1 in a shuffled order.
    item_ids = np.sort(rng.choice(np.arange(1, 131_263), size=NUM_ITEMS, replace=False))
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 1.1
    popularity = rng.permutation(popularity / popularity.sum())
    items = item_ids[rng.choice(NUM_ITEMS, size=NUM_ROWS, p=popularity)]
    ratings = rng.choice(np.arange(1, 11), size=NUM_ROWS,
                         p=[.01, .03, .02, .07, .05, .2, .15, .25, .08, .14]) / 2
    timestamps = rng.integers(789_652_009, 1_427_784_002, size=NUM_ROWS, dtype=np.int64)
    order = rng.permutation(NUM_ROWS)
    return {"userId": users[order], "movieId": items[order], "rating": ratings[order],
            "timestamp": timestamps}


def write_files(folder: Path, seed: int = 0) -> None:
    """Write the log in the three layouts, skipping files that exist."""
    paths = {fmt: folder / name for fmt, name in FILES.items()}
    if all(p.exists() for p in paths.values()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    columns = generate(seed)
    # Ratings as MovieLens writes them: '3.5', '4.0' (csv) and '3.5', '4' (dat).
    halves = np.round(columns["rating"] * 2).astype(np.int64) - 1
    csv_text = pa.array([f"{r / 2:.1f}" for r in range(1, 11)])
    dat_text = pa.array([f"{r / 2:g}" for r in range(1, 11)])
    if not paths["parquet"].exists():
        pq.write_table(pa.table(columns), paths["parquet"])
    plain = pacsv.WriteOptions(include_header=False, quoting_style="none")
    if not paths["csv"].exists():
        table = pa.table({"userId": columns["userId"], "movieId": columns["movieId"],
                          "rating": csv_text.take(halves), "timestamp": columns["timestamp"]})
        with open(paths["csv"], "wb") as f:
            f.write(b"userId,movieId,rating,timestamp\n")
            pacsv.write_csv(table, f, plain)
    if not paths["movielens-dat"].exists():
        with open(paths["movielens-dat"], "wb") as f:
            for start in range(0, NUM_ROWS, 2_000_000):
                part = slice(start, start + 2_000_000)
                line = pc.binary_join_element_wise(
                    pa.array(columns["userId"][part]).cast(pa.string()),
                    pa.array(columns["movieId"][part]).cast(pa.string()),
                    dat_text.take(halves[part]),
                    pa.array(columns["timestamp"][part]).cast(pa.string()),
                    "::",
                )
                pacsv.write_csv(pa.table({"line": line}), f, plain)


# ----------------------------------------------------------------------------------------------
# Measuring


def measure(path: Path, src: Path | None = None) -> dict[str, Any]:
    env = {**os.environ, "BERT4REC_CACHE": str(path.parent / "cache")}
    if src is not None:  # another version of the package, ahead of the installed one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                            text=True, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(f"loading {path} failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def machine() -> dict[str, Any]:
    import pandas as pd

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {**machine_info(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                               1),
            "load_average_at_start": load, "pandas": pd.__version__, "pyarrow": pa.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bert4rec-prepare-large"),
                        help="where the generated files go (kept for the next run)")
    parser.add_argument("--runs", type=int, default=2, help="measurements per format")
    parser.add_argument("--formats", nargs="+", choices=list(FILES), default=list(FILES))
    parser.add_argument("--label", default=None, help="a name for this code state in the JSON")
    parser.add_argument("--src", type=Path, default=None,
                        help="import bert4rec from this folder instead (to time another version)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prepare-large.json")
    parser.add_argument("--remove", action="store_true", help="delete the generated files after")
    args = parser.parse_args()
    started = datetime.now(UTC)
    info = machine()
    write_files(args.dir)
    sizes = {fmt: (args.dir / FILES[fmt]).stat().st_size for fmt in args.formats}
    runs: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in args.formats}
    for round_ in range(args.runs):  # interleaved: a busy spell slows every format alike
        for fmt in args.formats:
            run = measure(args.dir / FILES[fmt], args.src)
            runs[fmt].append(run)
            print(f"run {round_ + 1} {fmt}: {run['seconds']:.1f} s "
                  f"({run['cpu_seconds']:.1f} s CPU), {run['peak_mb']:.0f} MB", flush=True)
    rows = []
    for fmt in args.formats:
        first = runs[fmt][0]
        rows.append({
            "format": fmt, "file": FILES[fmt], "file_mb": round(sizes[fmt] / 2**20),
            "rows": NUM_ROWS, "users": first["users"], "items": first["items"],
            "interactions": first["interactions"], "fingerprint": first["fingerprint"],
            "seconds": round(statistics.median(r["seconds"] for r in runs[fmt]), 1),
            "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs[fmt]), 1),
            "peak_mb": round(statistics.median(r["peak_mb"] for r in runs[fmt])),
            "runs": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()
                      if k not in ("users", "items", "interactions", "fingerprint")}
                     for r in runs[fmt]],
        })
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "label": args.label,
        "src": str(args.src) if args.src else None,
        **commit_info(),
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "measured": "load_interactions(path, use_cache=False) in a fresh process; seconds "
                    "exclude the imports, peak_mb (ru_maxrss) includes them; median of runs",
        "rows": rows,
    }
    write_json(args.out, report)
    print(f"\n{'format':<14} {'file MB':>8} {'rows':>11} {'seconds':>8} {'CPU s':>6} "
          f"{'peak MB':>8}")
    for row in rows:
        print(f"{row['format']:<14} {row['file_mb']:>8} {row['rows']:>11,} "
              f"{row['seconds']:>8.1f} {row['cpu_seconds']:>6.1f} {row['peak_mb']:>8}")
    if len({row["fingerprint"] for row in rows}) > 1:
        print("warning: the formats gave different prepared data", file=sys.stderr)
    if args.remove:
        for name in FILES.values():
            (args.dir / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
