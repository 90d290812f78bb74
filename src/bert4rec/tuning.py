"""Random search on the validation split, with a budget that is recorded and the same for
every model.

``tune`` trains one model ``trials`` times, each run under the same time budget, and scores
each on the validation split (full-ranking NDCG@10, the early-stopping metric); the test split
is never read. Trial 0 is the model's own settings (its paper's, or the BERT4Rec preset); the
others draw from the model's space in ``search_spaces.toml`` with a seeded generator, so that
a search is a fixed list of trials and an interrupted one resumes where it stopped.

The result (JSON) holds every trial, the best settings, and the budget: trials, seconds per
trial, and the training seconds spent. ``bert4rec benchmark quality --tuned FILE`` trains the
table's runs with the best settings and shows each model's budget beside its numbers.
"""

from __future__ import annotations

import json
import math
import random
import time
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from bert4rec.data import Interactions
from bert4rec.errors import ConfigError, DivergedError
from bert4rec.presets import unset_limits
from bert4rec.runs import write_json

METRIC = "NDCG@10"  # validation, full ranking: the metric every model early-stops on


def search_space(model: str, path: str | Path | None = None) -> dict[str, Any]:
    """The search space of ``model``: from ``path`` (TOML) or the shipped one."""
    if path is None:
        text = (resources.files("bert4rec") / "search_spaces.toml").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the search space {path}: {exc}") from exc
    try:
        spaces = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"search space {path or 'search_spaces.toml'}: {exc}") from exc
    if model not in spaces:
        raise ConfigError(f"no search space for {model!r}; spaces: {', '.join(spaces)}")
    space = spaces[model]
    for key, domain in space.items():
        if isinstance(domain, list):
            if not domain:
                raise ConfigError(f"{model}.{key}: an empty list of choices")
        elif isinstance(domain, dict):
            low, high = domain.get("low"), domain.get("high")
            if (not isinstance(low, int | float) or not isinstance(high, int | float)
                    or low > high or (domain.get("log") and low <= 0)
                    or set(domain) - {"low", "high", "log"}):
                raise ConfigError(f"{model}.{key}: a range is {{low, high[, log = true]}} with "
                                  f"low <= high (and low > 0 for log), got {domain}")
        else:
            raise ConfigError(f"{model}.{key}: expected a list of choices or a {{low, high}} "
                              f"range, got {domain!r}")
    return dict(space)


