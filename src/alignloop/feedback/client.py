"""A small Python client of the feedback service, over httpx.

The loop asks for rankings the same way whoever answers: :meth:`FeedbackClient.collect_rankings`
takes prompts and the K completions of each, pushes them as a ranking campaign, waits until the
labelers have answered and returns :class:`~alignloop.data.records.Ranking` records, exactly
what the simulated panel returns. Admin and labeler calls are both here (the simulated panel
labels through the HTTP API with a labeler's client); every non-2xx answer becomes an
:class:`~alignloop.errors.AlignloopError` carrying the server's message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from alignloop.data.records import Demonstration, Prompt, Ranking, Rating, RuleViolations, Thumbs, stable_id
from alignloop.errors import AlignloopError
from alignloop.schema import from_dict

RECORD_OF_DATASET: dict[str, type] = {
    "rm": Ranking,
    "sft": Demonstration,
    "ppo": Prompt,
    "thumbs": Thumbs,
    "ratings": Rating,
    "rule_violations": RuleViolations,
}
UPLOAD_CHUNK = 1000


class FeedbackError(AlignloopError):
    """The service refused a request; ``status`` is the HTTP status, the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"feedback service answered {status}: {message}")


def prompt_fields(prompt: str | Prompt) -> tuple[str, str, str, str]:
    """(prompt_id, text, category, user_id); a bare string's id is its content hash, as in the panel."""
    if isinstance(prompt, Prompt):
        return prompt.id, prompt.text, prompt.category, prompt.user_id
    return stable_id(prompt), prompt, "other", ""


