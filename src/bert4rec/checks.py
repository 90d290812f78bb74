"""Checks of settings as they arrive from presets, ``--set`` and saved runs: each value of a
settings dataclass has its field's type (``hidden_size=abc`` is refused by name, not a
traceback deep in training), and the common ranges."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any

from bert4rec.errors import ConfigError

_KINDS: dict[Any, tuple[type, str]] = {
    int: (numbers.Integral, "a whole number"),
    float: (numbers.Real, "a finite number"),
    str: (str, "text"),
    bool: (bool, "true or false"),
}


def check_types(settings: Any) -> None:
    """Raise :class:`ConfigError` for a field of the dataclass ``settings`` whose value is not
    of its annotated type (int, float, str, bool, or one of them or None). A bool is not a
    number here; an int is a float."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        hint = hints.get(field.name)
        value = getattr(settings, field.name)
        allowed = _allowed(hint)
        if allowed is None or any(is_kind(value, kind) for kind in allowed):
            continue
        words = " or ".join(_KINDS[kind][1] if kind is not None else "none" for kind in allowed)
        raise ConfigError(f"{field.name} must be {words}, not {value!r}")


def check_range(name: str, value: Any, low: float, *, above: bool = False,
                none_ok: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value >= low`` (``> low`` with ``above``); None
    passes with ``none_ok``. For values :func:`check_types` has already checked."""
    if value is None and none_ok:
        return
    if value is None or (value <= low if above else value < low):
        bound = f"above {low:g}" if above else f"at least {low:g}"
        extra = ", or none" if none_ok else ""
        raise ConfigError(f"{name} must be {bound}{extra}, not {value!r}")


def check_optimisation(settings: Any) -> None:
    """The ranges of the optimisation settings every trainer has: ``lr``, ``weight_decay`` and
    ``patience`` at least 0, ``time_budget`` above 0 and ``threads`` at least 1 (or none)."""
    for name in ("lr", "weight_decay", "patience"):
        check_range(name, getattr(settings, name), 0)
    check_range("time_budget", settings.time_budget, 0, above=True, none_ok=True)
    check_range("threads", settings.threads, 1, none_ok=True)


def _allowed(hint: Any) -> list[Any] | None:
    """The kinds a hint allows (None for NoneType), or None where it is not checked here."""
    if hint in _KINDS:
        return [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds: list[Any] = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                kinds.append(None)
            elif arg in _KINDS:
                kinds.append(arg)
            else:
                return None
        return kinds
    return None


def is_kind(value: Any, kind: Any) -> bool:
    """``value`` is of ``kind``: int (any integer, not a bool), float (any finite real number,
    not a bool), str, bool, or None."""
    if kind is None:
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is float and isinstance(value, numbers.Real) and not math.isfinite(value):
        return False  # nan and inf are no setting's value
    return isinstance(value, _KINDS[kind][0]) and not isinstance(value, bool)
