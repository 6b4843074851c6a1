"""Controllers built from what a user names: a model file, ``"pid"`` or a PID gains file.

A guide is named by a string: ``"pid"`` (the PID with config/controllers/pid.yaml), a PID gains
file (``.yaml``, e.g. config/controllers/pid_weak.yaml), or a guide ANN model file.

Spiking model files fly through the numpy deployment path (what the node runs); ANN models and
actors still in training fly through torch behind :class:`TorchNetwork`. Evaluating the paper's
way (docs/method.md section 5): N test episodes at a named curriculum stage, the guide flying the
first ``warmup_steps`` steps, then the network.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.model_file import ModelFileError, load_model, model_ctbr
from ..networks.files import actor_from, load_actor
from ..networks.spiking_numpy import NumpySpikingActor
from ..sim.drone import load_drone
from ..task import spec as T
from ..task.ctbr import CtbrScaling
from ..task.envs import evaluate
from .handover import Handover, NetworkController, SupervisedPolicy
from .pid import PIDController, PIDGains, load_pid_gains


class TorchNetwork:
    """A torch actor as a network for ``batch`` drones (``step`` / ``reset(mask)`` on numpy), no grad."""

    def __init__(self, actor, batch: int):
        self.actor, self.batch = actor, batch
        self.reset()

    def reset(self, mask=None):
        if mask is None:
            self.state = self.actor.zero_state(self.batch)
        else:
            self.state = self.actor.reset_state(self.state, torch.as_tensor(np.asarray(mask, dtype=bool)))

    @torch.no_grad()
    def step(self, inputs):
        action, self.state, _ = self.actor.step(self.state, torch.as_tensor(inputs, dtype=torch.float32))
        return action.numpy()


def pid_gains(spec: str) -> PIDGains | None:
    """The gains of a PID guide spec (``"pid"`` or a gains YAML file); None for a guide ANN file."""
    if spec == "pid":
        return load_pid_gains()
    if str(spec).endswith((".yaml", ".yml")):
        return load_pid_gains(spec)
    return None


def make_guide(spec: str, drone: str, n: int, dt: float, ctbr: CtbrScaling | None = None):
    """A guide as a controller: a PID (``"pid"`` or a gains file), or a guide ANN model file (on the
    privileged observation). ``ctbr`` (a task's ``ctbr_scaling``): the PID flies CTBR actions in it."""
    gains = pid_gains(spec)
    if gains is not None:
        return PIDController(load_drone(drone), n, dt, gains, ctbr=ctbr)
    if ctbr is not None:
        raise ValueError(f"a guide ANN flies motor commands; the CTBR task's guide is a PID, got {spec!r}")
    return NetworkController(TorchNetwork(load_actor(spec, drone=drone)[0], n), view="privileged")


def flight_policy(network, task: T.TaskConfig, episodes: int, privileged: bool, warmup_steps: int = 50,
                  guide: str = "pid"):
    """The evaluated controller: a privileged network alone, or the guide's warm-up then the network."""
    if privileged:
        return NetworkController(network, view="privileged")
    return Handover(network, make_guide(guide, task.drone, episodes, task.dt, task.ctbr_scaling), warmup_steps)


def model_task(manifest: dict, **options) -> T.TaskConfig:
    """The task a model file flies: its drone, control period and action interface; ``options``: the rest."""
    ctbr = model_ctbr(manifest)
    return T.TaskConfig(drone=manifest["drone"], dt=manifest["dt"], action="motors" if ctbr is None else "ctbr",
                        ctbr=ctbr or CtbrScaling(), **options)


def interface_name(ctbr: CtbrScaling | None) -> str:
    return "motor commands" if ctbr is None else f"CTBR setpoints ({ctbr})"


def load_network(path, drone: str, n: int):
    """A model file as a network for ``n`` drones: spiking models on the numpy path, MLPs in torch."""
    tensors, manifest = load_model(path, drone=drone)
    if manifest["architecture"]["type"] == "lif_actor":
        return NumpySpikingActor(tensors, manifest, batch=n), manifest
    return TorchNetwork(actor_from(tensors, manifest, str(path)), n), manifest


def evaluate_model(path, task: T.TaskConfig, episodes: int, seed: int = 0, engine: str = "batched",
                   warmup_steps: int = 50, guide: str = "pid") -> dict:
    """Evaluate a model file (``guide``: "pid" or a guide ANN file flies the warm-up); spiking
    models also report spikes per step per layer."""
    network, manifest = load_network(path, task.drone, episodes)
    if model_ctbr(manifest) != task.ctbr_scaling:  # the outputs would drive something they were not trained for
        raise ModelFileError(f"{path}: the model's outputs are {interface_name(model_ctbr(manifest))}, the task "
                             f"flies {interface_name(task.ctbr_scaling)} (build the task with model_task)")
    privileged = manifest["architecture"]["obs_dim"] == T.PRIVILEGED_OBS_DIM
    result = evaluate(flight_policy(network, task, episodes, privileged, warmup_steps, guide), task, episodes,
                      engine=engine, seed=seed)
    if isinstance(network, NumpySpikingActor):
        result["spikes_per_step"] = [round(x, 2) for x in network.spikes_per_step()]
    return result


def deployed_controller(spec: str, drone: str, n: int, dt: float, warmup_steps: int = 50, guide: str = "pid",
                        envelope: float = 0.5, ctbr: CtbrScaling | None = None) -> SupervisedPolicy:
    """What the snn_policy and pid_controller nodes fly, for ``n`` drones: a model file with its PID
    guide, or a PID alone (``"pid"`` or a gains file; ``ctbr``: it flies CTBR setpoints), behind the
    failsafe (:class:`SupervisedPolicy`). A model flies its own action interface (its manifest), and
    its guide the same one: ``guide.ctbr`` of the result says which."""
    gains = pid_gains(spec)
    if gains is not None:
        return SupervisedPolicy(None, PIDController(load_drone(drone), n, dt, gains, ctbr=ctbr), warmup_steps,
                                envelope)
    guide_gains = pid_gains(guide)
    if guide_gains is None:
        raise ValueError(f"the deployed controller's guide and failsafe is a PID ('pid' or a gains file), got {guide!r}")
    network, manifest = load_network(spec, drone, n)
    if manifest["architecture"]["obs_dim"] != T.OBS_DIM:
        raise ModelFileError(f"{spec}: a privileged network (146 inputs) cannot fly a real drone's observations")
    guide_pid = PIDController(load_drone(drone), n, dt, guide_gains, ctbr=model_ctbr(manifest))
    return SupervisedPolicy(network, guide_pid, warmup_steps, envelope)
