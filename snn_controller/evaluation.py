"""Evaluating controllers the paper's way: N test episodes at a named curriculum stage, the PID
guide flying the first ``warmup_steps`` steps, then the network (method.md section 5).

Spiking model files fly through the numpy deployment path (what the node runs); ANN models and
actors still in training fly through torch.
"""

from __future__ import annotations

import numpy as np
import torch

from . import task as T
from .drone import load_drone
from .envs import evaluate
from .model_file import load_model
from .networks import MLPActor
from .pid import PIDController
from .policy import EnvPolicy, GuidedPolicy
from .snn_numpy import NumpySpikingActor


class TorchActorRunner:
    """Any torch actor as a stateful numpy policy for ``batch`` drones (``step``/``reset(mask)``), no grad."""

    def __init__(self, actor, batch: int):
        self.actor, self.batch = actor, batch
        self.reset()

    def reset(self, mask=None):
        if mask is None:
            self.state = self.actor.zero_state(self.batch)
        else:
            self.state = self.actor.reset_state(self.state, torch.as_tensor(np.asarray(mask, dtype=bool)))

    @torch.no_grad()
    def step(self, obs):
        action, self.state, _ = self.actor.step(self.state, torch.as_tensor(obs, dtype=torch.float32))
        return action.double().numpy()


class PrivilegedPolicy:
    """A network on the 146-value observation (the guide ANN) flying alone in FlightEnv."""

    def __init__(self, network):
        self.network = network

    def reset(self, mask=None):
        self.network.reset(mask)

    def __call__(self, obs):
        return torch.as_tensor(self.network.step(obs.privileged.float().numpy()), dtype=obs.actor.dtype)


def flight_policy(network, task: T.TaskConfig, episodes: int, privileged: bool, warmup_steps: int = 50):
    """The evaluated policy: a privileged network alone, or the PID warm-up then the network."""
    if privileged:
        return PrivilegedPolicy(network)
    guide = PIDController(load_drone(task.drone), episodes, task.dt)
    return EnvPolicy(GuidedPolicy(network, guide, warmup_steps))


def load_mlp(path, drone: str | None = None) -> MLPActor:
    """An MLP model file (ANN actor or guide) as a torch network."""
    from .model_file import ModelFileError

    tensors, manifest = load_model(path, drone=drone)
    arch = manifest["architecture"]
    if arch["type"] != "mlp":
        raise ModelFileError(f"{path}: expected an MLP model, got {arch['type']!r}")
    net = MLPActor(arch["obs_dim"], tuple(arch["hidden"]), arch["action_dim"])
    state = {k: torch.as_tensor(v) for k, v in tensors.items()}
    state["slope"] = net.slope
    net.load_state_dict(state)
    return net


def evaluate_model(path, task: T.TaskConfig, episodes: int, seed: int = 0, engine: str = "batched",
                   warmup_steps: int = 50) -> dict:
    """Evaluate a model file; spiking models also report spikes per step per layer."""
    tensors, manifest = load_model(path, drone=task.drone)
    privileged = manifest["architecture"]["obs_dim"] == T.PRIVILEGED_OBS_DIM
    if manifest["architecture"]["type"] == "lif_actor":
        network = NumpySpikingActor(tensors, manifest, batch=episodes)
    else:
        network = TorchActorRunner(load_mlp(path, drone=task.drone), episodes)
    result = evaluate(flight_policy(network, task, episodes, privileged, warmup_steps), task, episodes,
                      engine=engine, seed=seed)
    if isinstance(network, NumpySpikingActor):
        result["spikes_per_step"] = [round(x, 2) for x in network.spikes_per_step()]
    return result
