"""CPU lanes: passes side by side, and only as many intra-op threads as there are free cores
when another process takes some (no timing: the decisions, from simulated /proc/stat)."""

from __future__ import annotations

import threading

import pytest
import torch

from alignloop.train import cpu_lanes
from alignloop.train.cpu_lanes import CpuLanes, plan_lanes


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_lanes_give_up_the_cores_another_process_takes(monkeypatch) -> None:
    monkeypatch.setattr(cpu_lanes, "_affinity", lambda: 2)
    readings = iter(
        [
            (0.0, 0.0, 0.0),  # first look: nothing known yet, the planned cores
            (1.0, 1.9, 0.9),  # in 1 s the machine was busy 1.9 core-s, 0.9 of them ours: one core taken
            (1.2, 2.1, 1.1),  # 0.2 s later: too short a window to judge, the decision stands
            (1.3, 2.2, 1.2),
            (3.0, 3.9, 2.9),  # 2 s after the last judged look: all of the machine's work was ours again
        ]
    )
    monkeypatch.setattr(cpu_lanes, "_machine_times", lambda: next(readings))
    lanes = CpuLanes(True, threads=2)

    def where() -> int:
        return threading.get_ident()

    main = threading.get_ident()
    assert lanes.free_cores() == 2
    assert lanes.free_cores() == 1 and torch.get_num_threads() == 1  # busy: one intra-op thread
    assert lanes.run(where, where, balanced=False) == [main, main]  # one pass after the other, one thread
    assert main not in lanes.run(where, where)  # lanes (no barriers between them) still side by side
    assert torch.get_num_threads() == 1
    lanes.run(where, where)  # quiet again: two intra-op threads for the passes that run alone
    assert torch.get_num_threads() == 2


def test_close_gives_the_planned_threads_back(monkeypatch) -> None:
    monkeypatch.setattr(cpu_lanes, "_affinity", lambda: 2)
    readings = iter([(0.0, 0.0, 0.0), (1.0, 1.9, 0.9)])  # one core taken by another process
    monkeypatch.setattr(cpu_lanes, "_machine_times", lambda: next(readings))
    lanes = CpuLanes(True, threads=2)
    lanes.free_cores()
    assert lanes.free_cores() == 1 and torch.get_num_threads() == 1
    lanes.close()
    assert torch.get_num_threads() == 2


def test_a_short_window_keeps_the_last_decision(monkeypatch) -> None:
    readings = iter([(0.0, 0.0, 0.0), (0.1, 0.2, 0.0)])  # 0.1 s: too short to judge
    monkeypatch.setattr(cpu_lanes, "_machine_times", lambda: next(readings))
    lanes = CpuLanes(True, threads=2)
    assert lanes.free_cores() == 2 and lanes.free_cores() == 2


def test_disabled_lanes_run_in_order_on_the_caller() -> None:
    lanes = CpuLanes(False, threads=4)
    assert not lanes.enabled and lanes.run(lambda: 1, lambda: 2) == [1, 2]


def test_plan_keeps_passes_that_share_weights_in_one_lane() -> None:
    cost = {"policy": 10, "reference": 10, "value": 9, "reward": 9}
    assert sorted(plan_lanes(cost, [])) == [("policy", "value"), ("reference", "reward")]  # slower lane cheapest
    assert sorted(plan_lanes(cost, [{"policy", "reference"}])) == [("policy", "reference"), ("value", "reward")]
    assert plan_lanes({"policy": 10, "value": 1}, []) == [("policy", "value")]  # uneven: one lane