class FeedbackClient:
    """Talk to a feedback service at ``base_url`` with an API or session ``token``.

    ``http`` may be any ``httpx.Client`` (for example FastAPI's in-process ``TestClient``).
    """

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, *, http: httpx.Client | None = None
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=30.0)
        self.token = token

    @classmethod
    def login(cls, base_url: str, username: str, password: str, *, http: httpx.Client | None = None) -> FeedbackClient:
        client = cls(base_url, http=http)
        client.token = client._call("POST", "/api/login", json={"username": username, "password": password})["token"]
        return client

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self.http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as err:
            raise AlignloopError(f"cannot reach the feedback service: {err}", "is `alignloop serve` running?") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise FeedbackError(resp.status_code, str(detail))
        if resp.headers.get("content-type", "").startswith("application/x-ndjson"):
            import json

            return [json.loads(line) for line in resp.text.splitlines() if line.strip()]
        return resp.json()

    # -- admin: people ----------------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/me")

    def create_user(
        self, username: str, role: str = "labeler", password: str | None = None, group: str | None = None, token=False
    ) -> dict[str, Any]:
        body = {"username": username, "role": role, "password": password, "group": group, "token": token}
        return self._call("POST", "/api/admin/users", json=body)

    def update_user(self, username: str, **fields: Any) -> dict[str, Any]:
        return self._call("PATCH", f"/api/admin/users/{username}", json=fields)

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/admin/users")

    def create_token(self, username: str) -> str:
        return self._call("POST", f"/api/admin/users/{username}/tokens")["token"]

    def create_group(self, name: str, held_out: bool = False) -> dict[str, Any]:
        return self._call("POST", "/api/admin/groups", json={"name": name, "held_out": held_out})

    def groups(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/admin/groups")

    # -- admin: campaigns ----------------------------------------------------------------------------
    def create_campaign(self, name: str, task_type: str, guidelines: str, **settings: Any) -> dict[str, Any]:
        body = {"name": name, "task_type": task_type, "guidelines": guidelines, **settings}
        return self._call("POST", "/api/admin/campaigns", json=body)

    def campaigns(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/admin/campaigns")

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/admin/campaigns/{campaign_id}")

    def upload_items(self, campaign_id: int, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Upload items in chunks; returns the summed counts and every item id in input order."""
        out: dict[str, Any] = {"created": 0, "existing": 0, "item_ids": []}
        for start in range(0, len(items), UPLOAD_CHUNK):
            chunk = list(items[start : start + UPLOAD_CHUNK])
            part = self._call("POST", f"/api/admin/campaigns/{campaign_id}/items", json={"items": chunk})
            out["created"] += part["created"]
            out["existing"] += part["existing"]
            out["item_ids"] += part["item_ids"]
        return out

    def set_gold(self, item_id: int, answer: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", f"/api/admin/items/{item_id}/gold", json=answer)

    def assign(self, campaign_id: int, overlap: int | None = None, groups=None, labelers=None) -> dict[str, Any]:
        body = {"overlap": overlap, "groups": groups, "labelers": labelers}
        return self._call("POST", f"/api/admin/campaigns/{campaign_id}/assign", json=body)

    def screen(self, campaign_id: int, threshold: float | None = None) -> dict[str, Any]:
        return self._call("POST", f"/api/admin/campaigns/{campaign_id}/screen", json={"threshold": threshold})

    def labels(self, campaign_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/admin/campaigns/{campaign_id}/labels")

    def agreement(self, campaign_id: int, threshold: float | None = None) -> dict[str, Any]:
        params = {} if threshold is None else {"threshold": threshold}
        return self._call("GET", f"/api/admin/campaigns/{campaign_id}/agreement", params=params)

    def ratings(self, campaigns: Sequence[str | int] | None = None, bootstrap: int = 200, seed: int = 0) -> dict:
        params = {"campaign": [str(c) for c in campaigns or []], "bootstrap": bootstrap, "seed": seed}
        return self._call("GET", "/api/admin/ratings", params=params)

    def export(
        self,
        dataset: str = "rm",
        fmt: str = "alignloop",
        campaigns: Sequence[str | int] | None = None,
        held_out: str = "exclude",
    ) -> list[dict[str, Any]]:
        """Rows of a dataset: alignloop record dicts (``fmt="alignloop"``) or TRL's columns (``"trl"``)."""
        params = {"dataset": dataset, "format": fmt, "held_out": held_out}
        params["campaign"] = [str(c) for c in campaigns or []]
        return self._call("GET", "/api/admin/export", params=params)

    def export_records(self, dataset: str = "rm", campaigns=None, held_out: str = "exclude") -> list[Any]:
        """A dataset as alignloop records (Ranking, Demonstration, Prompt, ...)."""
        cls = RECORD_OF_DATASET[dataset]
        return [from_dict(cls, row) for row in self.export(dataset, "alignloop", campaigns, held_out)]

    # -- labeler -----------------------------------------------------------------------------------------
    def tasks(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._call("GET", "/api/tasks", params={"limit": limit})["tasks"]

    def task(self, assignment_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/tasks/{assignment_id}")

    def submit(self, assignment_id: int, answer: dict[str, Any], idempotency_key: str | None = None) -> dict:
        """Answer a task; retrying with the same answer is safe (the service stores it once)."""
        key = idempotency_key or uuid.uuid4().hex
        return self._call("POST", f"/api/tasks/{assignment_id}/label", json=answer, headers={"Idempotency-Key": key})

    def skip(self, assignment_id: int, reason: str = "intent unclear") -> dict[str, Any]:
        return self._call("POST", f"/api/tasks/{assignment_id}/skip", json={"reason": reason})

    def iter_tasks(self) -> Iterator[dict[str, Any]]:
        """Full tasks, one at a time, until none is pending (answer each before asking for the next)."""
        while True:
            pending = self.tasks(limit=1)
            if not pending:
                return
            yield self.task(pending[0]["assignment_id"])

    # -- the loop's interface ------------------------------------------------------------------------
    def push_comparisons(
        self,
        prompts: Sequence[str | Prompt],
        completions_per_prompt: Sequence[Sequence[str]],
        *,
        campaign: str | None = None,
        guidelines: str = "Rank the completions from most to least helpful; prefer truthful and harmless answers.",
        sources: Sequence[Sequence[str]] | None = None,
        overlap: int = 1,
        groups: Sequence[str] | None = None,
        task_type: str = "ranking",
        screened_only: bool = False,
    ) -> int:
        """Create a ranking campaign from (prompt, K completions), assign it, and return its id."""
        if len(prompts) != len(completions_per_prompt):
            raise AlignloopError(f"{len(prompts)} prompts but {len(completions_per_prompt)} completion lists")
        name = campaign or f"comparisons-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        items = []
        for n, (p, comps) in enumerate(zip(prompts, completions_per_prompt, strict=True)):
            pid, text, category, user_id = prompt_fields(p)
            item = {"prompt_id": pid, "prompt": text, "completions": list(comps), "category": category}
            item["user_id"] = user_id
            if sources is not None:
                item["sources"] = list(sources[n])
            items.append(item)
        # The items go with the campaign in one request: the service stores both or neither.
        c = self.create_campaign(name, task_type, guidelines, overlap=overlap, screened_only=screened_only, items=items)
        self.assign(c["id"], overlap=overlap, groups=list(groups) if groups else None)
        return c["id"]

    def wait(self, campaign_id: int, timeout: float = 3600.0, poll: float = 5.0) -> dict[str, Any]:
        """Block until no assignment of the campaign is pending; AlignloopError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.campaign(campaign_id)
            pending = info["assignments"].get("pending", 0)
            if pending == 0:
                return info
            if time.monotonic() >= deadline:
                raise AlignloopError(
                    f"campaign {info['name']!r}: {pending} tasks still pending after {timeout:.0f} s",
                    "wait longer, add labelers, or export what is in with FeedbackClient.export",
                )
            time.sleep(poll)

    def collect_rankings(
        self,
        prompts: Sequence[str | Prompt],
        completions_per_prompt: Sequence[Sequence[str]],
        *,
        sources: Sequence[Sequence[str]] | None = None,
        overlap: int = 1,
        timeout: float = 3600.0,
        poll: float = 5.0,
        **campaign: Any,
    ) -> list[Ranking]:
        """Rankings of the K completions of each prompt by the service's labelers (held-out groups excluded).

        The same call shape as the simulated panel's source of rankings: prompts (strings or
        Prompt records) and one list of completions per prompt in, Ranking records out.
        """
        cid = self.push_comparisons(prompts, completions_per_prompt, sources=sources, overlap=overlap, **campaign)
        self.wait(cid, timeout, poll)
        return self.export_records("rm", [cid])
