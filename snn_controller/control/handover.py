"""Policies that fly the task: the warm-up handover (guide first, then the network).

Everything here is numpy, for the deployment path and the ROS nodes; :class:`EnvPolicy`
adapts any of them to :class:`~snn_controller.task.envs.FlightEnv` (torch observations).
"""

from __future__ import annotations

import numpy as np


class GuidedPolicy:
    """The paper's handover applied to flight: the guide flies the first ``warmup_steps`` of each
    episode while the network runs on the same observations (so its membrane state is warm),
    then the network flies. The guide is computed only on steps where some drone needs it, and a
    drone the network flew is handed back to a freshly reset guide (its integrators and observer
    would otherwise hold whatever they saw when it last flew).

    ``network``: an object with ``step(obs) -> actions`` and ``reset(mask=None)``;
    ``guide``: a callable ``guide(obs) -> actions`` with ``reset(mask=None)`` (the PID controller).
    """

    def __init__(self, network, guide, warmup_steps: int = 50):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.network, self.guide, self.warmup_steps = network, guide, warmup_steps
        self.steps = None
        self.network_flew = None  # (N,) bool: the network flew the drone on the last step

    def reset(self, mask=None) -> None:
        self.network.reset(mask)
        self.guide.reset(mask)
        if mask is None or self.steps is None:
            self.steps = self.network_flew = None
        else:
            mask = np.asarray(mask, dtype=bool)
            self.steps[mask] = 0
            self.network_flew[mask] = False

    def network_flying(self) -> np.ndarray:
        return self.steps >= self.warmup_steps

    def __call__(self, obs: np.ndarray, guide_only=None, **guide_kwargs) -> np.ndarray:
        """Actions (N, 4); ``guide_only`` (N,) bool: let the guide fly these drones now."""
        obs = np.asarray(obs, dtype=np.float64)
        if self.steps is None:
            self.steps = np.zeros(len(obs), dtype=np.int64)
            self.network_flew = np.zeros(len(obs), dtype=bool)
        net = self.network.step(obs)
        network = self.network_flying() if guide_only is None else self.network_flying() & ~guide_only
        action = net
        if not network.all():
            takeover = ~network & self.network_flew
            if takeover.any():
                self.guide.reset(takeover)
            action = np.where(network[:, None], net, self.guide(obs, **guide_kwargs))
        self.network_flew = network
        self.steps += 1
        return action


class EnvPolicy:
    """Adapter: a numpy policy ``(obs (N, 18)) -> actions (N, 4)`` as a FlightEnv policy."""

    def __init__(self, policy):
        self.policy = policy

    def reset(self, mask=None):
        self.policy.reset(mask)

    def __call__(self, obs):
        import torch

        actor = obs.actor
        return torch.as_tensor(self.policy(actor.double().numpy()), dtype=actor.dtype)


class SupervisedPolicy:
    """The deployed controller of one drone, or of N drones stepped together: the guided handover
    plus the failsafe.

    ``step(obs)`` with one observation (18,) returns the action (4,), or None for a non-finite
    observation (never fed to the network); with (N, 18) it returns (N, 4), NaN rows for non-finite
    observations. A fault (non-finite observation, stale odometry, reported with :meth:`fault`)
    resets the network and the guide of that drone: the guide flies the next ``warmup_steps`` while
    the network warms up again from zero state, then the network takes over.

    ``envelope`` [m]: the network was trained within +-0.6 m of its target (docs/task.md), so while
    any position-error component is larger (a take-off, a far goal) the guide flies and the
    network is held at zero state; it takes over after ``warmup_steps`` inside the envelope.
    """

    def __init__(self, network, guide, warmup_steps: int = 50, envelope: float = 0.5):
        self.guided = GuidedPolicy(network, guide, warmup_steps)
        self.envelope = envelope
        self.faults, self.last_fault, self.invalid = 0, "", 0

    @property
    def network_flew(self):
        """(N,) bool: the network flew each drone on the last step (None before the first)."""
        return self.guided.network_flew

    def reset(self, mask=None) -> None:
        self.guided.reset(mask)

    def fault(self, reason: str, mask=None) -> None:
        self.faults += 1
        self.last_fault = reason
        self.guided.reset(mask)

    def step(self, obs: np.ndarray, yaw=0.0):
        single = np.ndim(obs) == 1 or np.shape(obs)[0] == 1
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        invalid = ~np.isfinite(obs).all(-1)
        if invalid.any():
            self.invalid += int(invalid.sum())
            self.fault("non-finite observation", None if single else invalid)
            if single:
                return None
            obs = np.where(invalid[:, None], 0.0, obs)
        # Outside the trained envelope the guide flies; the network waits at zero state and
        # warms up for warmup_steps inside the envelope before it flies.
        held = (np.abs(obs[:, :3]).max(-1) > self.envelope) | invalid
        yaw = np.broadcast_to(np.asarray(yaw, dtype=np.float64), (len(obs),)).copy()
        action = self.guided(obs, guide_only=held, target_yaw=yaw)
        if held.any():
            self.guided.steps[held] = 0
            self.guided.network.reset(held)
        action[invalid] = np.nan
        return action[0] if single else action

    def flying(self) -> str:
        """Who flies drone 0 (a single drone's controller): 'guide' or 'network'."""
        steps = self.guided.steps
        return "guide" if steps is None or not self.guided.network_flying()[0] else "network"

    def status(self) -> dict:
        net = self.guided.network
        return {"flying": self.flying(), "faults": self.faults, "invalid_observations": self.invalid,
                "last_fault": self.last_fault, "spikes_per_step": [round(x, 2) for x in net.spikes_per_step()]}


class GuideOnly:
    """A guide (the PID) flying alone, with the step / reset of :class:`SupervisedPolicy`."""

    network_flew = None  # no network: nobody to hand over to

    def __init__(self, guide):
        self.guide = guide

    def reset(self, mask=None) -> None:
        self.guide.reset(mask)

    def step(self, obs: np.ndarray, yaw=0.0) -> np.ndarray:
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        return self.guide(obs, target_yaw=np.broadcast_to(np.asarray(yaw, dtype=np.float64), (len(obs),)).copy())
