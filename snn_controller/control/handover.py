"""The controller contract, the guide -> network handover and the deployed controller's failsafe.

A **controller** flies N drones: ``reset(mask=None)`` clears the state of all drones or of those
where ``mask`` is True, and ``controller(obs)`` maps an :class:`~snn_controller.task.observation.Observation`
(numpy arrays) to motor commands (N, 4) in [-1, 1]. The PID, a network flying alone
(:class:`NetworkController`), the handover and the deployed controller are controllers; training
rollouts, evaluations, missions and the ROS nodes call nothing else.

A **network** is one step of a (stateful) function: ``step(inputs (N, D)) -> (N, 4)`` and
``reset(mask=None)`` (the numpy spiking actor, or a torch actor behind
:class:`~snn_controller.control.controllers.TorchNetwork`). A controller reads the observation's
named view the network was trained on (``actor``: 18 values, ``privileged``: 146).

Everything here is numpy.
"""

from __future__ import annotations

import numpy as np


class NetworkController:
    """A network flying alone (the guide ANN, on the privileged view)."""

    def __init__(self, network, view: str = "actor"):
        self.network, self.view = network, view

    def reset(self, mask=None) -> None:
        self.network.reset(mask)

    def __call__(self, obs) -> np.ndarray:
        return self.network.step(obs.view(self.view))


class Handover:
    """The paper's handover, the one used by training, evaluation and the nodes: the guide flies
    the first ``guide_steps`` of each drone's episode (and any drone in ``guide_only``) while the
    network runs on the same observations, so its membrane state is warm; then the network flies.

    The guide is computed only on steps where some drone needs it, or on every step with
    ``label=True`` (training's BC labels, kept in :attr:`guide_action`). A drone the network flew
    that the guide takes back gets a freshly reset guide: its integrators and observer would
    otherwise hold whatever they saw when it last flew. ``network`` None: the guide flies alone.
    """

    def __init__(self, network, guide, guide_steps: int = 50, view: str = "actor", label: bool = False):
        if guide_steps < 0:
            raise ValueError(f"guide_steps must be >= 0, got {guide_steps}")
        self.network, self.guide, self.guide_steps = network, guide, guide_steps
        self.view, self.label = view, label
        self.steps = None  # (N,) steps of each drone's episode so far
        self.network_flew = None  # (N,) bool: the network flew the drone on the last step
        self.guide_action = None  # the guide's answer on the last step (None: not computed)

    def reset(self, mask=None) -> None:
        if self.network is not None:
            self.network.reset(mask)
        self.guide.reset(mask)
        if mask is None or self.steps is None:
            self.steps = self.network_flew = None
        else:
            mask = np.asarray(mask, dtype=bool)
            self.steps[mask] = 0
            self.network_flew[mask] = False

    def network_flying(self) -> np.ndarray:
        return (self.steps >= self.guide_steps) & (self.network is not None)

    def __call__(self, obs, guide_only=None) -> np.ndarray:
        """Actions (N, 4); ``guide_only`` (N,) bool: let the guide fly these drones now."""
        if self.steps is None:
            self.steps = np.zeros(len(obs), dtype=np.int64)
            self.network_flew = np.zeros(len(obs), dtype=bool)
        network = self.network_flying() if guide_only is None else self.network_flying() & ~guide_only
        action = None if self.network is None else self.network.step(obs.view(self.view))
        self.guide_action = None
        if self.label or not network.all():
            takeover = ~network & self.network_flew
            if takeover.any():
                self.guide.reset(takeover)
            self.guide_action = self.guide(obs)
            action = self.guide_action if action is None else np.where(network[:, None], action, self.guide_action)
        self.network_flew = network
        self.steps += 1
        return action


class SupervisedPolicy:
    """The deployed controller of N drones: the handover plus the failsafe.

    A drone with a non-finite observation gets a NaN action row and is never fed to the network;
    a fault (a non-finite observation, stale odometry reported with :meth:`fault`) resets the
    network and the guide of that drone: the guide flies the next ``warmup_steps`` while the
    network warms up again from zero state, then the network takes over.

    ``envelope`` [m]: the network was trained within +-0.6 m of its target (docs/task.md), so while
    any position-error component is larger (a take-off, a far goal) the guide flies and the
    network is held at zero state; it takes over after ``warmup_steps`` inside the envelope.
    ``network`` None: the guide flies alone, behind the same failsafe.
    """

    def __init__(self, network, guide, warmup_steps: int = 50, envelope: float = 0.5):
        self.handover = Handover(network, guide, warmup_steps)
        self.envelope = envelope
        self.faults, self.last_fault, self.invalid = 0, "", 0

    @property
    def network_flew(self):
        """(N,) bool: the network flew each drone on the last step (None before the first, or
        without a network)."""
        return None if self.handover.network is None else self.handover.network_flew

    def reset(self, mask=None) -> None:
        self.handover.reset(mask)

    def fault(self, reason: str, mask=None) -> None:
        self.faults += 1
        self.last_fault = reason
        self.handover.reset(mask)

    def __call__(self, obs) -> np.ndarray:
        invalid = ~np.isfinite(obs.actor).all(-1)
        if invalid.any():
            self.invalid += int(invalid.sum())
            self.fault("non-finite observation", invalid)
            if invalid.all():  # nothing to fly: step neither the network nor the guide
                return np.full((len(obs), 4), np.nan)
            obs = type(obs)(actor=np.where(invalid[:, None], 0.0, obs.actor), target_yaw=obs.target_yaw)
        # Outside the trained envelope the guide flies; the network waits at zero state and
        # warms up for warmup_steps inside the envelope before it flies.
        held = (np.abs(obs.position_error).max(-1) > self.envelope) | invalid
        action = np.array(self.handover(obs, guide_only=held), dtype=np.float64)
        if held.any() and self.handover.network is not None:
            self.handover.steps[held] = 0
            self.handover.network.reset(held)
        if invalid.any():  # the stand-in zeros leave no trace in the network or the guide
            self.handover.reset(invalid)
            action[invalid] = np.nan
        return action

    def flying(self) -> str:
        """Who flies drone 0 (a single drone's controller): 'guide' or 'network'."""
        h = self.handover
        return "guide" if h.steps is None or not h.network_flying()[0] else "network"

    def status(self) -> dict:
        net = self.handover.network
        spikes = [] if net is None or not hasattr(net, "spikes_per_step") else net.spikes_per_step()
        return {"flying": self.flying(), "faults": self.faults, "invalid_observations": self.invalid,
                "last_fault": self.last_fault, "spikes_per_step": [round(x, 2) for x in spikes]}
