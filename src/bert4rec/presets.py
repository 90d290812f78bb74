"""Presets: named model and training settings kept as TOML data files.

A preset file has an optional ``description`` and two tables, ``[model]`` (fields of
:class:`~bert4rec.model.BERT4RecConfig` except ``num_items``) and ``[train]`` (fields of
:class:`~bert4rec.training.TrainConfig`). Unknown keys are errors. ``load_preset`` takes a
shipped name (``bert4rec presets`` lists them) or a path to a file of the same shape.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bert4rec.errors import ConfigError
from bert4rec.model import BERT4RecConfig
from bert4rec.training import TrainConfig

MODEL_KEYS = {f.name for f in fields(BERT4RecConfig)} - {"num_items"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: dict[str, Any]
    train: TrainConfig

    def model_config(self, num_items: int) -> BERT4RecConfig:
        try:
            return BERT4RecConfig(num_items=num_items, **self.model)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preset {self.name}: {exc}") from exc


def preset_names() -> list[str]:
    folder = resources.files("bert4rec") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """A shipped preset by name or a TOML file by path, with ``overrides`` applied to either
    table (each key belongs to exactly one)."""
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("bert4rec") / "presets" / f"{name}.toml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown preset {name!r}; choose one of {', '.join(preset_names())} "
                "or give a path to a .toml file"
            )
        text = resource.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name}: not valid TOML ({exc})") from exc
    unknown_tables = set(raw) - {"description", "model", "train"}
    if unknown_tables:
        raise ConfigError(f"preset {name}: unknown table(s) {', '.join(sorted(unknown_tables))}")
    model = dict(raw.get("model", {}))
    train = dict(raw.get("train", {}))
    for key, value in (overrides or {}).items():
        if key in MODEL_KEYS:
            model[key] = value
        elif key in TRAIN_KEYS:
            train[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}; model settings: "
                              f"{', '.join(sorted(MODEL_KEYS))}; training settings: "
                              f"{', '.join(sorted(TRAIN_KEYS))}")
    bad = set(model) - MODEL_KEYS
    if bad:
        raise ConfigError(f"preset {name}: unknown model setting(s) {', '.join(sorted(bad))}")
    return Preset(name=name, description=str(raw.get("description", "")), model=model,
                  train=TrainConfig.from_dict(train))


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line, the value read as TOML (so 0.2, true, "x")."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word is a string
    if isinstance(parsed, str) and parsed.lower() == "none":
        return key.strip(), None  # TOML has no null: `key=none` unsets an optional setting
    return key.strip(), parsed


def unset_limits(preset: str, shared: dict[str, Any]) -> dict[str, Any]:
    """The limits a BERT4Rec preset sets (its time budget, its validation users) that the
    flags did not, set to none: every model of a comparison gets the flags' limits, not
    BERT4Rec alone its preset's."""
    train = load_preset(preset).train
    return {name: None for name in ("time_budget", "valid_users")
            if name not in shared and getattr(train, name) is not None}
