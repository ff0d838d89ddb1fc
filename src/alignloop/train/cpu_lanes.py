"""CPU scheduling of one training process: independent passes side by side on the free cores.

PPO's algorithm does not depend on anything here. On a CPU, passes that do not depend on each
other (the parts of a rollout; the policy and reference next to the value and reward models; the
policy step next to the value step) can run on their own threads, each on a share of the cores:
two passes side by side on one core each beat one pass at a time split over two cores, because
the small matrix products of token-by-token work parallelise poorly. The numbers are exactly
those of running the passes one after another (each pass is the same arithmetic on one thread).

Intra-op threads only pay when the cores they are planned for are free. With another busy
process on the machine, a thread of ours waits for its core at every barrier of an OpenMP
parallel region (every matrix product), so a pass on two threads planned for two cores
collapses many times over (8-16x measured in PPO's train phase and in SFT). :class:`CpuLanes`
therefore looks, before each use, at how much CPU the rest of the machine took since it last
looked (``/proc/stat`` minus this process's own time) and gives torch only the cores left free
as intra-op threads, down to one. Lanes themselves never wait for each other until they end, so
they keep running side by side (one thread each) when cores are taken: the scheduler shares
the cores between them and the other process, with no barrier to stall. Which lanes run
together, and on how many threads, never changes the results, only the time; :meth:`CpuLanes.close`
gives torch its planned thread count back at the end, since what is planned from that count (the
number of rollout parts, each with its own seed) does change the results.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

#: The least time between two looks at the machine's load: shorter windows are mostly noise.
MIN_WINDOW_S = 0.5
#: Cores another process must keep busy (on average over the window) before one is given up.
BUSY_CORE = 0.5


class CpuLanes:
    """Runs independent passes on threads when that pays; one after another otherwise.

    ``enabled``: one process on a CPU (DDP needs its collectives in the same order on every
    rank, and a GPU runs one pass at a time anyway). ``threads``: the cores planned for, torch's
    thread count at construction; :meth:`free_cores` says how many of them are free now."""

    def __init__(self, enabled: bool, threads: int | None = None) -> None:
        self.threads = threads or torch.get_num_threads()
        self.enabled = enabled and self.threads > 1
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy s, own cpu s)
        self._free = self.threads

    def free_cores(self) -> int:
        """Planned cores not taken by other processes since the last look (at most every
        ``MIN_WINDOW_S``); torch's intra-op thread count follows it."""
        if not self.enabled:
            return self.threads
        now = _machine_times()
        if now is None:
            return self.threads
        if self._last is not None and now[0] - self._last[0] >= MIN_WINDOW_S:
            wall = now[0] - self._last[0]
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
            cores = min(self.threads, _affinity())
            self._free = max(1, min(cores, int(cores - others + (1 - BUSY_CORE))))
            self._last = now
            torch.set_num_threads(self._free)
        elif self._last is None:
            self._last = now
        return self._free

    def close(self) -> None:
        """Give torch back the planned thread count. The cores a busy machine took are not taken
        for good: whatever runs next in this process (another stage, the next round's trainer,
        whose lanes and rollout parts are planned from torch's count) must not inherit them."""
        self._free = self.threads
        self._last = None
        torch.set_num_threads(self.threads)

    def run(self, *tasks: Callable[[], Any], balanced: bool = True) -> list[Any]:
        """Results of ``tasks`` in order: side by side on the free cores when there are several
        and the tasks cost about the same (``balanced``: a short pass beside a long one leaves
        its core idle, and then one after the other on all cores is faster)."""
        free = self.free_cores()
        workers = min(len(tasks), self.threads) if self.enabled and balanced else 1
        if workers <= 1:
            return [task() for task in tasks]  # on ``free`` intra-op threads
        grad = torch.is_grad_enabled()  # thread-local: the workers must inherit the caller's mode

        def run(task: Callable[[], Any]) -> Any:
            with torch.set_grad_enabled(grad):
                return task()

        torch.set_num_threads(max(1, free // workers))
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(run, task) for task in tasks]
                return [f.result() for f in futures]
        finally:
            torch.set_num_threads(free)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_times() -> tuple[float, float, float] | None:
    """(wall seconds, busy CPU seconds of the whole machine, CPU seconds of this process), or None
    where ``/proc/stat`` is not there (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / tick  # user..steal; guest time is counted in user already
    return time.monotonic(), busy, time.process_time()


def block_params(model: Any) -> int:
    """Parameters a forward pass multiplies with, per token: all but the token embeddings."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def plan_lanes(cost: dict[str, int], together: list[set[str]], ratio: float = 0.5) -> list[tuple[str, ...]]:
    """How passes of the given ``cost`` (parameters multiplied per token) split into two lanes.

    Passes that share weights whose state they switch (a LoRA reference and its policy; a shared
    value model and the RM) must stay in one lane (``together``). Of the allowed two-lane splits
    the one whose slower lane costs least is kept when its lanes are even (the cheaper >=
    ``ratio`` * the dearer); else all passes run in one lane."""
    names = tuple(cost)
    best: tuple[int, tuple[str, ...], tuple[str, ...]] | None = None
    for mask in range(1, 2 ** (len(names) - 1)):  # every split of the passes into two non-empty lanes
        a = tuple(n for i, n in enumerate(names) if not mask >> i & 1)
        b = tuple(n for i, n in enumerate(names) if mask >> i & 1)
        if any(not (pair <= set(a) or pair <= set(b)) for pair in together):
            continue
        ca, cb = sum(cost[n] for n in a), sum(cost[n] for n in b)
        if even(ca, cb, ratio) and (best is None or max(ca, cb) < best[0]):
            best = (max(ca, cb), a, b)
    return [best[1], best[2]] if best is not None else [names]


def even(x: int, y: int, ratio: float = 0.5) -> bool:
    """Whether two passes cost about the same: the cheaper at least ``ratio`` times the dearer."""
    return min(x, y) >= ratio * max(x, y)


def release_freed_memory() -> None:
    """Hand memory freed by the last backward pass back to the OS. glibc keeps freed blocks of the
    activations and gradients in its heap, fragmented, so a process's memory would grow by their
    size on every step; ``malloc_trim`` returns them (Linux/glibc only; elsewhere a no-op)."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux") and not torch.cuda.is_available():  # GPU memory is not the heap
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None
