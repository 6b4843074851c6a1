"""Deployment path of the spiking actor in numpy only (imports no torch).

Same equations as :mod:`snn_controller.snn` (see there): per LIF layer
U = beta U + W x + b - S_prev theta; S = (U > theta). The state lives in the object, one
control step per :meth:`step`; :meth:`reset` zeroes it. This is what the ``snn_policy`` node runs.
"""

from __future__ import annotations

import numpy as np

from .model_file import load_model


class NumpySpikingActor:
    """Stateful single-drone (or small batch) inference of a ``lif_actor`` model file."""

    def __init__(self, tensors: dict[str, np.ndarray], manifest: dict, batch: int = 1, dtype=np.float64):
        arch = manifest["architecture"]
        if arch["type"] != "lif_actor":
            raise ValueError(f"not a spiking model: architecture type {arch['type']!r}")
        self.manifest, self.batch, self.dtype = manifest, batch, dtype
        self.layers = []
        for i in range(len(arch["hidden"])):
            w = np.ascontiguousarray(tensors[f"layers.{i}.linear.weight"].T, dtype=dtype)  # (in, out)
            b = tensors[f"layers.{i}.linear.bias"].astype(dtype)
            beta = np.clip(tensors[f"layers.{i}.beta"], 0.0, 1.0).astype(dtype)
            theta = tensors[f"layers.{i}.theta"].astype(dtype)
            self.layers.append((w, b, beta, theta))
        self.readout_w = np.ascontiguousarray(tensors["readout.weight"].T, dtype=dtype)
        self.readout_b = tensors["readout.bias"].astype(dtype)
        self.obs_dim = arch["obs_dim"]
        self.reset()

    @classmethod
    def from_file(cls, path, drone: str | None = None, **kwargs) -> "NumpySpikingActor":
        tensors, manifest = load_model(path, drone=drone)
        return cls(tensors, manifest, **kwargs)

    def reset(self, mask=None) -> None:
        """Zero the membrane state of all rows, or of those where ``mask`` is True."""
        if mask is None:
            self.u = [np.zeros((self.batch, len(b)), self.dtype) for _, b, _, _ in self.layers]
            self.s = [np.zeros((self.batch, len(b)), self.dtype) for _, b, _, _ in self.layers]
            self.spike_totals = np.zeros(len(self.layers))  # spikes summed over steps and rows
            self.steps = 0
            return
        mask = np.asarray(mask, dtype=bool)
        for u, s in zip(self.u, self.s):
            u[mask] = 0
            s[mask] = 0

    def step(self, obs: np.ndarray) -> np.ndarray:
        """obs (batch, obs_dim) or (obs_dim,) -> actions (batch, 4) in [-1, 1]."""
        x = np.asarray(obs, dtype=self.dtype).reshape(self.batch, self.obs_dim)
        for i, (w, b, beta, theta) in enumerate(self.layers):
            u = beta * self.u[i] + (x @ w + b) - self.s[i] * theta
            s = (u > theta).astype(self.dtype)
            self.u[i], self.s[i] = u, s
            self.spike_totals[i] += s.sum()
            x = s
        self.steps += 1
        return np.tanh(x @ self.readout_w + self.readout_b)

    def spikes_per_step(self) -> list[float]:
        """Mean number of spikes per control step per drone, for each layer, since the last full reset."""
        return (self.spike_totals / max(self.steps * self.batch, 1)).tolist()
