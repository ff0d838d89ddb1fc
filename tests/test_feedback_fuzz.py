"""Property-based fuzzing of the whole feedback API from its OpenAPI schema, on SQLite and PostgreSQL.

Schemathesis turns every operation of ``/api/openapi.json`` into Hypothesis strategies, both
requests that fit the schema (they reach the routes' own checks and the database) and requests
that do not (wrong types, missing fields, out-of-range numbers, odd strings in paths, queries and
bodies). Each case is sent as an admin, a labeler or anonymously. Whatever is sent:

- the answer is never a 5xx;
- it carries the security headers;
- an error body stays short (it never echoes the input back);
- afterwards every dataset still exports and the labeler's views still load.

The example count is bounded (``FUZZ_EXAMPLES``, derandomized so CI sees the same cases each run):
about a minute per database on a loaded 2-core machine.
"""
# ruff: noqa: F811  (pytest fixtures are imported from feedback_fixtures and then requested by name)

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from alignloop.feedback.edge import SECURITY_HEADERS
from feedback_fixtures import database_url, pg_database, pg_url, ranking_items, service  # noqa: F401

FUZZ_EXAMPLES = int(os.environ.get("ALIGNLOOP_FUZZ_EXAMPLES", "300"))
HEADER_NAMES = [name.decode() for name, _ in SECURITY_HEADERS]


def _seed(svc) -> dict[str, str]:
    """Rows for the fuzzer to hit (small ids exist), and the bearer header of each caller."""
    lab = svc.labeler("fuzz-labeler")
    for name, task_type, items in (
        ("rank", "ranking", ranking_items(3, k=4)),
        ("demo", "demonstration", [{"prompt_id": "d", "prompt": "Say hi."}]),
        ("thumbs", "thumbs", [{"prompt_id": "t", "prompt": "Hi", "completions": ["Hello"]}]),
    ):
        c = svc.admin.create_campaign(name, task_type, "Be helpful.", items=items)
        svc.admin.assign(c["id"])
    first = lab.tasks()[0]["assignment_id"]
    lab.submit(first, {"order": [0, 1, 2, 3]})
    return {"admin": f"Bearer {svc.admin.token}", "labeler": f"Bearer {lab.token}"}


def test_fuzz_the_api_from_its_openapi_schema(service):
    svc = service
    bearer = _seed(svc)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", svc.app)
    cases = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    seen: dict[int, int] = {}
    ops: dict[str, int] = {}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, who=st.sampled_from(["right role", "right role", "admin", "labeler", None]))
    def check(case, who) -> None:
        if who == "right role":
            who = "admin" if case.path.startswith("/api/admin") else "labeler"
        headers = {"Authorization": bearer[who]} if who else {}
        if case.headers and "authorization" in {k.lower() for k in case.headers}:
            headers = {}  # the case brings its own (fuzzed) credentials
        resp = case.call(headers=headers)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        ops[f"{case.method} {case.path}"] = ops.get(f"{case.method} {case.path}", 0) + 1
        where = f"{case.method} {case.formatted_path} as {who}: {resp.status_code} {resp.text[:300]!r}"
        assert resp.status_code < 500, where
        for name in HEADER_NAMES:
            assert name in resp.headers, f"{where}: no {name} header"
        if resp.status_code >= 400:
            assert len(resp.content) < 2000, f"{where}: a {len(resp.content)}-byte error body"

    check()
    print(f"fuzzed {sum(seen.values())} requests over {len(ops)} operations; status codes {sorted(seen.items())}")
    assert sum(seen.values()) >= FUZZ_EXAMPLES // 2, seen
    assert any(200 <= s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen
    for dataset in ("sft", "rm", "ppo", "thumbs", "ratings", "rule_violations"):
        resp = svc.http.get(f"/api/admin/export?dataset={dataset}", headers={"Authorization": bearer["admin"]})
        assert resp.status_code == 200, (dataset, resp.text[:300])
        for line in resp.text.splitlines():
            json.loads(line)
    tasks = svc.http.get("/api/tasks", headers={"Authorization": bearer["labeler"]})
    assert tasks.status_code == 200
    for t in tasks.json()["tasks"][:5]:
        resp = svc.http.get(f"/api/tasks/{t['assignment_id']}", headers={"Authorization": bearer["labeler"]})
        assert resp.status_code == 200
    for c in svc.http.get("/api/admin/campaigns", headers={"Authorization": bearer["admin"]}).json():
        resp = svc.http.get(f"/api/admin/campaigns/{c['id']}/labels", headers={"Authorization": bearer["admin"]})
        assert resp.status_code == 200
