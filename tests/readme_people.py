"""The people of the README walkthrough: Bob and Carol label their pending tasks through the API.

Run by tests/test_readme_walkthrough.py between the README's code blocks (the README's prose says
"Bob and Carol log in and ..."): demonstrations get a written answer, rankings an order by a
simple, slightly different taste per labeler, so agreement is measurable but not perfect.
"""

from __future__ import annotations

import os
import sys

from alignloop.feedback.client import FeedbackClient

PEOPLE = {"bob": "bob-password-1", "carol": "carol-password-1"}


def label_all() -> dict[str, int]:
    base = os.environ["ALIGNLOOP_FEEDBACK_URL"]
    done = {}
    for name, password in PEOPLE.items():
        client = FeedbackClient.login(base, name, password)
        n = 0
        for t in client.tasks(limit=10_000):
            task = client.task(t["assignment_id"])
            if task["task_type"] == "demonstration":
                answer = {"text": f"Here is a clear and helpful answer to: {task['prompt'][:80]}"}
            else:
                comps = task["completions"]
                # Bob prefers longer answers, Carol shorter ones with the same first choice
                by_len = sorted(range(len(comps)), key=lambda i: (-len(comps[i]), i))
                order = by_len if name == "bob" else [by_len[0], *reversed(by_len[1:])]
                answer = {"order": order}
            client.submit(t["assignment_id"], answer)
            n += 1
        done[name] = n
    return done


if __name__ == "__main__":
    print(f"people labeled: {label_all()}", file=sys.stderr)
