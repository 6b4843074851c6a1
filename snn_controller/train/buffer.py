"""Sequence replay: rollouts stored as per-drone segments; minibatches of L-step windows.

A rollout of S steps by N drones becomes N segments of S steps (a ring of segments, oldest
overwritten first). Windows of ``window`` steps start at each episode's first step and every
``stride`` steps after it (plus one ending at the episode's last step) and never cross an
episode boundary, so a window can be replayed from zero membrane state. A crashed episode
shorter than a window but at least ``min_steps`` long is kept as a window whose steps after the
crash are masked out (``mask`` in a sample): without it, the states that lead to crashes and the
crashes themselves would never reach the critics or the BC term. Every step also stores its next
observations, so the critics learn on every step of a window.
"""

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


class SequenceBuffer:
    """``fields``: name -> per-step shape, e.g. {"obs": (18,), "reward": ()}; float32 storage."""

    def __init__(self, capacity_steps: int, segment_steps: int, fields: dict, window: int, stride: int,
                 min_steps: int | None = None):
        if window > segment_steps:
            raise ValueError(f"window ({window}) longer than a segment ({segment_steps})")
        self.segments = max(capacity_steps // segment_steps, 1)
        self.segment_steps, self.window, self.stride = segment_steps, window, stride
        self.min_steps = window if min_steps is None else min_steps
        self.fields = {k: tuple(v) for k, v in fields.items()}
        self.data = {k: np.zeros((self.segments, segment_steps, *shape), np.float32) for k, shape in self.fields.items()}
        # per segment: (start time, valid steps) of each window
        self.windows = [np.zeros((0, 2), np.int64) for _ in range(self.segments)]
        self.next_slot, self.filled = 0, 0
        self._rebuild_index()

    def __len__(self) -> int:
        """Stored steps."""
        return self.filled * self.segment_steps

    @property
    def num_windows(self) -> int:
        return len(self._index)

    def add(self, rollout: dict, episode_start: np.ndarray) -> None:
        """``rollout``: name -> (S, N, ...) arrays; ``episode_start`` (S, N): True where an episode begins."""
        steps, drones = episode_start.shape
        if steps != self.segment_steps:
            raise ValueError(f"rollout has {steps} steps, segments hold {self.segment_steps}")
        if set(rollout) != set(self.fields):
            raise ValueError(f"rollout fields {sorted(rollout)} != buffer fields {sorted(self.fields)}")
        starts = window_starts(episode_start, self.window, self.stride, self.min_steps)
        for d in range(drones):
            slot = self.next_slot
            for k, v in rollout.items():
                self.data[k][slot] = v[:, d]
            self.windows[slot] = starts[starts[:, 1] == d][:, [0, 2]]
            self.next_slot = (slot + 1) % self.segments
            self.filled = min(self.filled + 1, self.segments)
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        """Flat (segment, start, valid steps) list of every window, for uniform sampling."""
        parts = [np.concatenate([np.full((len(w), 1), s), w], 1) for s, w in enumerate(self.windows) if len(w)]
        self._index = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)

    def sample(self, batch: int, rng: np.random.Generator) -> dict:
        """name -> (window, batch, ...) float32 arrays of ``batch`` random windows, and ``mask``
        (window, batch): 1 on the steps that belong to the window's episode."""
        if self.num_windows == 0:
            raise ValueError("the buffer holds no window yet")
        pick = self._index[rng.integers(self.num_windows, size=batch)]
        offset = np.arange(self.window)[:, None]
        t = pick[:, 1][None, :] + offset
        batch = {k: v[pick[:, 0][None, :], t] for k, v in self.data.items()}
        batch["mask"] = (offset < pick[:, 2][None, :]).astype(np.float32)
        return batch

    def state_dict(self) -> dict:
        used = self.filled
        return {"data": {k: v[:used].copy() for k, v in self.data.items()},
                "windows": [w.copy() for w in self.windows[:used]], "next_slot": self.next_slot, "filled": used}

    def load_state_dict(self, state: dict) -> None:
        used = state["filled"]
        for k, v in state["data"].items():
            self.data[k][:used] = v
        for i, w in enumerate(state["windows"]):
            w = np.asarray(w, np.int64)
            # checkpoints before masked windows stored start times only, every window full
            self.windows[i] = w if w.ndim == 2 else np.stack([w, np.full_like(w, self.window)], 1)
        self.next_slot, self.filled = state["next_slot"], used
        self._rebuild_index()
