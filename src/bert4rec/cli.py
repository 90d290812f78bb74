"""The ``bert4rec`` command line. Output meant for scripts goes to stdout (``--json``); progress
and messages go to stderr. Exit status: 0 success, 2 bad input (with a message), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert4rec import __version__, datasets, distributed
from bert4rec.baselines import TRAINABLE
from bert4rec.benchmark import MODELS as BENCHMARK_MODELS
from bert4rec.checkpoints import CHECKPOINT_DIR, remove_checkpoint, start_over
from bert4rec.data import FORMATS, Interactions, PrepareOptions, load_interactions
from bert4rec.errors import Bert4RecError, DataError, RunError
from bert4rec.evaluation import PROTOCOLS, TIE_RULES, evaluate
from bert4rec.explain import Explanation, explain
from bert4rec.recommender import recommend
from bert4rec.runs import check_output, check_output_file, has_checkpoint, load_model
from bert4rec.titles import find_titles

MODELS = ("pop", "bert4rec", *TRAINABLE)
VALID_USERS_HELP = ("validate every {what} on N users drawn once (default: all); on a large "
                    "data set a validation pass over every user can cost several epochs")


def _add_data_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Options that decide how a log is read and filtered. For ``evaluate`` they default to the
    run's own (``defaults=False``)."""
    group = parser.add_argument_group("data")
    group.add_argument("--format", choices=FORMATS, default="auto" if defaults else None,
                       help="input format (default: detected from the file)")
    group.add_argument("--min-user-count", type=int, default=5 if defaults else None,
                       help="drop users with fewer interactions (default 5)")
    group.add_argument("--min-item-count", type=int, default=0 if defaults else None,
                       help="drop items with fewer interactions (default 0: keep all; a named "
                       "data set such as ml-1m uses its own, 5)")
    group.add_argument("--min-rating", type=float, default=None,
                       help="keep only interactions rated at least this (default: keep all)")
    group.add_argument("--user-col", default=None, help="user column of a CSV/Parquet file")
    group.add_argument("--item-col", default=None, help="item column of a CSV/Parquet file")
    group.add_argument("--time-col", default=None, help="timestamp column of a CSV/Parquet file")


