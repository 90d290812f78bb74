"""Run directories: a trained model that describes itself.

``RUN_DIR/run.json``      format version, model name and config, data fingerprint and counts,
                          preparation options, provenance, metrics
``RUN_DIR/items.json``    the item vocabulary: original id of internal item ``i`` at ``[i - 1]``
``RUN_DIR/model.safetensors``  the weights (never a pickle)
``RUN_DIR/titles.json``   optional: item titles by original id, where the data gave them
``RUN_DIR/popularity.json``  training interaction count of every item, for the fallback when a
                          history is empty or holds no known item

Every file is written to a temporary name and renamed into place; ``run.json`` goes last, so a
directory without it is an unfinished run and is never loaded.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bert4rec import __version__
from bert4rec.data import Interactions, ItemVocab, PrepareOptions
from bert4rec.errors import RunError
from bert4rec.split import train_sequences

FORMAT_VERSION = 1
RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"  # an unfinished run's checkpoint: see bert4rec.checkpoints
CHECKPOINT_META = "state.json"  # in CHECKPOINT_DIR, written last
# In CHECKPOINT_DIR: the unfinished run was started with --overwrite over the finished run
# beside it, which stays until the new one is saved.
REPLACING = "replaces-finished-run"
VOCAB_FILE = "items.json"
TITLES_FILE = "titles.json"
WEIGHTS_FILE = "model.safetensors"
POPULARITY_FILE = "popularity.json"


@dataclass(frozen=True)
class RunInfo:
    """Everything in ``run.json``, typed."""

    path: Path
    model: str
    config: dict[str, Any]
    data: dict[str, Any]
    prepare: PrepareOptions
    provenance: dict[str, Any]
    metrics: dict[str, Any]
    vocab: ItemVocab
    titles: dict[Any, str] = field(default_factory=dict)  # original item id -> title
    popularity: np.ndarray | None = None  # (num_items + 1,) training counts; index = internal id

    def check_data(self, data: Interactions) -> None:
        """Refuse data other than the data the run was trained on."""
        expected = self.data.get("fingerprint")
        if expected != data.fingerprint:
            raise RunError(
                f"{data.source or 'the data'} does not match the data {self.path} was trained on "
                f"({self.data.get('source')}: {self.data.get('users')} users, "
                f"{self.data.get('items')} items; given: {data.num_users} users, "
                f"{data.num_items} items). Give the data it was trained on, read with its options."
            )


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, value: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, default=_json_default)
            f.write("\n")

    atomic_write(path, write)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def provenance(seed: int | None = None) -> dict[str, Any]:
    return {
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "seed": seed,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an unfinished run's checkpoint."""
    return (run_dir / CHECKPOINT_DIR / CHECKPOINT_META).exists()


