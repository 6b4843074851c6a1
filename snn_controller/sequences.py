"""Cutting rollouts into training windows (sequences) that never cross an episode boundary."""

from __future__ import annotations

import numpy as np


def window_starts(episode_start: np.ndarray, length: int, stride: int, min_steps: int) -> np.ndarray:
    """Windows (k, 3) = (time, drone, valid steps) of ``length`` steps inside one episode each.

    ``episode_start`` (S, N) bool: True where a new episode begins at that step (row 0 is a start).
    Windows begin at each episode's first step and every ``stride`` steps after it; one more ends
    at the episode's last step when the stride misses it, so the steps before a crash and the
    crash itself are trained on. An episode shorter than ``length`` but at least ``min_steps``
    long that ended inside the rollout (a crash) gets one window from its first step, valid for
    its own steps only: the rest of that window is masked out.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1 (got {length}, {stride})")
    steps, drones = episode_start.shape
    starts = episode_start.copy()
    starts[0] = True
    out = []
    for d in range(drones):
        begins = np.flatnonzero(starts[:, d])
        ends = np.append(begins[1:], steps)
        for b, e in zip(begins, ends):
            if e - b >= length:
                regular = list(range(b, e - length + 1, stride))
                if regular[-1] + length < e:
                    regular.append(e - length)
                out += [(t, d, length) for t in regular]
            elif e - b >= min_steps and b + length <= steps:
                out.append((b, d, e - b))
    return np.array(out, dtype=np.int64).reshape(-1, 3)
