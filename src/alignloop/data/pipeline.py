"""The prompt pipeline of InstructGPT section 3.2 (SPEC section 2).

Raw prompts -> drop empty/invalid -> drop duplicates (long shared prefix) -> cap prompts per
user -> split users into train / val / test -> split prompts into disjoint SFT / RM / PPO sets.

Why each step:

* Dedupe: users resubmit the same instruction with small edits; the paper calls two prompts
  duplicates when they share a long common prefix. We compare the first ``N`` characters
  after folding case and collapsing whitespace. Sort-based, not quadratic: prompts are sorted
  by a fingerprint of that prefix so equal prefixes become neighbours, and the first of each
  run in input order is kept (equality is re-checked on the actual text, so a fingerprint
  collision can never merge two different prompts).
* Per-user cap: a few heavy users would otherwise dominate the data (paper: 200 per user).
  The first ``max_prompts_per_user`` of each user in input order are kept.
* Splits by user: if one user's prompts sat in train and test, evaluation would reward
  memorising that user. A user's split is a hash of ``seed`` and ``user_id`` against
  ``split_fractions``, so it never changes when more users arrive in a later round.
* Disjoint datasets: SFT, RM and PPO must not share prompts (the RM would otherwise score
  prompts the policy was trained to imitate). A prompt's dataset is a hash of ``seed`` and
  its id against ``dataset_fractions``.

Everything per prompt lives in small numpy arrays (one byte of split, one of dataset, one of
drop reason), so a million prompts need tens of megabytes on top of the prompts themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignloop.config import DataConfig, config_to_dict
from alignloop.data.jsonl import write_jsonl
from alignloop.data.records import Prompt
from alignloop.errors import AlignloopError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATASETS: tuple[str, ...] = ("sft", "rm", "ppo")

#: Why a prompt was dropped, in the order the pipeline applies the rules.
DROP_REASONS: tuple[str, ...] = ("invalid", "duplicate", "over_user_cap")
KEPT = -1  # drop code of a kept prompt


def normalize_prefix(text: str, n_chars: int) -> str:
    """The dedupe key: case-folded, whitespace-collapsed text, cut to ``n_chars``.

    Two prompts are duplicates when their keys are equal: both share at least ``n_chars``
    normalised leading characters, or (for prompts shorter than that) they are identical
    after normalisation.
    """
    limit = 4 * n_chars + 16  # enough raw text for n_chars normalised ones unless whitespace runs are long
    key = " ".join(text[:limit].casefold().split())
    if len(key) < n_chars and len(text) > limit:
        key = " ".join(text.casefold().split())
    return key[:n_chars]


def unit_hash(salt: str, value: str) -> float:
    """A deterministic number in [0, 1) from ``salt`` and ``value`` (stable across processes and machines)."""
    digest = hashlib.blake2b(f"{salt}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _bucket(u: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Map hash values in [0, 1) to bucket 0..len(fractions)-1 by cumulative fractions."""
    cum = np.cumsum(np.asarray(fractions, dtype=np.float64))
    return np.minimum(np.searchsorted(cum, u, side="right"), len(fractions) - 1).astype(np.int8)


def user_split(user_id: str, cfg: DataConfig) -> str:
    """Which split ("train", "val" or "test") ``user_id``'s prompts go to under ``cfg``.

    Depends only on the user id, ``cfg.seed`` and ``cfg.split_fractions``, so a user keeps
    their split across rounds of data collection.
    """
    u = np.array([unit_hash(f"split:{cfg.seed}", user_id)])
    return SPLITS[int(_bucket(u, cfg.split_fractions)[0])]


def first_of_equal(
    candidates: np.ndarray, key_of: Callable[[int], str], fingerprint: Callable[[str], int] = hash
) -> np.ndarray:
    """For each candidate index (ascending), the earliest candidate with an equal key.

    Sort-based: a stable sort by a 64-bit fingerprint of the key puts equal keys next to each
    other in input order, so the head of each run is the first occurrence. Only members of
    runs longer than one have their key recomputed and compared exactly; on a fingerprint
    collision the run is regrouped by the real key. Returns an array aligned with
    ``candidates`` holding the head's input index (equal to the candidate itself when kept).
    ``fingerprint`` is Python's string hash: salted per process, which is harmless because
    the result depends only on exact key equality.
    """
    n = len(candidates)
    if n == 0:
        return candidates.copy()
    fp = np.fromiter((fingerprint(key_of(int(i))) for i in candidates), dtype=np.int64, count=n)
    order = np.argsort(fp, kind="stable")
    sfp = fp[order]
    del fp
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(sfp[1:], sfp[:-1], out=starts[1:])
    run_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    head = candidates[order[run_start]]  # head of each element's run, in sorted position
    member = candidates[order]
    out = np.empty(n, dtype=candidates.dtype)
    out[order] = head
    # exact check for the (few) elements that share a fingerprint with an earlier one
    suspects = np.nonzero(head != member)[0]
    for pos in suspects:
        i, h = int(member[pos]), int(head[pos])
        if key_of(i) != key_of(h):
            # collision: regroup this whole run by its real keys, earliest first
            lo = int(run_start[pos])
            hi = lo + 1
            while hi < n and not starts[hi]:
                hi += 1
            first: dict[str, int] = {}
            for j in sorted(int(x) for x in candidates[order[lo:hi]]):
                first.setdefault(key_of(j), j)
            for p in range(lo, hi):
                j = int(candidates[order[p]])
                out[order[p]] = first[key_of(j)]
    return out


