"""Evaluating controllers the paper's way: N test episodes at a named curriculum stage, the guide
flying the first ``warmup_steps`` steps, then the network (docs/method.md section 5).

A guide is named by a string: ``"pid"`` (the PID with config/controllers/pid.yaml), a PID gains
file (``.yaml``, e.g. config/controllers/pid_weak.yaml), or a guide ANN model file.

Spiking model files fly through the numpy deployment path (what the node runs); ANN models and
actors still in training fly through torch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.model_file import load_model
from ..networks.files import load_actor
from ..networks.spiking_numpy import NumpySpikingActor
from ..sim.drone import load_drone
from ..task import spec as T
from ..task.envs import evaluate
from .handover import EnvPolicy, GuidedPolicy, GuideOnly, SupervisedPolicy
from .pid import PIDController, PIDGains, PIDPolicy, load_pid_gains


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


class EnvGuidedPolicy(GuidedPolicy):
    """The handover of :class:`GuidedPolicy` for a guide that flies FlightEnv observations (a guide
    ANN needs the privileged 146 values): the network steps on every actor observation."""

    def __call__(self, obs):
        if self.steps is None:
            self.steps = np.zeros(len(obs.actor), dtype=np.int64)
            self.network_flew = np.zeros(len(obs.actor), dtype=bool)
        network_flying = torch.as_tensor(self.network_flying())
        net = torch.as_tensor(self.network.step(obs.actor.double().numpy()), dtype=obs.actor.dtype)
        self.steps += 1
        if network_flying.all():  # the guide is not needed (nor computed) once the network flies
            return net
        return torch.where(network_flying[:, None], net, self.guide(obs))


def pid_gains(spec: str) -> PIDGains | None:
    """The gains of a PID guide spec (``"pid"`` or a gains YAML file); None for a guide ANN file."""
    if spec == "pid":
        return load_pid_gains()
    if str(spec).endswith((".yaml", ".yml")):
        return load_pid_gains(spec)
    return None


def make_guide(spec: str, drone: str, n: int, dt: float):
    """A guide as a FlightEnv policy: a PID (``"pid"`` or a gains file), or a guide ANN model file
    (privileged observation)."""
    gains = pid_gains(spec)
    if gains is not None:
        return PIDPolicy(load_drone(drone), n, dt, gains)
    return PrivilegedPolicy(TorchActorRunner(load_actor(spec, drone=drone)[0], n))


def flight_policy(network, task: T.TaskConfig, episodes: int, privileged: bool, warmup_steps: int = 50,
                  guide: str = "pid"):
    """The evaluated policy: a privileged network alone, or the guide's warm-up then the network.

    A PID guide goes through the deployment path (:class:`GuidedPolicy` on numpy, as the node
    flies); a guide ANN file needs the privileged observation, so it hands over in FlightEnv.
    """
    if privileged:
        return PrivilegedPolicy(network)
    gains = pid_gains(guide)
    if gains is not None:
        pid = PIDController(load_drone(task.drone), episodes, task.dt, gains)
        return EnvPolicy(GuidedPolicy(network, pid, warmup_steps))
    return EnvGuidedPolicy(network, make_guide(guide, task.drone, episodes, task.dt), warmup_steps)


def evaluate_model(path, task: T.TaskConfig, episodes: int, seed: int = 0, engine: str = "batched",
                   warmup_steps: int = 50, guide: str = "pid") -> dict:
    """Evaluate a model file (``guide``: "pid" or a guide ANN file flies the warm-up); spiking
    models also report spikes per step per layer."""
    tensors, manifest = load_model(path, drone=task.drone)
    privileged = manifest["architecture"]["obs_dim"] == T.PRIVILEGED_OBS_DIM
    if manifest["architecture"]["type"] == "lif_actor":
        network = NumpySpikingActor(tensors, manifest, batch=episodes)
    else:
        network = TorchActorRunner(load_actor(path, drone=task.drone)[0], episodes)
    result = evaluate(flight_policy(network, task, episodes, privileged, warmup_steps, guide), task, episodes,
                      engine=engine, seed=seed)
    if isinstance(network, NumpySpikingActor):
        result["spikes_per_step"] = [round(x, 2) for x in network.spikes_per_step()]
    return result


def deployed_controller(spec: str, drone: str, n: int, dt: float, warmup_steps: int = 50, guide: str = "pid",
                        envelope: float = 0.5):
    """What the snn_policy node flies, for ``n`` drones: a model file with its PID guide and failsafe
    (:class:`SupervisedPolicy`), or a PID alone (``"pid"`` or a gains file)."""
    gains = pid_gains(spec)
    if gains is not None:
        return GuideOnly(PIDController(load_drone(drone), n, dt, gains))
    guide_gains = pid_gains(guide)
    if guide_gains is None:
        raise ValueError(f"the deployed controller's guide and failsafe is a PID ('pid' or a gains file), got {guide!r}")
    tensors, manifest = load_model(spec, drone=drone)
    if manifest["architecture"]["obs_dim"] != T.OBS_DIM:
        raise ValueError(f"{spec}: a privileged network (146 inputs) cannot fly a real drone's observations")
    if manifest["architecture"]["type"] == "lif_actor":
        network = NumpySpikingActor(tensors, manifest, batch=n)
    else:
        network = TorchActorRunner(load_actor(spec, drone=drone)[0], n)
    return SupervisedPolicy(network, PIDController(load_drone(drone), n, dt, guide_gains), warmup_steps, envelope)
