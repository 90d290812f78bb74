"""Named data sets: download from a local HTTP server, extraction, the paper's filters, errors."""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from bert4rec import datasets
from bert4rec.cli import main
from bert4rec.data import load_interactions
from bert4rec.errors import DataError

# users 1-6 rate items 10-50; users 1-4 also rate 60. User 7 has 4 ratings (dropped) and is the
# fifth rater of item 60, which therefore stays: counts are taken once on the raw log.
RATINGS = [
    *[(u, i, 100 * u + n) for u in range(1, 7) for n, i in enumerate((10, 20, 30, 40, 50))],
    *[(u, 60, 100 * u - 1) for u in range(1, 5)],  # the earliest rating of users 1-4
    (7, 60, 1), (7, 10, 2), (7, 20, 3), (7, 99, 4),
]
MOVIES = {10: "Ten (1990)", 20: "Twenty (1991)", 30: "Thirty (1992)", 40: "Forty (1993)",
          50: "Fifty (1994)", 60: "Amélie (2001)", 99: "Rare (1999)"}


def ml1m_zip() -> bytes:
    ratings = "".join(f"{u}::{i}::4::{t}\n" for u, i, t in RATINGS)
    movies = "".join(f"{i}::{title}::Drama\n" for i, title in MOVIES.items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ratings)
        zf.writestr("ml-1m/movies.dat", movies.encode("latin-1"))
        zf.writestr("ml-1m/README", "test archive")
    return buffer.getvalue()


class Server:
    """Serves files of a folder on 127.0.0.1 and counts the requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("BERT4REC_CACHE", str(root))
    monkeypatch.delenv("BERT4REC_ML1M_URL", raising=False)
    return root


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "ml-1m.zip").write_bytes(ml1m_zip())
    (root / "broken.zip").write_bytes(b"this is not a zip archive")
    served = Server(root)
    yield served
    served.close()


@pytest.fixture
def ml1m_url(server: Server, monkeypatch: pytest.MonkeyPatch) -> str:
    url = server.url("ml-1m.zip")
    monkeypatch.setenv("BERT4REC_ML1M_URL", url)
    return url


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-1m.zip"


def leftovers(cache: Path) -> list[str]:
    downloads = cache / "downloads"
    return sorted(p.name for p in downloads.rglob("*")) if downloads.exists() else []


def test_fetch_downloads_extracts_and_prepares_like_the_paper(cache: Path, server: Server) -> None:
    path = datasets.fetch("ml-1m", url=server.url("ml-1m.zip"), progress=False)
    assert path == cache / "downloads" / "ml-1m" / "ratings.dat"
    assert (path.parent / "movies.dat").is_file()
    assert not (path.parent / "README").exists()  # only the files it needs
    options = datasets.options("ml-1m")
    assert (options.min_user_count, options.min_item_count) == (5, 5)

    data = load_interactions(path, options)
    assert (data.num_users, data.num_items, data.num_interactions) == (6, 6, 34)
    assert data.user_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert data.vocab.item_ids.tolist() == [10, 20, 30, 40, 50, 60]  # 99 and user 7 dropped
    first = data.vocab.decode(data.sequence(0).astype(np.int64))
    assert first == [60, 10, 20, 30, 40, 50]  # time order, not file order


def test_fetch_uses_the_cache_the_second_time(cache: Path, server: Server) -> None:
    url = server.url("ml-1m.zip")
    first = datasets.fetch("ml-1m", url=url, progress=False)
    second = datasets.fetch("ml-1m", url=url, progress=False)
    assert first == second
    assert server.requests == 1


def test_fetch_reads_the_url_from_the_environment(cache: Path, ml1m_url: str,
                                                  server: Server) -> None:
    datasets.fetch("ml-1m", progress=False)
    assert server.requests == 1


def test_network_failure_says_to_pass_a_local_file(cache: Path) -> None:
    with pytest.raises(DataError) as info:
        datasets.fetch("ml-1m", url=closed_port_url(), progress=False)
    message = str(info.value)
    assert message.startswith("cannot download ml-1m from http://127.0.0.1:")
    assert "--data /path/to/ml-1m/ratings.dat --min-item-count 5" in message
    assert leftovers(cache) == []  # no partial archive under any name


def test_http_error_is_a_data_error(cache: Path, server: Server) -> None:
    with pytest.raises(DataError, match=r"cannot download ml-1m .*404"):
        datasets.fetch("ml-1m", url=server.url("missing.zip"), progress=False)
    assert leftovers(cache) == []


def test_damaged_archive_is_removed(cache: Path, server: Server) -> None:
    with pytest.raises(DataError, match=r"archive is damaged .*it was removed"):
        datasets.fetch("ml-1m", url=server.url("broken.zip"), progress=False)
    assert not (cache / "downloads" / "ml-1m.zip").exists()
    # the next try downloads again and succeeds
    assert datasets.fetch("ml-1m", url=server.url("ml-1m.zip"), progress=False).is_file()


def corrupted_ml1m_zip() -> bytes:
    """A valid zip whose compressed ratings.dat is damaged inside (the deflate stream fails)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-1m/ratings.dat", "".join(f"{n % 97}::{n}::5::{n * 7919}\n"
                                                 for n in range(20000)))
        zf.writestr("ml-1m/movies.dat", "1::Ten (1990)::Drama\n")
    damaged = bytearray(buffer.getvalue())
    for k in range(2000, 2100):
        damaged[k] ^= 0xFF
    return bytes(damaged)


def test_corrupted_compressed_data_removes_the_archive(cache: Path, server: Server) -> None:
    (server.root / "corrupt.zip").write_bytes(corrupted_ml1m_zip())

    with pytest.raises(DataError, match=r"archive is damaged .*it was removed, try again"):
        datasets.fetch("ml-1m", url=server.url("corrupt.zip"), progress=False)

    assert not (cache / "downloads" / "ml-1m.zip").exists()
    assert datasets.fetch("ml-1m", url=server.url("ml-1m.zip"), progress=False).is_file()


def test_url_that_http_client_refuses_is_a_data_error(cache: Path) -> None:
    with pytest.raises(DataError, match=r"cannot download ml-1m from http://exa mple\.org/"):
        datasets.fetch("ml-1m", url="http://exa mple.org/ml-1m.zip", progress=False)
    assert leftovers(cache) == []


def test_names_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert datasets.lookup("ml-1m") is datasets.DATASETS["ml-1m"]
    assert datasets.lookup("ratings.dat") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ml-1m").write_text("1 1\n")
    assert datasets.lookup("ml-1m") is None  # an existing file wins over the name
    with pytest.raises(DataError, match=r"unknown data set 'ml-2m'; known: ml-1m, ml-20m"):
        datasets.get("ml-2m")


def test_cli_download_prints_the_path(cache: Path, ml1m_url: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "ml-1m"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(cache / "downloads" / "ml-1m" / "ratings.dat")


def test_cli_data_name_uses_the_data_sets_filters(cache: Path, ml1m_url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--data", "ml-1m"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 34)
    # options given explicitly win over the data set's
    assert main(["prepare", "--data", "ml-1m", "--min-user-count", "1",
                 "--min-item-count", "0"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (7, 7, 38)


def test_cli_train_on_a_name_keeps_its_options_and_titles(
    cache: Path, ml1m_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", "ml-1m", "--output", str(run)]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["prepare"]["min_item_count"] == 5
    assert meta["prepare"]["format"] == "movielens-dat"
    titles = json.loads((run / "titles.json").read_text(encoding="utf-8"))
    assert titles["60"] == "Amélie (2001)"
    assert "99" not in titles  # only items of the vocabulary
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", "ml-1m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 6


def test_cli_network_failure_exits_2(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BERT4REC_ML1M_URL", closed_port_url())
    assert main(["prepare", "--data", "ml-1m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bert4rec prepare: error: cannot download ml-1m")
    assert "pass the local file instead: --data /path/to/ml-1m/ratings.dat" in err