def check_output(run_dir: Path, overwrite: bool, resumable: bool = False) -> None:
    """Refuse to replace a finished run unless asked to. With ``resumable`` (training, which
    resumes), a finished run that an interrupted ``--overwrite`` was replacing may be replaced
    by going on with that training."""
    replacing = has_checkpoint(run_dir) and (run_dir / CHECKPOINT_DIR / REPLACING).exists()
    if (run_dir / RUN_FILE).exists() and not overwrite and not (resumable and replacing):
        raise RunError(
            f"{run_dir} already holds a finished run; pass --overwrite (overwrite=True in "
            "Python) or choose another --output"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory")
    if resumable and (run_dir / CHECKPOINT_DIR).exists() and not (
            run_dir / CHECKPOINT_DIR).is_dir():
        raise RunError(f"{run_dir / CHECKPOINT_DIR} is a file, where training keeps its "
                       "checkpoint; move it or choose another --output")
    check_folder(run_dir.parent)


def check_folder(folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be made because a file is in its way."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise RunError(f"cannot write under {folder}: {place} is a file, not a folder")
            return


def check_output_file(path: Path) -> None:
    """Refuse, before any work, an output file whose place cannot be written."""
    if path.is_dir():
        raise RunError(f"{path} is a folder; name a file to write")
    check_folder(path.parent)


def save_run(
    run_dir: Path,
    model_name: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    data: Interactions,
    prepare: PrepareOptions,
    metrics: dict[str, Any] | None = None,
    seed: int | None = None,
    extra_provenance: dict[str, Any] | None = None,
    titles: dict[Any, str] | None = None,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    # A fresh run.json is written last; remove an old one first so a crash in between leaves
    # an unfinished run rather than old metadata over new weights.
    (run_dir / RUN_FILE).unlink(missing_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(contiguous, tmp))
    vocab = [v.item() if isinstance(v, np.generic) else v for v in data.vocab.item_ids.tolist()]
    write_json(run_dir / VOCAB_FILE, vocab)
    counts = np.bincount(train_sequences(data).items, minlength=data.num_items + 1)
    write_json(run_dir / POPULARITY_FILE, counts.tolist())
    (run_dir / TITLES_FILE).unlink(missing_ok=True)  # never keep an older run's titles
    if titles:
        write_json(run_dir / TITLES_FILE, {str(k): v for k, v in titles.items()})
    info = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "config": config,
        "data": {k: v for k, v in data.describe().items()},
        "prepare": prepare.to_dict(),
        "provenance": {**provenance(seed), **(extra_provenance or {})},
        "metrics": metrics or {},
    }
    write_json(run_dir / RUN_FILE, info)


def read_run(run_dir: str | Path) -> tuple[RunInfo, dict[str, torch.Tensor]]:
    """Read and check a run directory; the caller builds the model from config and tensors."""
    run_dir = Path(run_dir)
    meta_path = run_dir / RUN_FILE
    if not meta_path.exists():
        if has_checkpoint(run_dir):
            raise RunError(
                f"{run_dir} holds an unfinished training run; resume it with "
                f"'bert4rec train ... --output {run_dir}' or train again"
            )
        raise RunError(f"{run_dir} is not a run directory (no {RUN_FILE}); train one first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{meta_path} is damaged ({exc}); train the run again") from exc
    if not isinstance(meta, dict):
        raise RunError(f"{meta_path} is damaged (not a JSON object); train the run again")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise RunError(
            f"{run_dir} has run format version {version!r}; this bert4rec "
            f"({__version__}) reads version {FORMAT_VERSION}. Use a matching bert4rec version "
            "or train the run again"
        )
    try:
        vocab = json.loads((run_dir / VOCAB_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(run_dir / WEIGHTS_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise RunError(f"{run_dir} is incomplete or damaged ({exc}); train the run again") from exc
    if not isinstance(meta.get("model"), str) or not isinstance(vocab, list):
        raise RunError(f"{run_dir} is damaged (no model name or item list); train the run again")
    info = RunInfo(
        path=run_dir,
        model=meta["model"],
        config=meta.get("config", {}),
        data=meta.get("data", {}),
        prepare=PrepareOptions.from_dict(meta.get("prepare", {})),
        provenance=meta.get("provenance", {}),
        metrics=meta.get("metrics", {}),
        vocab=ItemVocab(np.asarray(vocab)),
        titles=_read_titles(run_dir, vocab),
        popularity=_read_popularity(run_dir),
    )
    # Files of one run, not of several (a run rewritten while it was read, or files mixed).
    items = info.config.get("num_items") if isinstance(info.config, dict) else None
    if (items is not None and items != info.vocab.num_items) or (
            info.popularity is not None and len(info.popularity) != info.vocab.num_items + 1):
        raise RunError(f"{run_dir} is inconsistent: {VOCAB_FILE}, {POPULARITY_FILE} and the "
                       "model's settings count different items; train the run again")
    return info, tensors


def _read_popularity(run_dir: Path) -> np.ndarray | None:
    path = run_dir / POPULARITY_FILE
    if not path.exists():
        return None
    try:
        return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float32)
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise RunError(f"{path} is damaged ({exc}); train the run again") from exc


def _read_titles(run_dir: Path, vocab: list[Any]) -> dict[Any, str]:
    """Titles keyed by the vocabulary's own ids (JSON keys are text); {} without the file."""
    path = run_dir / TITLES_FILE
    if not path.exists():
        return {}
    try:
        by_text = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); train the run again") from exc
    return {item: by_text[str(item)] for item in vocab if str(item) in by_text}


def load_model(run_dir: str | Path) -> tuple[Any, RunInfo]:
    """Rebuild the recommender saved in ``run_dir`` (no training code, no data needed)."""
    info, tensors = read_run(run_dir)
    try:
        if info.model == "bert4rec":
            from bert4rec.model import BERT4Rec

            return BERT4Rec.from_tensors(info.config, tensors), info
        from bert4rec.baselines import load_baseline

        model = load_baseline(info.model, info.config, tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # weights that do not fit the saved settings: a damaged or hand-edited run
        raise RunError(f"{info.path}: the weights do not match the run's settings ({exc}); "
                       "train the run again") from exc
    if model is None:
        raise RunError(f"{info.path}: unknown model {info.model!r}; is this bert4rec too old?")
    return model, info