def _prepare_options(
    args: argparse.Namespace, base: PrepareOptions | None = None
) -> PrepareOptions:
    if base is None:  # a named data set (--data ml-1m) brings the paper's filters
        named = datasets.lookup(getattr(args, "data", None) or "")
        base = named.options if named is not None else None
    values: dict[str, Any] = (base or PrepareOptions()).to_dict()
    for name in ("format", "min_user_count", "min_item_count", "min_rating", "user_col",
                 "item_col", "time_col"):
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return PrepareOptions(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert4rec", description="BERT4Rec sequential recommendation: train, evaluate, "
        "recommend.",
    )
    parser.add_argument("--version", action="version", version=f"bert4rec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a log and save a run directory")
    p.add_argument("--data", required=True, help="interaction log (see --format), or a data "
                   f"set name downloaded on first use: {', '.join(datasets.NAMES)}")
    p.add_argument("--model", choices=MODELS, default="pop")
    p.add_argument("--output", required=True, type=Path, help="run directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --output, or start an unfinished one over")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the initialisation, masking and batches (default: the "
                   "preset's or the model's, 0)")
    group = p.add_argument_group("training (every model but pop)")
    group.add_argument("--preset", default=None,
                       help="bert4rec's model and training settings: a shipped preset "
                       "(bert4rec presets) or a .toml file (default: default)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set hidden_size=128 (repeatable); "
                       "baselines start from their papers' settings")
    group.add_argument("--epochs", type=int, default=None)
    group.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="stop after this many seconds of training steps (validation "
                       "not counted), keeping the best weights")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    group.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                       help="bert4rec only")
    group.add_argument("--threads", type=int, default=None, help="torch threads")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_options(p, defaults=False)  # unset options come from a named data set or defaults
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("evaluate", help="evaluate a run on the leave-one-out split of its data")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, help="the log the run was trained on")
    p.add_argument("--protocol", choices=PROTOCOLS, default="full",
                   help="full ranking (default), or 100 negatives sampled by popularity (the "
                   "paper's) or uniformly")
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--negatives", type=int, default=100, help="negatives per user (sampled)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the negative sampling")
    p.add_argument("--tie-rule", choices=TIE_RULES, default="expected")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where a neural model scores (default: a GPU when there is one)")
    p.add_argument("--per-user", type=Path, default=None,
                   help="write per-user metrics here (.parquet or .csv) for paired comparisons")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k items for a history or a known user, or for "
                       "every user of a log into a file (--output)")
    p.add_argument("--run", required=True, type=Path)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--history", help="item ids, oldest first, separated by spaces or commas")
    who.add_argument("--user", help="a known user's id (needs --data)")
    who.add_argument("--output", type=Path, default=None,
                     help="score every user of --data (or those of --users) and write user, "
                     "rank, item, score rows here (.parquet or .csv)")
    p.add_argument("--data", help="the training log, to look up --user or to score (--output)")
    p.add_argument("--users", type=Path, default=None,
                   help="with --output: only these users (a file, one id a line)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="allow items of the history")
    p.add_argument("--workers", type=int, default=None,
                   help="with --output: chunks of users scored at once, each on one torch "
                   "thread (default: one per core)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="with --output: bf16 autocast is faster on CPUs with AMX/AVX-512 BF16; "
                   "near-ties may swap (default fp32)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("explain", help="why a run recommends an item after a history")
    p.add_argument("--run", required=True, type=Path, help="a bert4rec run directory")
    p.add_argument("--history", required=True,
                   help="item ids, oldest first, separated by spaces or commas")
    p.add_argument("--item", default=None,
                   help="the recommended item to explain (default: the top-1 recommendation)")
    p.add_argument("-k", type=int, default=10, help="the top-k the counterfactuals refer to")
    p.add_argument("--max-steps", type=int, default=10,
                   help="most items the greedy counterfactual set removes (default 10)")
    p.add_argument("--rows", type=int, default=20,
                   help="history items shown in the text table, largest effect first")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's; where other jobs keep the cores busy, "
                   "1 is often faster)")
    p.add_argument("--plot-dir", type=Path, default=None,
                   help="write attribution.png and attention.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="serve a run over HTTP (see /docs once running)")
    p.add_argument("--run", required=True, type=Path, help="run directory to serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", default="events.sqlite3",
                   help="event store: an SQLite file (default: events.sqlite3) or a "
                   "postgresql://USER:PASSWORD@HOST/DB URL")
    p.add_argument("--import-history", metavar="DATA", default=None,
                   help="first import the users of this log (the run's training data) into "
                   "the store; users already there are left alone")
    p.add_argument("--onnx", type=Path, default=None,
                   help="score with this ONNX export of the run (bert4rec export)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for scoring (default 1: the event loop has the other core; "
                   "more only pays on larger machines)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 autocast, faster for batches on CPUs with AMX/AVX-512 "
                   "BF16; near-ties may swap (default fp32; PyTorch only)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most requests scored in one forward pass (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="wait this long for more requests before scoring a batch (default 0: "
                   "score what is queued; requests arriving meanwhile form the next batch)")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("store", help="the service's event store: import a log, export events")
    store = p.add_subparsers(dest="store", required=True, metavar="ACTION")
    p = store.add_parser("import", help="append the users of a log to the store (users already "
                         "there are skipped)")
    p.add_argument("--db", default="events.sqlite3", help="SQLite file or postgresql:// URL")
    p.add_argument("--data", required=True, help="interaction log")
    p.add_argument("--run", type=Path, default=None,
                   help="read the log with this run's preparation options and check it is the "
                   "run's training data")
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_store_import)
    p = store.add_parser("export", help="write every event as 'user item' lines in arrival "
                         "order, the pairs format 'bert4rec train' reads")
    p.add_argument("--db", default="events.sqlite3", help="SQLite file or postgresql:// URL")
    p.add_argument("--output", required=True, type=Path)
    p.set_defaults(func=cmd_store_export)

    p = sub.add_parser("export", help="export a BERT4Rec run's model to ONNX")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--output", required=True, type=Path, help="the .onnx file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("synthetic", help="write a synthetic log with a planted sequential pattern")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=cmd_synthetic)

    p = sub.add_parser("prepare", help="read, prepare and cache a log; print its statistics")
    p.add_argument("--data", required=True)
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("download", help="download a public data set into the cache; print the "
                       "path of its interaction log")
    p.add_argument("name", choices=datasets.NAMES)
    p.add_argument("--url", default=None, help="download from this mirror instead")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("benchmark", help="measure models against each other")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    p = bench.add_parser("quality", help="train and evaluate several models on one data set and "
                         "write the paper-style table (OUTPUT/quality.md, .json, .png)")
    p.add_argument("--data", required=True, help="interaction log, or a data set name")
    p.add_argument("--models", default=",".join(BENCHMARK_MODELS),
                   help=f"comma-separated (default: all: {','.join(BENCHMARK_MODELS)})")
    p.add_argument("--preset", default="default", help="bert4rec's preset (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                   help="override one setting of one model, e.g. --set bert4rec.hidden_size=128 "
                   "(repeatable)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1, 2],
                   help="training seeds (default: 0 1 2); intervals and paired comparisons use "
                   "the first")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="seconds of training steps per run (validation not counted), the "
                   "same for every model")
    p.add_argument("--epochs", type=int, default=None, help="per training run (default: each "
                   "model's own)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--negatives", type=int, default=100,
                   help="popularity-sampled negatives per user (default: 100, the paper's)")
    p.add_argument("--valid-users", type=int, default=None, metavar="N",
                   help=VALID_USERS_HELP.format(what="model"))
    p.add_argument("--output", required=True, type=Path,
                   help="folder for quality.json, quality.md, quality.png and runs/MODEL-seedS "
                   "(each rewritten)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or per-epoch lines; one line per model and seed stays")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at a time, each in its own process (default 1); they "
                   "share the machine, so each run's time budget buys less")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs already finished in OUTPUT with the same settings, go "
                   "on with unfinished ones from their last epoch's checkpoint, train the rest")
    p.add_argument("--tuned", action="append", default=[], type=Path, metavar="FILE",
                   help="train a model with the best settings of its search (a bert4rec tune "
                   "result); the table shows every model's tuning budget (repeatable)")
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_benchmark_quality)

    p = sub.add_parser("tune", help="random search of one model's settings on the validation "
                       "split, each trial under the same budget; the test split is never read")
    p.add_argument("--model", required=True, choices=[m for m in BENCHMARK_MODELS if m != "pop"])
    p.add_argument("--data", required=True, help="interaction log, or a data set name")
    p.add_argument("--output", required=True, type=Path,
                   help="result file (JSON), rewritten after every trial; the same command "
                   "resumes an interrupted search from it")
    p.add_argument("--trials", type=int, default=8, help="trials, the first being the model's "
                   "own settings (default 8)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="training seconds per trial")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial at most")
    p.add_argument("--preset", default="default", help="bert4rec's preset (default: default)")
    p.add_argument("--space", type=Path, default=None,
                   help="search spaces (TOML; default: the shipped search_spaces.toml)")
    p.add_argument("--seed", type=_seed, default=0, help="seeds the draws and every trial")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--valid-users", type=int, default=None, metavar="N",
                   help=VALID_USERS_HELP.format(what="trial"))
    p.add_argument("--quiet", action="store_true")
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_tune)

    p = bench.add_parser("speed", help="training throughput, FLOP/s against this machine's "
                         "matmul peak, memory, and optionally time to a validation target")
    p.add_argument("--data", required=True, help="interaction log, or a data set name")
    p.add_argument("--preset", default="ml-1m-cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=1, help="epochs to time (default 1)")
    p.add_argument("--target", type=float, default=None,
                   help="also train with the preset until validation NDCG@10 (full ranking) "
                   "reaches this, and report the wall clock")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    p.add_argument("--output", type=Path, default=None, help="write the report here (JSON)")
    p.add_argument("--keep", type=Path, default=None, metavar="RUN_DIR",
                   help="with --target: also save the trained model here as a run directory")
    _add_data_options(p, defaults=False)
    p.set_defaults(func=cmd_benchmark_speed)
    return parser


def _say(message: str) -> None:
    if distributed.is_main():  # under torchrun, one process speaks for all
        print(message, file=sys.stderr, flush=True)


def _data_path(data: str) -> str | Path:
    """``data`` itself, or the downloaded log of the data set it names (when no such path
    exists)."""
    named = datasets.lookup(data)
    return datasets.fetch(named.name) if named is not None else data


def _load(args: argparse.Namespace, options: PrepareOptions) -> Interactions:
    data = load_interactions(_data_path(args.data), options)
    tag = " (SYNTHETIC data)" if data.synthetic else ""
    _say(f"data: {data.source}{tag}: {data.num_users} users, {data.num_items} items, "
         f"{data.num_interactions} interactions")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    check_output(args.output, args.overwrite, resumable=True)
    if args.model == "bert4rec":
        from bert4rec.presets import load_preset

        device = load_preset(args.preset or "default", _overrides(args, True)).train.device
        with distributed.session(device) as group:  # several processes under torchrun
            options = _prepare_options(args)
            # Rank 0 downloads and prepares the data first; the others then read its cache.
            # A failure on any rank stops them all, with its message.
            with distributed.main_first(group) as main:
                if main:
                    data = _load(args, options)
            with distributed.together(group):
                if not distributed.is_main():
                    data = _load(args, options)
                titles = find_titles(data.source, data.vocab)
            return _train_bert4rec(args, data, options, titles)
    if distributed.launched():
        raise DataError(f"torchrun trains bert4rec only; train {args.model} in one process "
                        "(without torchrun)")
    if args.model not in TRAINABLE:
        given = [flag for flag, value in (("--set", args.set or None), ("--epochs", args.epochs),
                                          ("--time-budget", args.time_budget),
                                          ("--device", args.device),
                                          ("--threads", args.threads))
                 if value is not None]
        if given:
            raise DataError(f"{args.model} counts items and has no training settings; drop "
                            f"{', '.join(given)}")
    options = _prepare_options(args)
    data = _load(args, options)
    titles = find_titles(data.source, data.vocab)
    if args.preset is not None or args.precision is not None:
        raise DataError("--preset and --precision are bert4rec's; set a baseline's settings "
                        "with --set key=value")
    if args.model in TRAINABLE:
        return _train_baseline(args, data, options, titles)
    from bert4rec.baselines import fit_pop, save_baseline

    if has_checkpoint(args.output):  # another model's unfinished run
        if not args.overwrite:
            raise RunError(f"{args.output} holds an unfinished run; pass --overwrite to "
                           "replace it or choose another --output")
        remove_checkpoint(args.output)
    model, result = fit_pop(data, progress=not args.quiet)
    save_baseline(args.output, model, result, data, options, titles=titles)
    valid = result.valid_metrics
    _say(f"trained {model.name} in {result.seconds:.1f}s; validation (full ranking) "
         f"NDCG@10={valid['NDCG@10']:.4f} HR@10={valid['HR@10']:.4f}")
    _say(f"saved {args.output}")
    return 0


def _overrides(args: argparse.Namespace, bert4rec: bool = False) -> dict[str, Any]:
    from bert4rec.presets import parse_assignment

    overrides = dict(parse_assignment(text) for text in args.set)
    for name in ("epochs", "time_budget", "device", "precision", "threads", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if bert4rec and args.epochs is not None and "max_steps" not in overrides:
        overrides["max_steps"] = None  # a preset's step count would override --epochs
    return overrides


def _train_baseline(
    args: argparse.Namespace, data: Interactions, options: PrepareOptions, titles: dict[Any, str]
) -> int:
    from bert4rec.baselines import baseline_config, save_baseline, train_baseline

    baseline_config(args.model, data.num_items, _overrides(args))  # checked before any removal
    if args.overwrite:
        start_over(args.output)
    log = None if args.quiet else _say
    try:
        model, result, fit = train_baseline(args.model, data, _overrides(args),
                                            progress=not args.quiet, log=log,
                                            run_dir=args.output)
    except KeyboardInterrupt:
        _interrupted(args)
        raise
    save_baseline(args.output, model, result, data, options, seed=fit.seed, fit=fit,
                  titles=titles)
    best = result.valid_metrics
    _say(f"trained {model.name}: {result.epochs} epochs in {result.seconds:.0f}s "
         f"({result.stopped}); best validation (full ranking) "
         f"NDCG@10={best.get('NDCG@10', float('nan')):.4f} at epoch {result.best_epoch}")
    _say(f"saved {args.output}")
    return 0


def _interrupted(args: argparse.Namespace) -> None:
    if not has_checkpoint(args.output):
        _say("interrupted before the first epoch ended; nothing to resume")
        return
    again = " without --overwrite (which starts over)" if args.overwrite else ""
    _say(f"interrupted; the last finished epoch is saved in {args.output / CHECKPOINT_DIR}. "
         f"Run the same command again{again} to resume.")


def _train_bert4rec(
    args: argparse.Namespace, data: Interactions, options: PrepareOptions, titles: dict[Any, str]
) -> int:
    from bert4rec.api import train

    overrides = _overrides(args, bert4rec=True)
    preset = args.preset or "default"
    _say(f"training bert4rec, preset {preset}")
    try:
        # Every setting is checked before --overwrite removes anything.
        result = train(data, preset, args.output, options=options, titles=titles,
                       progress=not args.quiet, log=_say, overwrite=args.overwrite,
                       **overrides)
    except KeyboardInterrupt:
        _interrupted(args)
        raise
    state, best = result.state, result.valid_metrics
    _say(f"trained bert4rec: {state.epoch} epochs in {state.elapsed:.0f}s ({state.stopped}); "
         f"best validation (full ranking) NDCG@10={best.get('NDCG@10', float('nan')):.4f} "
         f"HR@10={best.get('HR@10', float('nan')):.4f} at epoch {state.best_epoch}")
    _say(f"saved {args.output}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from bert4rec.presets import load_preset, preset_names

    for name in preset_names():
        print(f"{name:<14} {load_preset(name).description}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.per_user is not None:
        check_output_file(args.per_user)
        run = Path(args.run).resolve()
        if run in Path(args.per_user).resolve().parents:
            raise DataError(f"--per-user {args.per_user} is inside the run {args.run}; write it "
                            "elsewhere")
        if args.data and _same_file(args.per_user, args.data):
            raise DataError(f"--per-user {args.per_user} is the data file; name another file")
    model, info = load_model(args.run)
    if isinstance(model, torch.nn.Module):
        from bert4rec.device import resolve_device

        model.to(resolve_device(args.device))
    data = _load(args, _prepare_options(args, info.prepare))
    info.check_data(data)
    result = evaluate(model, data, split=args.split, protocol=args.protocol,
                      num_negatives=args.negatives, seed=args.seed, tie_rule=args.tie_rule)
    if not result.users:
        raise DataError(f"no user of {data.source or 'the data'} has the three or more items a "
                        "leave-one-out split needs (train, validation, test), so there is "
                        "nothing to evaluate; use longer histories")
    result.extra.update({"run": str(args.run), "model": info.model, "data": data.source,
                         "synthetic": data.synthetic})
    if args.per_user is not None:
        _write_table(result.per_user, args.per_user)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        tag = " [SYNTHETIC data]" if data.synthetic else ""
        print(f"{info.model} on {data.source}{tag}: {args.protocol} protocol, {args.split} split, "
              f"{result.users} users")
        for name, value in result.metrics.items():
            print(f"  {name:<8} {value:.4f}")
    return 0


def _write_table(frame: Any, path: Path) -> None:
    from bert4rec.runs import atomic_write

    if path.suffix.lower() == ".csv":
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _parse_history(text: str) -> list[str]:
    return [token for token in text.replace(",", " ").split() if token]


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise DataError("-k must be at least 1")
    if args.output is not None:
        return _recommend_batch(args)
    if args.users is not None:
        raise DataError("--users goes with --output (batch scoring)")
    if args.history is None and args.user is None:
        raise DataError("give --history, --user (with --data) or --output (with --data)")
    model, info = load_model(args.run)
    skipped: list[Any] = []
    if args.user is not None:
        if not args.data:
            raise DataError("--user needs --data (the training log) to find the user's history")
        data = load_interactions(_data_path(args.data), info.prepare)
        info.check_data(data)
        users = data.user_index()
        key: Any = args.user
        if data.user_ids.dtype.kind in "iu":
            with contextlib.suppress(ValueError):
                key = int(args.user)
        if key not in users:
            raise DataError(f"user {args.user!r} is not in {args.data}")
        history = data.sequence(users[key]).astype(np.int64)
        raw = info.vocab.decode(history)
    else:
        raw = _parse_history(args.history)
        history, skipped = info.vocab.encode(raw)
    note = ""
    from bert4rec.baselines.pop import PopularityRecommender

    popular = PopularityRecommender.of_run(info)
    if not len(history) and popular is not None:
        model = popular
        note = "no known item in the history: these are the most popular items in training"
    ids, scores = recommend(model, [history], k=args.k, exclude_seen=not args.include_seen)
    valid = ids[0] > 0
    items = info.vocab.decode(ids[0][valid])
    rows = [{"rank": r + 1, "item": item, "title": info.titles.get(item), "score": float(s)}
            for r, (item, s) in enumerate(zip(items, scores[0][valid], strict=True))]
    if args.json:
        print(json.dumps({"items": rows, "history_used": len(history), "skipped": skipped,
                          "note": note}))
    else:
        if skipped:
            _say(f"skipped {len(skipped)} unknown item(s): {' '.join(map(str, skipped))}")
        if note:
            _say(note)
        for row in rows:
            title = f"  {row['title']}" if row["title"] else ""
            print(f"{row['rank']:>3}. {row['item']}{title}  ({row['score']:.4f})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    if args.max_steps < 1:
        raise DataError("--max-steps must be at least 1")
    if args.rows < 0:
        raise DataError("--rows must be at least 0")
    if args.threads is not None:
        if args.threads < 1:
            raise DataError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    model, info = load_model(args.run)
    result = explain(model, info, _parse_history(args.history), item=args.item, k=args.k,
                     max_steps=args.max_steps, precision=args.precision)
    plots: list[str] = []
    if args.plot_dir is not None:
        from bert4rec.explain_plots import plot_attention, plot_attribution

        plots = [str(plot_attribution(result, args.plot_dir / "attribution.png")),
                 str(plot_attention(result, args.plot_dir / "attention.png"))]
    if args.json:
        print(json.dumps({**result.to_dict(), "plots": plots}))
        return 0
    if result.skipped:
        _say(f"skipped {len(result.skipped)} unknown item(s): "
             f"{' '.join(map(str, result.skipped))}")
    if result.truncated:
        _say(f"the model sees the last {len(result.history)} items; "
             f"{result.truncated} older one(s) left out")
    if "rank" in result.notes:
        _say(result.notes["rank"])
    print(_explanation_text(result, args.rows), flush=True)
    for path in plots:
        _say(f"wrote {path}")
    return 0


def _named(item: Any, title: str | None) -> str:
    return f"{item} ({title})" if title else str(item)


def _explanation_text(result: Explanation, rows: int) -> str:
    k = result.k
    lines = [f"Why {_named(result.item, result.title)}: rank {result.rank}, score "
             f"{result.score:.4f}, after {len(result.history)} history items", "",
             "Counterfactual (exact): the item's score and rank without each history item, "
             "largest drop first", ""]
    lines.append(f"{'pos':>4} {'item':<12} {'score drop':>10} {'rank w/o':>8} "
                 f"{'top-' + str(k) + '?':>7} {'grad*in':>8} {'rollout':>8}  title")
    ordered = sorted(result.history, key=lambda r: -r.score_drop)
    for r in ordered[: max(rows, 0)]:
        out = "leaves" if r.leaves_top_k else "stays"
        lines.append(f"{r.position:>4} {r.item!s:<12} {r.score_drop:>10.4f} "
                     f"{r.rank_without:>8} {out:>7} {r.gradient_x_input:>8.4f} "
                     f"{r.attention_rollout:>8.4f}  {r.title or ''}")
    if len(ordered) > rows:
        lines.append(f"     ... {len(ordered) - rows} more (--rows, --json)")
    cf = result.counterfactual_set
    lines.append("")
    if cf.found and not cf.items:
        lines.append(f"Counterfactual set (greedy): the item is already outside the top-{k}")
    else:
        if cf.found:
            lines.append(f"Counterfactual set (greedy, not proven smallest): removing these "
                         f"{len(cf.items)} item(s) together drops it out of the top-{k}:")
        else:
            lines.append(f"Counterfactual set (greedy): removing {len(cf.items)} item(s) did not "
                         f"drop it out of the top-{k}:")
        for step, (item, title, rank) in enumerate(
                zip(cf.items, cf.titles, cf.ranks, strict=True), start=1):
            lines.append(f"  step {step:>2}: remove {item!s:<10} -> rank {rank:>5}  {title or ''}")
    lines += ["", "Columns grad*in (gradient x input) and rollout (attention rollout) are weaker "
              "evidence:", "attention shows where the model looked, not what changed its answer."]
    return "\n".join(lines)

def _recommend_batch(args: argparse.Namespace) -> int:
    import time

    from bert4rec.batch import empty_histories, read_users, score_users, unknown_items

    if not args.data:
        raise DataError("--output needs --data: the log whose users to score")
    check_output_file(args.output)
    for given in (args.data, args.users):
        if given is not None and _same_file(args.output, given):
            raise DataError(f"--output {args.output} is an input of this command; name another "
                            "file")
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if workers < 1:
        raise DataError("--workers must be at least 1")
    if workers > 1:
        torch.set_num_threads(1)  # parallel over chunks, not inside each matrix product
    users = read_users(args.users) if args.users is not None else None
    model, info = load_model(args.run)
    # Read as the run's data was, but every user is scored, however few their events.
    options = dataclasses.replace(info.prepare, min_user_count=0, min_item_count=0)
    data = load_interactions(_data_path(args.data), options)
    to_run = info.vocab.translation(data.vocab)
    items, events = unknown_items(to_run, data)
    if items:
        _say(f"{items} of the {data.num_items} items in {args.data} ({events} events) are not "
             f"in the catalogue of {args.run}: left out of the histories")
    empty = empty_histories(to_run, data, users)
    if empty and info.popularity is not None:
        _say(f"{empty} user(s) have no item {args.run} knows: they get its most popular items "
             "(scored by their training count)")
    started = time.perf_counter()
    rows = score_users(model, info, data, args.output, users=users, k=args.k,
                       exclude_seen=not args.include_seen, workers=workers,
                       bf16=args.precision == "bf16", to_run=to_run)
    count = len(users) if users is not None else data.num_users
    _say(f"wrote {args.output}: {rows} rows for {count} users in "
         f"{time.perf_counter() - started:.1f}s")
    return 0


def _seed(text: str) -> int:
    """A seed flag's value: a whole number >= 0 (numpy's generators take no other)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, not {text!r}")
    return value


def _same_file(output: Path, other: str | Path) -> bool:
    """Whether writing ``output`` would replace ``other`` (the same file, by any path)."""
    try:
        return output.exists() and Path(other).exists() and os.path.samefile(output, other)
    except OSError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import gc

    import uvicorn

    from bert4rec.service import create_app
    from bert4rec.service.store import redact

    if args.threads < 1 or args.max_batch < 1 or args.max_wait_ms < 0:
        raise DataError("--threads and --max-batch must be at least 1, --max-wait-ms >= 0")
    if args.onnx is not None and args.precision == "bf16":
        raise DataError("--precision bf16 is for PyTorch; an ONNX export scores in fp32")
    torch.set_num_threads(args.threads)
    if args.import_history is not None:
        _import_history(args.db, args.import_history, args.run, None)
    app = create_app(args.run, args.db, onnx=args.onnx, max_batch=args.max_batch,
                     max_wait=args.max_wait_ms / 1000, onnx_threads=args.threads,
                     bf16=args.precision == "bf16")
    served = app.state.service.served
    _say(f"serving {served.source} ({served.backend}, {served.info.vocab.num_items} items) on "
         f"http://{args.host}:{args.port}; events in {redact(str(args.db))}")
    # What is loaded now lives as long as the process: keep the garbage collector from
    # walking it again and again (each full collection pauses every request in flight).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=False, loop=_fastest("uvloop", "auto"),
                http=_fastest("httptools", "auto"))
    return 0


def _fastest(module: str, otherwise: str) -> str:
    import importlib.util

    return module if importlib.util.find_spec(module) is not None else otherwise


def _import_history(db: str, data_path: str, run: Path | None,
                    args: argparse.Namespace | None) -> None:
    from bert4rec.service.store import import_interactions, open_store

    options = None
    info = None
    if run is not None:
        info = load_model(run)[1]
        options = info.prepare
    if args is not None:
        options = _prepare_options(args, options)
    data = load_interactions(_data_path(data_path), options)
    if info is not None:
        info.check_data(data)
    store = open_store(db)
    try:
        users, events, skipped = import_interactions(store, data)
    finally:
        store.close()
    _say(f"imported {events} events of {users} users into {db.split('@')[-1]}"
         + (f"; {skipped} users were there already and are unchanged" if skipped else ""))


def cmd_store_import(args: argparse.Namespace) -> int:
    _import_history(args.db, args.data, args.run, args)
    return 0


def cmd_store_export(args: argparse.Namespace) -> int:
    from bert4rec.service.store import export_pairs, open_store

    store = open_store(args.db)
    try:
        count = export_pairs(store, args.output)
    finally:
        store.close()
    _say(f"wrote {count} events to {args.output}; train on them with "
         f"'bert4rec train --data {args.output} --format pairs ...'")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bert4rec.export import export_onnx
    from bert4rec.model import BERT4Rec

    check_output_file(args.output)
    model, info = load_model(args.run)
    if any(_same_file(args.output, part) for part in Path(args.run).iterdir()):
        raise DataError(f"--output {args.output} is a file of the run {args.run}; name "
                        "another file")
    if not isinstance(model, BERT4Rec):
        raise DataError(f"{args.run} holds a {info.model} model; export takes bert4rec runs")
    path = export_onnx(model, args.output, run=args.run, info=info)
    _say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from bert4rec import synthetic

    if args.users < 1 or args.items < 3:
        raise DataError("--users must be at least 1 and --items at least 3")
    # Histories are 10 to 60 items long, shorter where the catalogue is small (none repeats).
    longest = min(60, args.items - 1)
    frame = synthetic.generate(num_users=args.users, num_items=args.items, seed=args.seed,
                               min_length=min(10, longest), max_length=longest)
    path = synthetic.write(args.output, frame,
                           f"(users={args.users} items={args.items} seed={args.seed})")
    _say(f"wrote {path}: SYNTHETIC data, {frame['user'].nunique()} users, "
         f"{frame['item'].nunique()} items, {len(frame)} interactions")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    data = load_interactions(_data_path(args.data), _prepare_options(args))
    print(json.dumps(data.describe()))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    path = datasets.fetch(args.name, url=args.url)
    options = datasets.options(args.name)
    _say(f"{args.name}: prepared with users >= {options.min_user_count}, items >= "
         f"{options.min_item_count} interactions when given as --data {args.name}")
    print(path)
    return 0


def cmd_benchmark_quality(args: argparse.Namespace) -> int:
    from bert4rec.benchmark import parse_models, parse_settings, quality, tuning_summary
    from bert4rec.tuning import read_tuned

    models = parse_models(args.models)
    overrides = parse_settings(args.set)  # bad input fails before the data is read
    searches = {}
    for path in args.tuned:
        search = read_tuned(path)
        model = search["model"]
        if model not in models:
            raise DataError(f"--tuned {path} tunes {model}, which is not among --models")
        if model in searches:
            raise DataError(f"--tuned gives two searches for {model}")
        if model == "bert4rec" and search.get("key", {}).get("preset") is not None:
            from bert4rec.benchmark import preset_content

            searched = search["key"]["preset"]
            now = json.loads(json.dumps(preset_content(args.preset)))
            # Settings added to the code since the search are not compared: they did not exist.
            changed = searched.get("name") != now["name"] or any(
                now[part].get(key) != value for part in ("model", "train")
                for key, value in searched.get(part, {}).items())
            if changed:
                raise DataError(
                    f"--tuned {path} searched bert4rec's settings on preset "
                    f"{searched.get('name')!r} as it was then, not on --preset {args.preset}: "
                    "benchmark with that preset or tune on this one")
        clash = sorted(set(search["best"]["settings"]) & set(overrides.get(model, {})))
        if clash:
            raise DataError(f"--tuned {path} and --set both set {model}.{', '.join(clash)}; "
                            "keep one")
        searches[model] = (path, search)
    options = _prepare_options(args)
    data = _load(args, options)
    tuning = {}
    fingerprint = data.describe().get("fingerprint")
    for model, (path, search) in searches.items():
        if search["data"].get("fingerprint") != fingerprint:
            raise DataError(f"--tuned {path} was searched on other data "
                            f"({search['data'].get('source')}); tune on this data")
        overrides[model] = {**search["best"]["settings"], **overrides.get(model, {})}
        tuning[model] = tuning_summary(search, path)
    quality(data, args.output, models=models, preset=args.preset, overrides=overrides,
            seeds=args.seeds, time_budget=args.time_budget, epochs=args.epochs,
            threads=args.threads, device=args.device, negatives=args.negatives,
            options=options, titles=find_titles(data.source, data.vocab),
            command=_benchmark_command(args, models), progress=not args.quiet, log=_say,
            jobs=args.jobs, resume=args.resume, tuning=tuning, valid_users=args.valid_users)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from bert4rec.tuning import tune

    options = _prepare_options(args)
    data = _load(args, options)
    log = None if args.quiet else _say
    report = tune(args.model, data, args.output, trials=args.trials,
                  time_budget=args.time_budget, epochs=args.epochs, preset=args.preset,
                  seed=args.seed, threads=args.threads, device=args.device,
                  valid_users=args.valid_users, space_file=args.space,
                  progress=not args.quiet, log=log)
    best = report["best"]
    sets = report["set_arguments"]
    direct = ("or --set " + " --set ".join(sets) if sets
              else "the model's own settings won: nothing to --set")
    _say(f"best of {len(report['trials'])} trials: trial {best['trial'] + 1}, valid NDCG@10 "
         f"{best['valid_NDCG@10']:.4f}; use it with bert4rec benchmark quality --tuned "
         f"{args.output} ({direct})")
    return 0


def cmd_benchmark_speed(args: argparse.Namespace) -> int:
    from bert4rec import speed
    from bert4rec.benchmark import provenance_header
    from bert4rec.device import resolve_device
    from bert4rec.presets import load_preset, parse_assignment
    from bert4rec.runs import write_json

    if args.epochs < 1:
        raise DataError("--epochs must be at least 1")
    if args.output is not None:
        check_output_file(args.output)  # fail now, not after the measurement
    if args.keep is not None:
        if args.target is None:
            raise DataError("--keep saves the model that --target trains; give --target too")
        check_output(args.keep, overwrite=False)  # fail now, not after the training
    overrides = dict(parse_assignment(text) for text in args.set)
    for name in ("threads", "device", "precision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    preset = load_preset(args.preset, overrides)
    header = provenance_header()  # at the start: HEAD may move while the benchmark runs
    options = _prepare_options(args)
    data = _load(args, options)
    if preset.train.threads:
        torch.set_num_threads(preset.train.threads)
    device = resolve_device(preset.train.device)
    peaks = {"fp32": speed.measure_peak(device, torch.float32)}
    if device.type == "cuda" or speed.cpu_supports_bf16():
        peaks["bf16"] = speed.measure_peak(device, torch.bfloat16)
    measured = speed.measure_epochs(data, preset, epochs=args.epochs)
    peak = peaks.get(preset.train.precision, peaks["fp32"])
    report: dict[str, Any] = {
        "command": shlex.join(["bert4rec", *sys.argv[1:]]),
        **header, "data": data.describe(), "preset": preset.name, "overrides": overrides,
        "device": str(device), "threads": torch.get_num_threads(),
        "precision": preset.train.precision, "matmul_peak_flops": peaks,
        "epoch": measured.to_dict(), "peak_share": measured.achieved_flops / peak,
    }
    _say(f"{measured.seconds_per_epoch:.1f} s/epoch, {measured.sequences_per_second:.0f} "
         f"sequences/s, {measured.tokens_per_second:.0f} tokens/s, "
         f"{measured.achieved_flops / 1e9:.1f} GFLOP/s = {100 * report['peak_share']:.1f} % of "
         f"the {preset.train.precision} matmul peak ({peak / 1e9:.0f} GFLOP/s), peak memory "
         f"{measured.peak_rss_mb:.0f} MB")
    if args.target is not None:
        report["time_to_quality"] = speed.time_to_quality(data, preset, args.target,
                                                          keep=args.keep, options=options)
        reached = report["time_to_quality"]["reached_seconds"]
        _say(f"validation NDCG@10 >= {args.target}: "
             + (f"after {reached:.0f} s" if reached is not None else "not reached"))
    if args.output is not None:
        write_json(args.output, report)
    print(json.dumps({k: report[k] for k in ("epoch", "peak_share", "matmul_peak_flops")}))
    return 0


def _benchmark_command(args: argparse.Namespace, models: list[str]) -> str:
    """The command with every benchmark option spelled out, defaults included, so that it
    reruns the same benchmark even where a default changes."""
    words = ["bert4rec", "benchmark", "quality", "--data", args.data, "--models",
             ",".join(models), "--preset", args.preset]
    for text in args.set:
        words += ["--set", text]
    words += ["--seeds", *map(str, args.seeds), "--negatives", str(args.negatives),
              "--jobs", str(args.jobs)]
    for name in ("time_budget", "epochs", "threads", "device", "valid_users", "format",
                 "min_user_count", "min_item_count", "min_rating", "user_col", "item_col",
                 "time_col"):
        if getattr(args, name) is not None:
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for path in args.tuned:
        words += ["--tuned", str(path)]
    words += ["--output", str(args.output)]
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Bert4RecError as exc:
        print(f"bert4rec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bert4rec {args.command}: interrupted", file=sys.stderr)
        return 130
