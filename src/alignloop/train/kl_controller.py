"""The KL reward coefficient beta: fixed, or adapted toward a target KL (Ziegler et al. 2019)."""

from __future__ import annotations

from typing import Any


class FixedKLController:
    """beta stays at its initial value."""

    def __init__(self, beta: float) -> None:
        self.value = beta

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon).

    ``kl`` is the batch mean of the per-sequence KL (summed over tokens); ``n_steps`` is the
    number of episodes in that batch, so ``horizon`` is measured in episodes.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        super().__init__(beta)
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(beta: float, adaptive: bool, target: float, horizon: int) -> FixedKLController:
    return AdaptiveKLController(beta, target, horizon) if adaptive else FixedKLController(beta)
