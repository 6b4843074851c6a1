"""Cutting rollouts into training windows (sequences) that never cross an episode boundary."""

from __future__ import annotations

import numpy as np


def window_starts(episode_start: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Start indices (k, 2) = (time, drone) of windows of ``length`` steps inside one episode.

    ``episode_start`` (S, N) bool: True where a new episode begins at that step (row 0 is a start).
    Windows begin at each episode's first step and every ``stride`` steps after it, and must
    end before the next episode begins (or the rollout ends).
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
            for t in range(b, e - length + 1, stride):
                out.append((t, d))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def gather_windows(data: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """data (S, N, ...) -> windows (length, k, ...) for the (time, drone) ``starts``."""
    t = starts[:, 0][None, :] + np.arange(length)[:, None]  # (length, k)
    return data[t, starts[:, 1][None, :]]
