"""CPU cost of one label submission through the whole feedback app, in process (no network, no uvicorn).

    .venv/bin/python bench/feedback_cpu.py --db sqlite --submissions 3000

``bench/feedback_load.py`` measures throughput of a real server, but on a shared 2-core machine
its figures swing by a third between identical runs. This measures what a code change can move:
the CPU seconds (all threads of this process) the app spends per accepted submission, calling
the ASGI app directly, one request at a time, after a warm-up. To compare two versions of the
code, run it with each on ``PYTHONPATH`` back to back (same database, same work, same answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from alignloop.config import FeedbackConfig  # noqa: E402
from alignloop.feedback.accounts import create_admin  # noqa: E402
from alignloop.feedback.app import create_app  # noqa: E402
from alignloop.feedback.client import FeedbackClient  # noqa: E402
from alignloop.feedback.db import migrate  # noqa: E402
from feedback_load import K, fresh_database  # noqa: E402


async def submit(app, token: str, aid: int, order: list[int]) -> int:
    body = json.dumps({"order": order}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": f"/api/tasks/{aid}/label", "raw_path": f"/api/tasks/{aid}/label".encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    status = 0
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app, token: str, tasks: list[int], seed: int) -> list[int]:
    rng = random.Random(seed)
    return [await submit(app, token, aid, rng.sample(range(K), K)) for aid in tasks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--submissions", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = fresh_database(args.db, Path(tmp))
        try:
            migrate(url)
            admin_token = create_admin(url, "bench-admin", token=True).token
            app = create_app(FeedbackConfig(database_url=url), migrate=False)
            with TestClient(app) as http:
                admin = FeedbackClient(token=admin_token, http=http)
                token = admin.create_user("bench-labeler", token=True)["token"]
                c = admin.create_campaign("cpu", "ranking", "Rank the completions, best first.")
                n = args.submissions + args.warmup
                rows = [
                    {"prompt_id": f"p{i}", "prompt": f"Prompt {i}.", "completions": [f"C{j} of {i}." for j in range(K)]}
                    for i in range(n)
                ]
                for start in range(0, n, 1000):
                    admin.upload_items(c["id"], rows[start : start + 1000])
                admin.assign(c["id"], overlap=1)
                tasks = [t["assignment_id"] for t in FeedbackClient(token=token, http=http).tasks(limit=10_000)]
                tasks = tasks[:n]
            statuses = asyncio.run(drive(app, token, tasks[: args.warmup], 0))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            statuses += asyncio.run(drive(app, token, tasks[args.warmup :], 1))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            app.state.db.dispose()
        finally:
            cleanup()
    done = len(tasks) - args.warmup
    ok = statuses.count(201)
    print(
        f"[{args.db}] {done} submissions in process: {1000 * cpu / done:.3f} CPU ms and {1000 * wall / done:.3f} "
        f"wall ms per submission; {ok} of {len(statuses)} answered 201"
    )
    raise SystemExit(0 if ok == len(statuses) else 1)


if __name__ == "__main__":
    main()