@dataclass
class PipelineReport:
    """What the pipeline kept and dropped and why, and how big each dataset/split came out."""

    n_input: int
    n_kept: int
    dropped: dict[str, int]  # reason -> number of prompts
    users_input: int
    users_over_cap: int  # users who lost prompts to the cap
    counts: dict[str, dict[str, dict[str, int]]]  # dataset -> split -> {"prompts", "users"}
    users_per_split: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def to_dict(self) -> dict[str, Any]:
        """Plain form for summary.json (timings left out so the file is deterministic)."""
        return {
            "n_input": self.n_input,
            "n_kept": self.n_kept,
            "dropped": dict(self.dropped),
            "users_input": self.users_input,
            "users_over_cap": self.users_over_cap,
            "users_per_split": dict(self.users_per_split),
            "counts": self.counts,
        }


@dataclass
class PreparedData:
    """The prepared prompts: per input prompt a drop reason, a split and a dataset.

    ``drop[i]`` is an index into :data:`DROP_REASONS` or ``KEPT``; ``duplicate_of[i]`` is the
    input index of the earlier prompt that prompt ``i`` duplicates (or -1); dedupe runs before
    the per-user cap, so that earlier prompt can itself be dropped later by the cap. ``split[i]`` and
    ``dataset[i]`` index :data:`SPLITS` and :data:`DATASETS` (-1 for dropped prompts).
    """

    prompts: Sequence[Prompt]
    config: DataConfig
    drop: np.ndarray
    duplicate_of: np.ndarray
    split: np.ndarray
    dataset: np.ndarray
    report: PipelineReport

    def indices(self, dataset: str, split: str) -> np.ndarray:
        """Input indices of the prompts in ``dataset`` x ``split``, in input order."""
        if dataset not in DATASETS or split not in SPLITS:
            raise AlignloopError(f"unknown dataset/split {dataset}/{split}", f"use one of {DATASETS} x {SPLITS}")
        mask = (self.dataset == DATASETS.index(dataset)) & (self.split == SPLITS.index(split))
        return np.nonzero(mask)[0]

    def get(self, dataset: str, split: str) -> list[Prompt]:
        """The prompts of one dataset and split, e.g. ``get("ppo", "train")``."""
        return [self.prompts[int(i)] for i in self.indices(dataset, split)]

    def kept(self) -> list[Prompt]:
        """Every prompt that survived the pipeline, in input order."""
        return [self.prompts[int(i)] for i in np.nonzero(self.drop == KEPT)[0]]

    def dropped(self) -> list[tuple[Prompt, str, Prompt | None]]:
        """Every dropped prompt with its reason and, for duplicates, the prompt it duplicates."""
        out = []
        for i in np.nonzero(self.drop != KEPT)[0]:
            d = int(self.duplicate_of[i])
            out.append((self.prompts[int(i)], DROP_REASONS[self.drop[i]], self.prompts[d] if d >= 0 else None))
        return out


def _validated(cfg: DataConfig) -> DataConfig:
    try:
        cfg.validate()
    except ValueError as err:
        raise AlignloopError(f"data config: {err}", "fix the value in the config file or on the command line") from None
    return cfg


