"""Load test of the feedback service: N simulated labelers submit rankings as fast as they can.

    .venv/bin/python bench/feedback_load.py --db sqlite --labelers 8 --seconds 10
    .venv/bin/python bench/feedback_load.py --db postgres --labelers 8 --seconds 10 --workers 2

Starts ``alignloop serve`` on a loopback port against a fresh database (a temporary SQLite file,
or a newly created PostgreSQL database that is dropped afterwards), creates N labelers and a
ranking campaign (K = 4) with enough items, and lets each labeler submit its assigned tasks
back to back (closed loop: one request in flight per labeler) for a bounded time. It prints
submissions per second and the p50 / p99 latency of submissions, then checks that the
database holds exactly the submissions the server accepted (201), with the same answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from alignloop.feedback.accounts import create_admin
from alignloop.feedback.client import FeedbackClient
from alignloop.feedback.db import migrate
from alignloop.feedback.models import Label

PG_SERVER = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
K = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(kind: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    """(URL, cleanup) of an empty database."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    import psycopg

    name = f"alignloop_bench_{uuid.uuid4().hex[:8]}"
    conninfo = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG_SERVER.rsplit("/", 1)[0] + f"/{name}", drop


def start_server(url: str, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alignloop.cli.main", "serve", "--db", url, "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--workers", str(workers)], start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                time.sleep(1.0 if workers > 1 else 0)  # let the other workers finish starting
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def setup(base: str, admin_token: str, labelers: int, items: int) -> dict[str, tuple[str, list[int]]]:
    """Labelers with their tokens and assigned task ids."""
    admin = FeedbackClient(base, admin_token)
    tokens = {f"bench-{i:03d}": admin.create_user(f"bench-{i:03d}", token=True)["token"] for i in range(labelers)}
    c = admin.create_campaign("load", "ranking", "Rank the completions, best first.")
    rows = [
        {"prompt_id": f"p{i}", "prompt": f"Prompt number {i}: explain something.",
         "completions": [f"Completion {j} of prompt {i}." for j in range(K)]}
        for i in range(items)
    ]  # fmt: skip
    admin.upload_items(c["id"], rows)
    admin.assign(c["id"], overlap=1)
    out = {}
    for name, token in tokens.items():
        client = FeedbackClient(base, token)
        out[name] = (token, [t["assignment_id"] for t in client.tasks(limit=10_000)])  # the most one listing gives
        client.close()
    admin.close()
    return out


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: one connection per simulated labeler.

    The load generator shares the machine's cores with the server, so it must be cheap: this
    costs a fraction of httpx's CPU per request (``--client httpx`` measures with httpx instead).
    """

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), json.loads(payload)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def labeler(post, tasks: list[int], stop: float, seed: int, log: list) -> None:
    """Submit rankings of ``tasks`` back to back until ``stop``; log (latency, status, task, order, label id)."""
    rng = random.Random(seed)
    for aid in tasks:
        if time.perf_counter() >= stop:
            return
        order = rng.sample(range(K), K)
        t0 = time.perf_counter()
        try:
            status, body = await post(f"/api/tasks/{aid}/label", {"order": order})
        except (OSError, httpx.HTTPError, asyncio.IncompleteReadError):
            status, body = 0, {}
        log.append((time.perf_counter() - t0, status, aid, order, body.get("label_id")))


async def run_load(
    base: str, plan: dict[str, tuple[str, list[int]]], seconds: float, client: str
) -> tuple[list, float]:
    log: list = []
    port = int(base.rsplit(":", 1)[1])
    if client == "raw":
        conns = [RawHTTP(port, tok) for tok, _ in plan.values()]
        posts = [c.post for c in conns]
    else:
        limits = httpx.Limits(max_connections=len(plan) + 4, max_keepalive_connections=len(plan) + 4)
        shared = httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0)

        def poster(token: str):
            async def post(path: str, body: dict) -> tuple[int, dict]:
                resp = await shared.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
                return resp.status_code, resp.json()

            return post

        posts = [poster(tok) for tok, _ in plan.values()]
    start = time.perf_counter()
    stop = start + seconds
    await asyncio.gather(
        *(
            labeler(post, tasks, stop, i, log)
            for i, (post, (_, tasks)) in enumerate(zip(posts, plan.values(), strict=True))
        )
    )
    elapsed = time.perf_counter() - start
    if client == "raw":
        for c in conns:
            await c.close()
    else:
        await shared.aclose()
    return log, elapsed


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    for child in Path("/proc").glob(f"{pid}/task/*/children"):
        for c in child.read_text().split():
            out += _tree(int(c))
    return out


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's processes, this load generator and the database server."""
    postgres = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/comm") if _comm(p) == "postgres"]
    t = os.times()
    return {
        "server": sum(_cpu_seconds(p) for p in _tree(server_pid)),
        "load generator": t.user + t.system,
        "postgres": sum(_cpu_seconds(p) for p in postgres),
    }


def _comm(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="both", help="sqlite, postgres, or both")
    ap.add_argument(
        "--labelers", type=int, default=8, help="concurrent simulated labelers (one request in flight each)"
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the timed load phase")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator's HTTP client")
    ap.add_argument("--items", type=int, default=0, help="items to create (default: enough for the run)")
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    items = args.items or int(max(2000, 800 * args.seconds))
    ok = True
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            url, cleanup = fresh_database(kind, Path(tmp))
            proc = None
            try:
                migrate(url)
                admin_token = create_admin(url, "bench-admin", token=True).token
                port = free_port()
                proc = start_server(url, port, args.workers)
                base = f"http://127.0.0.1:{port}"
                plan = setup(base, admin_token, args.labelers, items)
                before = cpu_snapshot(proc.pid)
                log, elapsed = asyncio.run(run_load(base, plan, args.seconds, args.client))
                after = cpu_snapshot(proc.pid)
                accepted = {aid: (order, lid) for _, status, aid, order, lid in log if status == 201}
                errors = [s for _, s, *_ in log if s not in (200, 201)]
                lat = [dt * 1000 for dt, status, *_ in log if status == 201]
                engine = create_engine(url)
                with engine.connect() as conn:
                    stored = {r.assignment_id: (r.payload["order"], r.id) for r in conn.execute(select(Label))}
                engine.dispose()
                exact = stored == accepted
                ok &= exact and not errors
                print(
                    f"[{kind}] {args.labelers} labelers, {args.workers} workers, {elapsed:.1f} s: "
                    f"{len(accepted) / elapsed:.0f} submissions/s, p50 {percentile(lat, 0.5):.1f} ms, "
                    f"p99 {percentile(lat, 0.99):.1f} ms, {len(errors)} errors; "
                    f"database holds {len(stored)} labels for {len(accepted)} accepted submissions: "
                    f"{'exact match' if exact else 'MISMATCH'}"
                )
                n = max(1, len(log))
                cost = ", ".join(f"{k} {1000 * (after[k] - before[k]) / n:.2f}" for k in after if after[k] > before[k])
                load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                print(f"[{kind}] CPU ms per submission: {cost}; {load}")
            finally:
                if proc is not None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                cleanup()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
