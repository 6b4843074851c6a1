"""Spiking actor: leaky integrate-and-fire layers trained with a schedulable surrogate gradient.

The paper's LIF neuron (docs/method.md section 2), first order, soft reset by subtraction with a
one-step delay:

    U[t] = beta * U[t-1] + W x[t] + b - S[t-1] * theta      (reset term detached)
    S[t] = H(U[t] - theta)

``beta`` (clamped to [0, 1]) and ``theta`` are per neuron, learnable, initialised U(0, 1).
Forward is the Heaviside step; backward uses the surrogate

    dS/dU = 1 / (1 + k |U - theta|)^2

(the fast-sigmoid derivative divided by k, peak 1). The slope ``k`` is data: a buffer of the
network that a schedule sets at any time, saved with the model.

Actor: obs(18) -> Linear -> LIF(256) -> Linear -> LIF(128) -> Linear(4) -> tanh; no input
encoding (the first Linear feeds currents), the readout is a real-valued Linear of the last
layer's spikes every step. State is explicit: ``zero_state(batch)`` makes it, ``step`` and
``unroll`` take it and return the new one, ``reset_state(state, mask)`` zeroes some rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

State = tuple  # per LIF layer: (membrane U (B, n), last spikes S (B, n))


class FastSigmoidSpike(torch.autograd.Function):
    """Heaviside forward, 1 / (1 + k|x|)^2 backward, x = U - theta."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, slope)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, slope = ctx.saved_tensors
        return grad_output / (1.0 + slope * x.abs()) ** 2, None


spike = FastSigmoidSpike.apply


@dataclass(frozen=True)
class ActorArchitecture:
    obs_dim: int = 18
    hidden: tuple[int, ...] = (256, 128)
    action_dim: int = 4

    def __post_init__(self):
        if self.obs_dim < 1 or self.action_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"invalid actor architecture {self}")


class LIFLayer(nn.Module):
    """Linear synapses into ``size`` LIF neurons."""

    def __init__(self, in_features: int, size: int):
        super().__init__()
        self.linear = nn.Linear(in_features, size)
        self.beta = nn.Parameter(torch.rand(size))
        self.theta = nn.Parameter(torch.rand(size))

    def neuron(self, current: torch.Tensor, state, slope: torch.Tensor):
        """One time step of the neurons given the synaptic ``current`` (B, size)."""
        u_prev, s_prev = state
        u = self.beta.clamp(0.0, 1.0) * u_prev + current - s_prev.detach() * self.theta
        s = spike(u - self.theta, slope)
        return s, (u, s)


class SpikingActor(nn.Module):
    """The paper's spiking actor; ``slope`` is the surrogate slope k (a buffer, set any time)."""

    def __init__(self, arch: ActorArchitecture = ActorArchitecture(), slope: float = 2.0):
        super().__init__()
        self.arch = arch
        sizes = (arch.obs_dim,) + tuple(arch.hidden)
        self.layers = nn.ModuleList(LIFLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.readout = nn.Linear(sizes[-1], arch.action_dim)
        self.register_buffer("slope", torch.tensor(float(slope)))

    def set_slope(self, k: float) -> None:
        """Change the surrogate slope in place: no rebuild, the optimiser state stays valid."""
        if not k > 0:
            raise ValueError(f"surrogate slope must be > 0, got {k}")
        self.slope.fill_(float(k))

    # --- state -------------------------------------------------------------------------
    def zero_state(self, batch: int, dtype=None) -> State:
        dtype = dtype or self.readout.weight.dtype
        return tuple((torch.zeros(batch, n, dtype=dtype), torch.zeros(batch, n, dtype=dtype))
                     for n in self.arch.hidden)

    @staticmethod
    def reset_state(state: State, mask: torch.Tensor) -> State:
        """Zero the state of the batch rows where ``mask`` is True (new episodes)."""
        keep = (~mask).to(state[0][0].dtype)[:, None]
        return tuple((u * keep, s * keep) for u, s in state)

    @staticmethod
    def detach_state(state: State) -> State:
        return tuple((u.detach(), s.detach()) for u, s in state)

    def _check(self, obs: torch.Tensor, state: State) -> None:
        if obs.shape[-1] != self.arch.obs_dim:
            raise ValueError(f"observation has {obs.shape[-1]} values, the actor expects {self.arch.obs_dim}")
        if len(state) != len(self.layers) or state[0][0].shape[0] != obs.shape[-2]:
            raise ValueError(f"state does not fit: batch {obs.shape[-2]}, state batch {state[0][0].shape[0]}, "
                             f"{len(state)} layer states for {len(self.layers)} layers")

    # --- forward -----------------------------------------------------------------------
    def step(self, state: State, obs: torch.Tensor):
        """One control step: obs (B, obs_dim) -> (action (B, action_dim), new state, spikes per layer)."""
        self._check(obs, state)
        x, new_state, spikes = obs, [], []
        for layer, s in zip(self.layers, state):
            x, s = layer.neuron(layer.linear(x), s, self.slope)
            new_state.append(s)
            spikes.append(x)
        return torch.tanh(self.readout(x)), tuple(new_state), spikes

    def unroll(self, obs: torch.Tensor, state: State | None = None):
        """BPTT path: obs (T, B, obs_dim) -> actions (T, B, action_dim), final state, spike rates per layer.

        The first layer's currents for all steps come from one matmul; the time loop only runs
        the neurons and the later layers (unbind, no per-step indexing).
        """
        steps, batch = obs.shape[:2]
        state = self.zero_state(batch, obs.dtype) if state is None else state
        self._check(obs[0], state)
        currents = self.layers[0].linear(obs).unbind(0)
        state = list(state)
        out, rates = [], torch.zeros(len(self.layers), dtype=obs.dtype)
        for current in currents:
            x = current
            for i, layer in enumerate(self.layers):
                if i > 0:
                    x = layer.linear(x)
                x, state[i] = layer.neuron(x, state[i], self.slope)
                rates[i] = rates[i] + x.detach().mean()
            out.append(x)
        actions = torch.tanh(self.readout(torch.stack(out)))
        return actions, tuple(state), rates / steps

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.unroll(obs)[0]
