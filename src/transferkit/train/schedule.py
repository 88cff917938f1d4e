"""Learning-rate schedules as multipliers of each param group's own base rate.

Being multipliers (``LambdaLR``) keeps discriminative learning rates intact: every group
follows the same curve at its own scale. The schedules are small classes, not closures,
so ``LambdaLR.state_dict()`` records them and a resumed run continues the same curve.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "onecycle", "constant", "annealed")


class WarmupCosine:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``final``."""

    def __init__(self, total_steps: int, warmup_steps: int, final: float = 0.0):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps - 1))
        self.final = float(final)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class OneCycle:
    """Smith & Topin 2017 one-cycle: cosine up from 1/``div`` to 1 over ``pct`` of the
    steps, then cosine down to 1/(``div`` * ``final_div``) (the learning-rate half of
    ``torch.optim.lr_scheduler.OneCycleLR``, expressed per group)."""

    def __init__(self, total_steps: int, pct: float = 0.3, div: float = 25.0,
                 final_div: float = 1e4):
        self.total_steps = max(1, int(total_steps))
        self.up_steps = max(1, int(pct * self.total_steps))
        self.start = 1.0 / div
        self.end = 1.0 / (div * final_div)

    @staticmethod
    def _cos(a: float, b: float, t: float) -> float:
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __call__(self, step: int) -> float:
        if step < self.up_steps:
            return self._cos(self.start, 1.0, step / self.up_steps)
        down = max(1, self.total_steps - self.up_steps)
        return self._cos(1.0, self.end, min(1.0, (step - self.up_steps) / down))


class WarmupConstant:
    """Linear warm-up, then the base rate unchanged."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.warmup_steps = max(0, int(warmup_steps))

    def __call__(self, step: int) -> float:
        return (step + 1) / (self.warmup_steps + 1) if step < self.warmup_steps else 1.0


class Annealed:
    """Ganin & Lempitsky 2015's annealing, 1 / (1 + α p)^β over training progress p ∈ [0, 1]
    (α = 10, β = 0.75: the base rate falls to ~0.17 of itself), used by DANN and the
    domain-adaptation methods after it; no warm-up."""

    def __init__(self, total_steps: int, alpha: float = 10.0, beta: float = 0.75):
        self.total_steps = max(1, int(total_steps))
        self.alpha, self.beta = float(alpha), float(beta)

    def __call__(self, step: int) -> float:
        progress = min(1.0, step / self.total_steps)
        return (1.0 + self.alpha * progress) ** -self.beta


def make_schedule(kind: str, total_steps: int, warmup_fraction: float = 0.1):
    """The multiplier function for ``torch.optim.lr_scheduler.LambdaLR``."""
    warmup = int(round(warmup_fraction * total_steps))
    if kind == "cosine":
        return WarmupCosine(total_steps, warmup)
    if kind == "onecycle":
        return OneCycle(total_steps)
    if kind == "constant":
        return WarmupConstant(total_steps, warmup)
    if kind == "annealed":
        return Annealed(total_steps)
    raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}.")
