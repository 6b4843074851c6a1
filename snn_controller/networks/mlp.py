"""Non-spiking networks: the critics, the ANN actor (reference) and the privileged guide ANN.

Every actor shares the spiking actor's interface (``zero_state``, ``step``, ``unroll``,
``reset_state``, ``detach_state``, ``set_slope``), so the training code treats them alike; an MLP
simply has no state.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes, activation=nn.ReLU, out_activation=None) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if out_activation is not None:
        layers.append(out_activation())
    return nn.Sequential(*layers)


class MLPActor(nn.Module):
    """obs -> hidden (ReLU) -> action_dim -> tanh. Stateless. The guide ANN is 146 -> 64 -> 64 -> 4."""

    def __init__(self, obs_dim: int = 18, hidden=(256, 128), action_dim: int = 4):
        super().__init__()
        self.obs_dim, self.hidden, self.action_dim = obs_dim, tuple(hidden), action_dim
        sizes = (obs_dim, *hidden)
        self.layers = nn.ModuleList(nn.ModuleDict({"linear": nn.Linear(a, b)}) for a, b in zip(sizes[:-1], sizes[1:]))
        self.readout = nn.Linear(sizes[-1], action_dim)
        self.register_buffer("slope", torch.tensor(0.0))  # unused: an ANN has no surrogate

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has {obs.shape[-1]} values, the actor expects {self.obs_dim}")
        x = obs
        for layer in self.layers:
            x = torch.relu(layer["linear"](x))
        return torch.tanh(self.readout(x))

    def set_slope(self, k: float) -> None:
        pass

    def zero_state(self, batch: int, dtype=None):
        return ()

    @staticmethod
    def reset_state(state, mask):
        return state

    @staticmethod
    def detach_state(state):
        return state

    def step(self, state, obs):
        return self(obs), state, []

    def unroll(self, obs, state=None):
        return self(obs), (), torch.zeros(0)


class Critic(nn.Module):
    """Q(s, a) on the privileged observation (146) and the action: [256, 128] ReLU, time invariant."""

    def __init__(self, obs_dim: int = 146, action_dim: int = 4, hidden=(256, 128)):
        super().__init__()
        self.net = mlp((obs_dim + action_dim, *hidden, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)
