"""Named public data sets, downloaded from their official source on first use.

``ml-1m``
    MovieLens 1M from GroupLens (https://files.grouplens.org/datasets/movielens/ml-1m.zip):
    ``ratings.dat`` and ``movies.dat`` are extracted. Prepared like the paper's file: implicit
    feedback (every rating counts), each user's ratings in time order, counts taken once on the
    raw log and users >= 5 AND items >= 5 interactions kept (the SASRec/BERT4Rec preprocessing).
    That gives **6,040 users, 3,416 items and 999,611 interactions**, the counts of the paper's
    ``ml-1m.txt``.
``ml-20m``
    MovieLens 20M from GroupLens (``ml-20m.zip``): ``ratings.csv`` and ``movies.csv``. Every user
    has at least 20 ratings; items are not filtered, which matches the paper's Table 1
    (138,493 users, 26,744 items, about 20M interactions).

Files are kept in ``cache_dir()/downloads/``. The archive is downloaded to a temporary file and
renamed into place, and each extracted file likewise, so an interrupted download never leaves
a half-written file behind under its final name. Without internet, download the archive
elsewhere and pass the extracted file as ``--data`` (with the options below).

The source of a data set can be changed with an environment variable (``BERT4REC_ML1M_URL``,
``BERT4REC_ML20M_URL``) or the ``url`` argument of :func:`fetch`, for a mirror.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bert4rec.data import PrepareOptions, cache_dir
from bert4rec.errors import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Dataset:
    """A public data set: where its archive is and how its log is prepared."""

    name: str
    url: str
    url_env: str  # environment variable that overrides ``url``
    folder: str  # the folder inside the archive
    log: str  # the interaction log inside ``folder``
    extras: tuple[str, ...]  # other files to extract beside it (titles)
    options: PrepareOptions
    description: str

    @property
    def archive(self) -> Path:
        return downloads_dir() / f"{self.name}.zip"

    @property
    def path(self) -> Path:
        """Where the extracted interaction log is."""
        return downloads_dir() / self.folder / self.log

    def source_url(self, url: str | None = None) -> str:
        return url or os.environ.get(self.url_env) or self.url

    def local_hint(self) -> str:
        flags = f" --min-item-count {self.options.min_item_count}" if (
            self.options.min_item_count) else ""
        return f"--data /path/to/{self.folder}/{self.log}{flags}"


DATASETS: dict[str, Dataset] = {
    "ml-1m": Dataset(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        url_env="BERT4REC_ML1M_URL",
        folder="ml-1m",
        log="ratings.dat",
        extras=("movies.dat",),
        options=PrepareOptions(format="movielens-dat", min_user_count=5, min_item_count=5),
        description="MovieLens 1M: 6,040 users, 3,416 items, 999,611 interactions once prepared",
    ),
    "ml-20m": Dataset(
        name="ml-20m",
        url="https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        url_env="BERT4REC_ML20M_URL",
        folder="ml-20m",
        log="ratings.csv",
        extras=("movies.csv",),
        options=PrepareOptions(format="csv", min_user_count=5, min_item_count=0),
        description="MovieLens 20M: 138,493 users, 26,744 items, 20,000,263 interactions",
    ),
}
NAMES: tuple[str, ...] = tuple(DATASETS)


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def get(name: str) -> Dataset:
    """The named data set; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown data set {name!r}; known: {', '.join(NAMES)} (or give a file path)"
        ) from None


def lookup(data: str | Path) -> Dataset | None:
    """The data set ``data`` names, or ``None`` when it is a path (an existing file wins over a
    name) or no known name."""
    text = str(data)
    if text not in DATASETS or Path(text).exists():
        return None
    return DATASETS[text]


def options(name: str) -> PrepareOptions:
    """How the named data set is prepared (the paper's filters)."""
    return get(name).options


def fetch(name: str, url: str | None = None, progress: bool = True) -> Path:
    """Path of the named data set's interaction log, downloading and extracting it first if it
    is not in the cache yet. Prepare it with :func:`options`."""
    dataset = get(name)
    wanted = [dataset.log, *dataset.extras]
    folder = dataset.path.parent
    if all((folder / member).is_file() for member in wanted):
        return dataset.path
    if not dataset.archive.is_file():
        _download(dataset, dataset.source_url(url), progress)
    try:
        _extract(dataset.archive, dataset.folder, wanted, folder)
    except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as exc:
        # A bad CRC, corrupt or truncated compressed data, a missing member.
        dataset.archive.unlink(missing_ok=True)  # a damaged archive is fetched again next time
        raise DataError(
            f"the downloaded {dataset.name} archive is damaged or not the expected one ({exc}); "
            f"it was removed, try again, or pass a local file: {dataset.local_hint()}"
        ) from exc
    except OSError as exc:  # the archive is fine, the folder is not writable or full
        raise DataError(
            f"cannot extract the {dataset.name} archive into {folder} ({exc}); free some space "
            f"or set BERT4REC_CACHE to a writable folder"
        ) from exc
    return dataset.path


def _download(dataset: Dataset, url: str, progress: bool) -> None:
    target = dataset.archive
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            bar = tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                       unit_divisor=1024, desc=f"download {dataset.name}", disable=not progress)
            with bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        # URLError covers HTTP errors and unreachable hosts; HTTPException a bad URL that
        # http.client refuses or a cut transfer; OSError timeouts and full disks; ValueError a
        # malformed URL.
        raise DataError(
            f"cannot download {dataset.name} from {url} ({exc}). Without internet, download it "
            f"elsewhere, unzip it and pass the local file instead: {dataset.local_hint()}"
        ) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _extract(archive: Path, folder: str, members: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for member in members:
            info = zf.getinfo(f"{folder}/{member}")  # KeyError if the archive lacks it
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{member}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
                os.replace(tmp, out_dir / member)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