def draw_trials(space: Mapping[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` settings: the defaults (empty), then random draws from ``space``."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = [{}]
    while len(out) < trials:
        settings: dict[str, Any] = {}
        for key, domain in sorted(space.items()):
            if isinstance(domain, list):
                settings[key] = rng.choice(domain)
            elif domain.get("log"):
                value = math.exp(rng.uniform(math.log(domain["low"]), math.log(domain["high"])))
                settings[key] = float(f"{value:.3g}")
            else:
                settings[key] = float(f"{rng.uniform(domain['low'], domain['high']):.3g}")
        out.append(settings)
    return out[:trials]


def _train_and_validate(model: str, data: Interactions, preset: str, settings: dict[str, Any],
                        progress: bool, log: Callable[[str], None] | None) -> dict[str, Any]:
    if model == "bert4rec":
        from bert4rec.api import train

        result = train(data, preset, None, progress=progress, log=log, **settings)
        state = result.state
        return {"valid_full": result.valid_metrics, "train_seconds": state.elapsed,
                "epochs": state.epoch, "best_epoch": state.best_epoch,
                "stopped": state.stopped}
    from bert4rec.baselines import train_baseline

    _, fitted, _ = train_baseline(model, data, settings, progress=progress, log=log)
    return {"valid_full": fitted.valid_metrics, "train_seconds": fitted.seconds,
            "epochs": fitted.epochs, "best_epoch": fitted.best_epoch, "stopped": fitted.stopped}


def _key(model: str, preset: str, data: Interactions, space: dict[str, Any], trials: int,
         seed: int, shared: dict[str, Any]) -> dict[str, Any]:
    """What makes two searches the same search (as JSON gives it back)."""
    from bert4rec.benchmark import BUDGET_COUNTS, MARKED_LOSSES, machine_info, preset_content

    shipped = preset_content(preset) if model == "bert4rec" else None
    machine = machine_info()
    key = {"model": model, "preset": shipped, "data": data.describe().get("fingerprint"),
           "space": space, "trials": trials, "seed": seed, "shared": shared,
           "cpu": machine["cpu"], "gpu": machine["gpu"]}
    if model != "bert4rec" and shared.get("time_budget") is not None:
        key["budget_counts"] = BUDGET_COUNTS  # see bert4rec.benchmark._run_key
    if model in MARKED_LOSSES:
        key["loss"] = MARKED_LOSSES[model]
    return json.loads(json.dumps(key, default=str))


def tune(
    model: str,
    data: Interactions,
    output: str | Path,
    trials: int = 8,
    time_budget: float | None = None,
    epochs: int | None = None,
    preset: str = "default",
    seed: int = 0,
    threads: int | None = None,
    device: str | None = None,
    valid_users: int | None = None,
    space_file: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the search and write its result to ``output`` after every trial; the
    result. ``time_budget`` (seconds) and ``epochs`` cap every trial alike; ``seed`` seeds both
    the draws and every trial's training. ``valid_users`` validates every trial on that many
    users, drawn once from ``seed`` (the same users for every trial; None: all)."""
    from bert4rec.benchmark import MODELS, check_model_settings, commit_info, machine_info
    from bert4rec.evaluation import check_valid_users

    if model not in MODELS or model == "pop":
        raise ConfigError(f"cannot tune {model!r}; choose from "
                          f"{','.join(m for m in MODELS if m != 'pop')} (pop has no settings)")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if time_budget is None and epochs is None:
        raise ConfigError("give every trial a budget: --time-budget SECONDS or --epochs N")
    check_valid_users(valid_users, "--valid-users")
    output = Path(output)
    if output.exists() and not output.is_file():
        raise ConfigError(f"{output} exists and is not a file")
    space = search_space(model, space_file)
    shared: dict[str, Any] = {"seed": seed}
    for name, value in (("time_budget", time_budget), ("epochs", epochs),
                        ("threads", threads), ("device", device),
                        ("valid_users", valid_users)):
        if value is not None:
            shared[name] = value
    if model == "bert4rec":  # the flags' limits, not the preset's
        shared.update(unset_limits(preset, shared))
    drawn = draw_trials(space, trials, seed)
    for settings in drawn:  # every trial checked before the first one trains
        try:
            check_model_settings(model, preset, data.num_items, {**settings, **shared})
        except ConfigError as exc:
            raise ConfigError(f"in the search space: {exc}") from exc
    key = _key(model, preset, data, space, trials, seed, shared)
    code = commit_info()["commit"]  # the code that runs; HEAD may move while trials train
    done = _finished_trials(output, key)
    report: dict[str, Any] = {
        "model": model, "data": data.describe(), "preset": preset if model == "bert4rec" else None,
        "key": key, "metric": f"valid {METRIC} (full ranking)",
        "budget": {"trials": trials, "time_budget_per_trial": time_budget,
                   "epochs_per_trial": epochs},
        "trials": [],
    }
    for index, settings in enumerate(drawn):
        previous = done.get(index)
        if previous is not None and previous.get("settings") == settings:
            report["trials"].append({**previous, "reused": True})
            continue
        if log is not None:
            described = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
            log(f"trial {index + 1}/{trials} of {model}: {described}")
        wall = time.perf_counter()
        try:
            record = _train_and_validate(model, data, preset, {**settings, **shared}, progress,
                                         log)
        except DivergedError as exc:  # a trial's settings, not the search, failed: go on
            if log is not None:
                log(f"trial {index + 1}/{trials}: {exc}")
            record = {"valid_full": {}, "train_seconds": time.perf_counter() - wall,
                      "epochs": None, "best_epoch": 0, "stopped": str(exc), "diverged": True}
        report["trials"].append({
            "trial": index, "settings": settings, **record,
            "wall_seconds": time.perf_counter() - wall, "commit": code,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        _summarise(report, model)
        write_json(output, report)
    _summarise(report, model)
    report["machine"] = machine_info()
    write_json(output, report)
    return report


def _summarise(report: dict[str, Any], model: str) -> None:
    trials = report["trials"]
    best = max(trials, key=lambda t: t["valid_full"].get(METRIC, -1.0))
    report["best"] = {"trial": best["trial"], "settings": best["settings"],
                      f"valid_{METRIC}": best["valid_full"].get(METRIC)}
    report["set_arguments"] = [f"{model}.{k}={_toml(v)}" for k, v in best["settings"].items()]
    report["budget"]["train_seconds"] = sum(t["train_seconds"] for t in trials)
    report["budget"]["trials_done"] = len(trials)


def _toml(value: Any) -> str:
    """A value as ``--set`` reads it (TOML)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _finished_trials(output: Path, key: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Trials already run in ``output`` by the same search, by index: the same search but for
    its number of trials, whose first trials are drawn alike whatever the number. A result
    of another search there is refused, not replaced."""
    try:
        saved = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or not isinstance(saved.get("key"), dict):
        return {}

    def search(of: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in of.items() if k != "trials"}

    if search(saved["key"]) != search(json.loads(json.dumps(key))):
        raise ConfigError(f"{output} holds the result of another search (other model, data, "
                          "space, seed, budget or machine); choose another --output, or remove "
                          "that file to replace it")
    return {t["trial"]: t for t in saved.get("trials", [])
            if isinstance(t, dict) and isinstance(t.get("trial"), int)}


def read_tuned(path: str | Path) -> dict[str, Any]:
    """A finished search's result, for ``benchmark quality --tuned``."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the search result {path}: {exc}") from exc
    not_a_search = ConfigError(f"{path} is not the result of bert4rec tune")
    if not isinstance(report, dict):
        raise not_a_search
    budget, best = report.get("budget"), report.get("best")
    if (not isinstance(report.get("model"), str) or not isinstance(budget, dict)
            or not isinstance(best, dict) or not isinstance(best.get("settings"), dict)
            or not isinstance(report.get("data"), dict)
            or not all(isinstance(budget.get(n), int) for n in ("trials", "trials_done"))
            or not isinstance(report.get("key", {}), dict)):
        raise not_a_search
    if budget.get("trials_done", 0) < budget.get("trials", 0):
        raise ConfigError(f"{path}: the search ran {budget.get('trials_done')} of its "
                          f"{budget.get('trials')} trials; rerun the same tune command to "
                          "finish it")
    from bert4rec.benchmark import MARKED_LOSSES

    model, key = report["model"], report.get("key")
    if model in MARKED_LOSSES and isinstance(key, dict) and "loss" not in key:
        raise ConfigError(f"{path} searched {model} as it was before it took the "
                          f"{MARKED_LOSSES[model]} loss: that model is now {model}-ce; tune "
                          f"{model} again, or use the file for {model}-ce by setting its "
                          f'"model" to "{model}-ce"')
    return report
