"""Open-loop load test of ``bert4rec serve`` over loopback.

Starts the service on a run (or drives one already running, ``--url``), then sends
``POST /recommend`` at a fixed rate: request i leaves at ``i / rate`` seconds whatever the
answers before it, and its latency counts from that planned time, so a slow server cannot hide
queueing by slowing the sender (no coordinated omission). Each request is one real user's
history, the last 200 items ending a different number of items before the end for each pass
over the users, so no two requests are the same.

    python benchmarks/serve_load.py --run runs/ml-1m --data ml-1m.txt --rate 300 --duration 60
    python benchmarks/serve_load.py --run runs/ml-1m --data ml-1m.txt --search

``--search`` raises the rate in steps until ``--misses`` steps in a row miss the bar (p99 <=
--p99-ms, no errors, throughput within 2 % of the rate) and reports the highest rate that met
it. Each step records the load average and CPU pressure: on a shared machine, other processes
decide much of the tail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bert4rec.benchmark import provenance_header  # noqa: E402
from bert4rec.runs import write_json  # noqa: E402

HISTORY = 200


def read_histories(path: Path) -> list[list[int]]:
    """Every user's items in file order from a ``user item`` pairs file."""
    by_user: dict[str, list[int]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            user, item = line.split()[:2]
            by_user[user].append(int(item))
    return [items for items in by_user.values() if len(items) > 1]


def request_bodies(histories: list[list[int]], count: int, k: int) -> list[bytes]:
    """``count`` distinct bodies: pass p over the users ends each history p items early."""
    bodies = []
    for i in range(count):
        items = histories[i % len(histories)]
        shift = (i // len(histories)) % (len(items) - 1)
        end = len(items) - shift
        history = items[max(0, end - HISTORY) : end]
        bodies.append(json.dumps({"history": history, "k": k}).encode())
    return bodies


class Connection:
    """One keep-alive HTTP/1.1 connection. A hand-rolled client: the generator shares the
    machine with the server, so it must cost as little CPU as possible."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def run_step(host: str, port: int, bodies: list[bytes], rate: float,
                   timeout: float = 5.0) -> dict[str, Any]:
    """Send ``bodies`` at ``rate`` per second; latencies from each request's planned time."""
    idle: list[Connection] = []
    latencies: list[float] = []
    errors: dict[str, int] = defaultdict(int)
    start = time.perf_counter() + 0.05

    async def one(planned: float, body: bytes) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        try:
            try:
                status, reply = await asyncio.wait_for(conn.post("/recommend", body), timeout)
            except ConnectionError:
                # The server closes keep-alive connections idle for 5 s; like any HTTP
                # client, send again on a fresh one when a reused connection was closed.
                conn.close()
                conn = Connection(host, port)
                remaining = planned + timeout - time.perf_counter()
                status, reply = await asyncio.wait_for(conn.post("/recommend", body), remaining)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
            conn.close()
            return
        latencies.append(time.perf_counter() - planned)
        if status != 200 or b'"items"' not in reply:
            errors[f"HTTP {status}"] += 1
        idle.append(conn)

    # Requests are started one by one at their planned times: creating thousands of tasks up
    # front would itself delay the first requests.
    tasks = set()
    for i, body in enumerate(bodies):
        planned = start + i / rate
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(planned, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    ms = np.asarray(latencies) * 1000
    done = len(latencies)
    return {
        "rate": rate, "requests": len(bodies), "seconds": round(elapsed, 2),
        "throughput": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": int(sum(errors.values())), "error_kinds": dict(errors),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if done else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if done else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if done else None,
        "max_ms": round(float(ms.max()), 2) if done else None,
        # Other processes on the machine: the share of time some task waited for a CPU.
        "load_average": [round(v, 2) for v in os.getloadavg()], "cpu_pressure": cpu_pressure(),
    }


def cpu_pressure() -> str | None:
    """The kernel's CPU pressure line ('some avg10=... avg60=...'), where there is one."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def meets(step: dict[str, Any], p99_ms: float) -> bool:
    return (step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= p99_ms
            and step["throughput"] >= 0.98 * step["rate"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(args: argparse.Namespace, port: int) -> Any:
    """Run ``bert4rec serve`` on ``port`` until the block ends; wait for /ready."""
    db = Path(args.workdir) / f"serve-load-{os.getpid()}.sqlite3"
    command = [sys.executable, "-m", "bert4rec", "serve", "--run", str(args.run),
               "--port", str(port), "--db", str(db), *args.serve_args]
    if args.onnx:
        command += ["--onnx", str(args.onnx)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(command, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None:
                raise SystemExit(f"the service exited with status {proc.returncode}")
            time.sleep(0.2)
        yield command
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


async def measure(args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    histories = read_histories(args.data)
    warm = request_bodies(histories[::-1], int(args.warmup * args.rate), args.k)
    await run_step(host, port, warm, args.rate)  # first batches, allocator, caches
    steps = []
    if args.search:
        rate, misses = args.start_rate, 0
        while rate <= args.max_rate and misses < args.misses:
            bodies = request_bodies(histories, int(rate * args.step_duration), args.k)
            step = await run_step(host, port, bodies, rate)
            step["meets"] = meets(step, args.p99_ms)
            steps.append(step)
            print(json.dumps(step), flush=True)
            misses = 0 if step["meets"] else misses + 1
            rate += args.rate_step
        passed = [s["rate"] for s in steps if s["meets"]]
        return {"search": steps, "highest_sustained_rate": max(passed) if passed else None}
    runs = []
    for _ in range(args.repeats):
        bodies = request_bodies(histories, int(args.rate * args.duration), args.k)
        step = await run_step(host, port, bodies, args.rate)
        step["meets"] = meets(step, args.p99_ms)
        runs.append(step)
        print(json.dumps(step), flush=True)
    median = {key: float(np.median([r[key] for r in runs]))
              for key in ("throughput", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors")}
    return {"runs": runs, "median": median, "all_meet": all(r["meets"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="ML-1m 'user item' pairs file")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", type=Path, help="start 'bert4rec serve' on this run")
    who.add_argument("--url", help="drive a service already running, e.g. http://127.0.0.1:8000")
    parser.add_argument("--onnx", type=Path, default=None, help="serve this ONNX export")
    parser.add_argument("--serve-args", default="",
                        help="more 'bert4rec serve' options, e.g. '--threads 1'")
    parser.add_argument("--rate", type=float, default=300, help="requests per second")
    parser.add_argument("--duration", type=float, default=60, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs at --rate (medians)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up load")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--p99-ms", type=float, default=50.0, help="latency bar")
    parser.add_argument("--search", action="store_true", help="find the highest rate that "
                        "meets the bar")
    parser.add_argument("--start-rate", type=float, default=200)
    parser.add_argument("--rate-step", type=float, default=50)
    parser.add_argument("--max-rate", type=float, default=2000)
    parser.add_argument("--step-duration", type=float, default=20)
    parser.add_argument("--misses", type=int, default=2,
                        help="stop the search after this many steps in a row miss the bar")
    parser.add_argument("--workdir", default="/tmp", help="where the service's store goes")
    parser.add_argument("--output", type=Path, default=None, help="write the report (JSON)")
    args = parser.parse_args()
    args.serve_args = shlex.split(args.serve_args)

    report: dict[str, Any] = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        **provenance_header(),
        "data": str(args.data), "run": str(args.run or args.url), "k": args.k,
        "history": HISTORY, "p99_bar_ms": args.p99_ms,
    }
    if args.url:
        host, _, port = args.url.split("//", 1)[-1].rstrip("/").partition(":")
        result = asyncio.run(measure(args, host, int(port or 80)))
    else:
        run_info = json.loads((args.run / "run.json").read_text())
        report["model"] = {"name": run_info["model"], "config": run_info["config"],
                           "onnx": str(args.onnx) if args.onnx else None}
        port = free_port()
        with service(args, port) as command:
            report["service"] = shlex.join(command[1:])
            result = asyncio.run(measure(args, "127.0.0.1", port))
    report.update(result)
    if args.output is not None:
        write_json(args.output, report)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    main()
