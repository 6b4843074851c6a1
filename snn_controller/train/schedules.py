"""Schedules as plain functions of training progress (docs/method.md sections 3 and 5), each tested alone.

Progress is a float in [0, 1] (completed share of the training iterations).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SlopeSchedule:
    """Surrogate slope k over training.

    fixed: k = initial.
    interval: k steps from ``initial`` to ``maximum`` in ``intervals`` equal steps of progress.
    adaptive (paper Eq. 7): k_t = mean over the last ``window`` evaluations of 0.5 r + 0.5 r',
        r the evaluation score normalised to [0, 1] over [score_min, score_max] and r' its first
        difference; the filtered value is mapped affinely onto [minimum, maximum] and clamped.
        (The paper does not say how r is normalised; raw returns of ~400 would always hit the clamp.)
    authors: the authors' code: k = 0.2 (initial + s maximum) + 0.8 m, with s the normalised score
        and m a momentum (exponential average, ``momentum``) of that target, clamped to [minimum, maximum].
    """

    kind: Literal["fixed", "interval", "adaptive", "authors"] = "adaptive"
    initial: float = 2.0  # k at the start of training (the paper starts at 2)
    minimum: float = 1.0
    maximum: float = 100.0
    intervals: int = 5  # interval schedule: number of steps
    window: int = 10  # adaptive: evaluations averaged (Eq. 7 sums i = 0..9)
    score_min: float = 0.0  # adaptive/authors: evaluation return mapped to 0
    score_max: float = 500.0  # ... and to 1 (500 steps of reward <= 1)
    momentum: float = 0.9  # authors: weight of the past in the momentum term

    def __post_init__(self):
        if not 0 < self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"slope schedule needs 0 < minimum <= initial <= maximum, got {self}")
        if self.intervals < 1 or self.window < 1 or self.score_max <= self.score_min:
            raise ValueError(f"invalid slope schedule {self}")


class SlopeScheduler:
    """Stateful: feed evaluation scores with :meth:`observe`, read ``slope(progress)``."""

    def __init__(self, schedule: SlopeSchedule):
        self.schedule = schedule
        self.scores: list[float] = []
        self._terms: deque = deque(maxlen=schedule.window)
        self._momentum: float | None = None
        self.k = schedule.initial

    def normalised(self, score: float) -> float:
        s = self.schedule
        return min(max((score - s.score_min) / (s.score_max - s.score_min), 0.0), 1.0)

    def observe(self, score: float) -> float:
        """Record an evaluation score; returns the new slope (adaptive kinds)."""
        s = self.schedule
        r = self.normalised(score)
        r_prev = self.normalised(self.scores[-1]) if self.scores else r
        self.scores.append(float(score))
        if s.kind == "adaptive":
            self._terms.append(0.5 * r + 0.5 * (r - r_prev))
            filtered = sum(self._terms) / len(self._terms)
            self.k = _clamp(s.minimum + filtered * (s.maximum - s.minimum), s.minimum, s.maximum)
        elif s.kind == "authors":
            target = 0.2 * (s.initial + r * s.maximum)
            self._momentum = target if self._momentum is None else (
                s.momentum * self._momentum + (1 - s.momentum) * target)
            self.k = _clamp(target + 0.8 * self._momentum, s.minimum, s.maximum)
        return self.k

    def slope(self, progress: float) -> float:
        s = self.schedule
        if s.kind == "fixed":
            return s.initial
        if s.kind == "interval":
            step = min(int(progress * s.intervals), s.intervals)
            return s.initial + (s.maximum - s.initial) * step / s.intervals
        return self.k

    def state_dict(self) -> dict:
        return {"scores": list(self.scores), "terms": list(self._terms), "momentum": self._momentum, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.scores = list(state["scores"])
        self._terms = deque(state["terms"], maxlen=self.schedule.window)
        self._momentum, self.k = state["momentum"], state["k"]


def _clamp(x, lo, hi):
    return min(max(x, lo), hi)


def guide_steps(progress: float, episode_steps: int = 500, floor: int = 50, decay_share: float = 0.75) -> int:
    """JSRL handover: the guide flies the first G steps; G shrinks linearly from the episode length
    to ``floor`` (the warm-up) over the first ``decay_share`` of training, then stays there."""
    if not 0 < decay_share <= 1:
        raise ValueError(f"decay_share must be in (0, 1], got {decay_share}")
    f = min(max(progress / decay_share, 0.0), 1.0)
    return int(round(episode_steps + f * (floor - episode_steps)))


def curriculum_stage(progress: float, stages: int = 6) -> int:
    """Reward curriculum: stage 0 .. stages-1, advancing in equal shares of training."""
    return min(int(max(progress, 0.0) * stages), stages - 1)


def bc_weight(iteration: int, initial: float = 0.2, decay: float = 0.99) -> float:
    """lambda_BC of the actor loss: initial * decay^iteration (docs/method.md section 5)."""
    return initial * decay**iteration