def prepare(prompts: Sequence[Prompt], cfg: DataConfig | None = None) -> PreparedData:
    """Run the whole pipeline on ``prompts`` (input order matters: earlier prompts win ties).

    Deterministic: the same prompts and config give the same result in any process.
    """
    cfg = _validated(cfg or DataConfig())
    n = len(prompts)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    drop = np.full(n, KEPT, dtype=np.int8)
    duplicate_of = np.full(n, -1, dtype=np.int64)

    # 0. Columns and user codes; invalid = empty text, empty user id, or an id used before.
    user_code = np.empty(n, dtype=np.int64)
    codes: dict[str, int] = {}
    for i, p in enumerate(prompts):
        user_code[i] = codes.setdefault(p.user_id, len(codes))
        if not p.text.strip() or not p.user_id.strip() or not p.id:
            drop[i] = DROP_REASONS.index("invalid")
    user_names = list(codes)
    del codes
    live = np.nonzero(drop == KEPT)[0]
    repeat = first_of_equal(live, lambda i: prompts[i].id)
    drop[live[repeat != live]] = DROP_REASONS.index("invalid")
    timings["validate"] = time.perf_counter() - t0

    # 1. Dedupe by long common prefix (first occurrence in input order wins).
    t = time.perf_counter()
    live = np.nonzero(drop == KEPT)[0]
    n_chars = cfg.dedupe_prefix_chars
    head = first_of_equal(live, lambda i: normalize_prefix(prompts[i].text, n_chars))
    dup = head != live
    drop[live[dup]] = DROP_REASONS.index("duplicate")
    duplicate_of[live[dup]] = head[dup]
    timings["dedupe"] = time.perf_counter() - t

    # 2. Per-user cap: keep each user's first max_prompts_per_user in input order.
    t = time.perf_counter()
    live = np.nonzero(drop == KEPT)[0]
    users = user_code[live]
    order = np.argsort(users, kind="stable")
    su = users[order]
    starts = np.ones(len(su), dtype=bool)
    starts[1:] = su[1:] != su[:-1]
    rank = np.arange(len(su)) - np.maximum.accumulate(np.where(starts, np.arange(len(su)), 0))
    over = live[order[rank >= cfg.max_prompts_per_user]]
    drop[over] = DROP_REASONS.index("over_user_cap")
    users_over_cap = len(np.unique(user_code[over]))
    timings["user_cap"] = time.perf_counter() - t

    # 3. Train / val / test by user: hash(seed, user_id) against split_fractions.
    t = time.perf_counter()
    u_user = np.fromiter((unit_hash(f"split:{cfg.seed}", name) for name in user_names), np.float64, len(user_names))
    user_split = _bucket(u_user, cfg.split_fractions)
    kept = np.nonzero(drop == KEPT)[0]
    split = np.full(n, -1, dtype=np.int8)
    split[kept] = user_split[user_code[kept]]
    timings["split_users"] = time.perf_counter() - t

    # 4. Disjoint SFT / RM / PPO: hash(seed, prompt id) against dataset_fractions.
    t = time.perf_counter()
    salt = f"dataset:{cfg.seed}"
    u_prompt = np.fromiter((unit_hash(salt, prompts[int(i)].id) for i in kept), np.float64, len(kept))
    dataset = np.full(n, -1, dtype=np.int8)
    dataset[kept] = _bucket(u_prompt, cfg.dataset_fractions)
    timings["split_datasets"] = time.perf_counter() - t

    # 5. Report.
    t = time.perf_counter()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    kept_users = user_code[kept]
    for d, dname in enumerate(DATASETS):
        counts[dname] = {}
        for s, sname in enumerate(SPLITS):
            sel = (dataset[kept] == d) & (split[kept] == s)
            counts[dname][sname] = {"prompts": int(sel.sum()), "users": len(np.unique(kept_users[sel]))}
    users_per_split = {sname: len(np.unique(kept_users[split[kept] == s])) for s, sname in enumerate(SPLITS)}
    report = PipelineReport(
        n_input=n,
        n_kept=len(kept),
        dropped={r: int((drop == k).sum()) for k, r in enumerate(DROP_REASONS)},
        users_input=len(user_names),
        users_over_cap=users_over_cap,
        counts=counts,
        users_per_split=users_per_split,
        timings=timings,
    )
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return PreparedData(prompts, cfg, drop, duplicate_of, split, dataset, report)


def dataset_filename(dataset: str, split: str) -> str:
    """File name of one dataset and split inside a prepared folder, e.g. ``rm_val.jsonl``."""
    return f"{dataset}_{split}.jsonl"


def write_prepared(prepared: PreparedData, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write one JSONL of prompt records per dataset and split, dropped.jsonl and summary.json.

    dropped.jsonl keeps every dropped prompt with its reason (and the id it duplicates) so
    nothing is silently lost. Returns the paths written by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = prepared.prompts
    paths: dict[str, Path] = {}
    for dname in DATASETS:
        for sname in SPLITS:
            path = out / dataset_filename(dname, sname)
            write_jsonl(path, (vars(prompts[int(i)]) for i in prepared.indices(dname, sname)))
            paths[f"{dname}_{sname}"] = path

    def dropped_rows():
        for i in np.nonzero(prepared.drop != KEPT)[0]:
            p, d = prompts[int(i)], int(prepared.duplicate_of[i])
            row = {"reason": DROP_REASONS[prepared.drop[i]], **vars(p)}
            row["duplicate_of"] = prompts[d].id if d >= 0 else None
            yield row

    paths["dropped"] = out / "dropped.jsonl"
    write_jsonl(paths["dropped"], dropped_rows())
    summary = {
        "config": config_to_dict(prepared.config),
        **prepared.report.to_dict(),
        "files": {name: p.name for name, p in paths.items()},
    }
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths
