"""A real server process: SIGHUP reloads it, and SIGKILL in the middle of a burst of writes
loses no acknowledged event, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import TinyRun

from bert4rec.service.store import open_store

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run: Path, db_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "bert4rec", "serve", "--run", str(run),
                             "--db", db_url, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not become ready in 60 s")


def test_sighup_reloads_and_sigkill_loses_no_acknowledged_event(tiny_run: TinyRun,
                                                                db_url: str) -> None:
    proc, url = start_server(tiny_run.path, db_url)
    try:
        before = httpx.get(f"{url}/model").json()["loaded_at"]
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while httpx.get(f"{url}/model").json()["loaded_at"] == before:
            assert time.time() < deadline, "SIGHUP did not reload the run"
            time.sleep(0.05)

        acknowledged: list[tuple[str, str]] = []
        lock = threading.Lock()
        enough = threading.Event()

        def write(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=5) as client:
                for i in range(10_000):
                    item = f"w{worker}-{i}"
                    try:
                        response = client.post(f"/users/u{worker}/events",
                                               json={"items": [item]})
                    except httpx.HTTPError:
                        return  # the server is gone
                    assert response.status_code == 200, response.text
                    with lock:
                        acknowledged.append((f"u{worker}", item))
                        if len(acknowledged) >= 150:
                            enough.set()

        writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
        for t in writers:
            t.start()
        assert enough.wait(60), "the writes did not get going"
        proc.kill()  # SIGKILL, mid-burst: writers are still sending
        proc.wait(10)
        for t in writers:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    store = open_store(db_url)  # what a restarted server finds
    stored = set(store.events())
    store.close()
    assert len(acknowledged) >= 150
    assert set(acknowledged) <= stored
