"""The loop's side of the feedback service: idempotent campaign pushes and bounded waits.

A push is keyed by the campaign's name, which the loop chooses and saves in its state
*before* pushing (``loop-<run id>-r<round>-<purpose>``): on a resume, the name is looked up
on the service first, item uploads are idempotent (an item's key is unique in its campaign)
and so is assignment (nobody gets an item twice), so re-running a push never creates a
second campaign or a second copy of an item. The wait is bounded: after ``wait_timeout``
seconds the process exits with the state intact, and ``alignloop loop --resume`` continues.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from alignloop.config import LoopConfig
from alignloop.errors import AlignloopError
from alignloop.loop_state import LoopState

RANKING_GUIDELINES = (
    "Rank the answers from best to worst. While collecting training data, prefer the most helpful answer: "
    "it follows the instruction, is complete and clear; among equally helpful answers prefer the truthful, "
    "harmless one."
)
DEMONSTRATION_GUIDELINES = (
    "Write the answer you would want an assistant to give: helpful, truthful and harmless, in a few sentences."
)


class Waiting(Exception):
    """Raised when labels are not in yet and the process should exit (``--no-wait``, or the wait timed out)."""

    def __init__(self, line: str, timed_out: bool = False) -> None:
        super().__init__(line)
        self.line, self.timed_out = line, timed_out


def service_client(cfg: LoopConfig) -> Any:
    """An admin client of ``cfg.feedback_url``: an API token from ``$<feedback_token_env>``, else a
    password login of ``feedback_user`` with the password in ``$<feedback_password_env>``."""
    from alignloop.feedback.client import FeedbackClient

    if not cfg.feedback_url:
        raise AlignloopError("ranking_source 'service' needs feedback_url", "set feedback_url in the config")
    token = os.environ.get(cfg.feedback_token_env, "")
    if token:
        return FeedbackClient(cfg.feedback_url, token)
    if not cfg.feedback_user:
        raise AlignloopError(
            "ranking_source 'service' needs an admin token or feedback_user",
            f"export {cfg.feedback_token_env}=TOKEN, or set feedback_user and ${cfg.feedback_password_env}",
        )
    return FeedbackClient.login(cfg.feedback_url, cfg.feedback_user, os.environ.get(cfg.feedback_password_env, ""))


def find_campaign(client: Any, name: str) -> dict[str, Any] | None:
    """The service's campaign called ``name``, or None."""
    return next((c for c in client.campaigns() if c["name"] == name), None)


def push_campaign(
    client: Any,
    state: LoopState,
    rnd: dict[str, Any],
    purpose: str,
    task_type: str,
    guidelines: str,
    items: Sequence[dict[str, Any]],
    overlap: int,
    screened_only: bool,
) -> dict[str, Any]:
    """Create (or find) the round's ``purpose`` campaign, upload ``items`` and assign them; idempotent.

    Returns the campaign's state record; its ``item_ids`` follow ``items``' order."""
    rec = rnd["campaigns"].setdefault(purpose, {})
    if rec.get("pushed"):
        return rec
    if "name" not in rec:  # 1. the intent, saved before anything reaches the service
        rec.update(name=state.campaign_name(rnd["index"], purpose), task_type=task_type, overlap=overlap)
        state.save()
    if "id" not in rec:  # 2. the campaign: found by name if a killed process already created it
        found = find_campaign(client, rec["name"])
        if found is None:
            found = client.create_campaign(
                rec["name"], task_type, guidelines, overlap=overlap, screened_only=screened_only
            )
        rec["id"] = found["id"]
        state.save()
    up = client.upload_items(rec["id"], list(items))  # 3. items: keyed, so a second upload adds nothing
    client.assign(rec["id"], overlap=overlap)
    rec.update(pushed=True, n_items=len(up["item_ids"]), item_ids=up["item_ids"])
    state.save()
    return rec


def progress(client: Any, rec: dict[str, Any]) -> dict[str, int]:
    """Items with all ``overlap`` labels in (answers or skips), of all items, and tasks still pending."""
    per_item: dict[int, int] = {}
    for lb in client.labels(rec["id"]):
        per_item[lb["item_id"]] = per_item.get(lb["item_id"], 0) + 1
    info = client.campaign(rec["id"])
    done = sum(1 for n in per_item.values() if n >= rec["overlap"])
    return {"items": info["n_items"], "items_done": done, "pending": info["assignments"].get("pending", 0)}


def wait_for(
    client: Any,
    state: LoopState,
    rnd: dict[str, Any],
    purpose: str,
    cfg: LoopConfig,
    no_wait: bool,
    log: Callable[[str], None],
) -> None:
    """Return once every item of the campaign has its labels; else raise :class:`Waiting` at once
    (``no_wait``) or after ``cfg.wait_timeout`` seconds, with the line saying what is awaited.

    Each poll also re-runs assignment, so labelers who joined (or passed screening) since the
    push get the items still short of labelers."""
    rec = rnd["campaigns"][purpose]
    deadline = time.monotonic() + cfg.wait_timeout
    last = None
    while True:
        p = progress(client, rec)
        rec["progress"] = p
        line = (
            f"round {rnd['index']}: waiting for campaign {rec['id']} ({purpose}): "
            f"{p['items_done']} of {p['items']} items done (overlap {rec['overlap']})"
        )
        if p["items_done"] >= p["items"]:
            state.save()
            return
        rnd["waiting"] = line
        state.save()
        if no_wait:
            raise Waiting(line)
        if time.monotonic() >= deadline:
            raise Waiting(line, timed_out=True)
        if line != last:
            log(line)
            last = line
        time.sleep(cfg.poll_seconds)
        if p["pending"] == 0:  # nobody holds the remaining items: give them to whoever is eligible now
            client.assign(rec["id"], overlap=rec["overlap"])


def labeler_groups(client: Any) -> tuple[dict[str, str], set[str]]:
    """(labeler -> group name, names of held-out groups) as the service knows them."""
    groups = {u["username"]: u.get("group") or "" for u in client.users()}
    return groups, {g["name"] for g in client.groups() if g["held_out"]}
