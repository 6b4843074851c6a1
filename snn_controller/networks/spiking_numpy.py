"""Deployment path of the spiking actor in numpy only (imports no torch).

Same equations as :mod:`snn_controller.networks.spiking` (see there): per LIF layer
U = beta U + W x + b - S_prev theta; S = (U > theta). The state lives in the object, one
control step per :meth:`step`; :meth:`reset` zeroes it. This is what the ``snn_policy`` node runs.

Written for latency (~8 us a step for the paper's network at batch 1): every buffer is
preallocated and updated in place, and each layer's input carries a constant 1 column so the
bias rides in the matrix product. Spikes are written straight into the next layer's input.
"""

from __future__ import annotations

import numpy as np

from ..io.model_file import load_model


class NumpySpikingActor:
    """Stateful inference of a ``lif_actor`` model for ``batch`` drones."""

    def __init__(self, tensors: dict[str, np.ndarray], manifest: dict, batch: int = 1, dtype=np.float64):
        arch = manifest["architecture"]
        if arch["type"] != "lif_actor":
            raise ValueError(f"not a spiking model: architecture type {arch['type']!r}")
        self.manifest, self.batch, self.dtype = manifest, batch, dtype
        self.obs_dim, self.sizes = arch["obs_dim"], list(arch["hidden"])
        n_layers = len(self.sizes)

        def augmented(weight, bias):  # (out, in), (out,) -> (in + 1, out)
            return np.ascontiguousarray(np.vstack([weight.T, bias[None]]), dtype=dtype)

        self.weights = [augmented(tensors[f"layers.{i}.linear.weight"], tensors[f"layers.{i}.linear.bias"])
                        for i in range(n_layers)]
        self.beta = [np.clip(tensors[f"layers.{i}.beta"], 0.0, 1.0).astype(dtype) for i in range(n_layers)]
        self.theta = [tensors[f"layers.{i}.theta"].astype(dtype) for i in range(n_layers)]
        self.readout = augmented(tensors["readout.weight"], tensors["readout.bias"])
        # inputs[i]: layer i's input with a trailing 1; inputs[i + 1][:, :-1] holds layer i's spikes
        self.inputs = [np.ones((batch, n + 1), dtype) for n in [self.obs_dim] + self.sizes]
        self.u = [np.zeros((batch, n), dtype) for n in self.sizes]
        self.s = [inp[:, :-1] for inp in self.inputs[1:]]  # views: the spikes of the last step
        self._reset_term = [np.zeros((batch, n), dtype) for n in self.sizes]
        self.reset()

    @classmethod
    def from_file(cls, path, drone: str | None = None, **kwargs) -> "NumpySpikingActor":
        tensors, manifest = load_model(path, drone=drone)
        return cls(tensors, manifest, **kwargs)

    def reset(self, mask=None) -> None:
        """Zero the membrane state of all rows, or of those where ``mask`` is True."""
        rows = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        for u, s in zip(self.u, self.s):
            u[rows] = 0
            s[rows] = 0
        if mask is None:
            self.spike_totals = np.zeros(len(self.sizes))  # spikes summed over steps and rows
            self.steps = 0

    def step(self, obs: np.ndarray) -> np.ndarray:
        """obs (batch, obs_dim) or (obs_dim,) -> actions (batch, 4) in [-1, 1]."""
        self.inputs[0][:, :-1] = np.reshape(obs, (self.batch, self.obs_dim))
        for i, (w, beta, theta) in enumerate(zip(self.weights, self.beta, self.theta)):
            u, s, reset_term = self.u[i], self.s[i], self._reset_term[i]
            np.multiply(s, theta, out=reset_term)  # S[t-1] theta, before S is overwritten
            u *= beta
            u += self.inputs[i] @ w
            u -= reset_term
            np.greater(u, theta, out=s, casting="unsafe")  # S[t], written into the next layer's input
            self.spike_totals[i] += np.count_nonzero(s)
        self.steps += 1
        return np.tanh(self.inputs[-1] @ self.readout)

    def spikes_per_step(self) -> list[float]:
        """Mean number of spikes per control step per drone, for each layer, since the last full reset."""
        return (self.spike_totals / max(self.steps * self.batch, 1)).tolist()
