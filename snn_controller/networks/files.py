"""Networks in model files: the one manifest writer, and the torch loader of every actor type.

The numpy deployment path reads spiking models with
:meth:`~snn_controller.networks.spiking_numpy.NumpySpikingActor.from_file`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..io.model_file import ModelFileError, action_manifest, load_model, save_model
from ..task.ctbr import CtbrScaling
from ..task.observation import OBS_DIM, OBS_LAYOUT, PRIVILEGED_OBS_DIM, PRIVILEGED_OBS_LAYOUT
from .mlp import MLPActor
from .spiking import ActorArchitecture, SpikingActor


def actor_tensors(actor: nn.Module) -> dict:
    """Any actor's weights as numpy arrays under the model-file names (a slope goes to the manifest)."""
    return {k: v.detach().cpu().numpy() for k, v in actor.state_dict().items() if k != "slope"}


def actor_manifest(actor: nn.Module, drone: str, dt: float, provenance: dict,
                   ctbr: CtbrScaling | None = None) -> tuple[dict, dict]:
    """The tensors and the manifest of a spiking or an MLP actor whose outputs drive motors, or
    (``ctbr``, the task's ``ctbr_scaling``) CTBR setpoints."""
    if isinstance(actor, SpikingActor):
        arch = {"type": "lif_actor", "obs_dim": actor.arch.obs_dim, "hidden": list(actor.arch.hidden),
                "action_dim": actor.arch.action_dim, "neuron": "LIF, soft reset by subtraction, one-step delay",
                "surrogate": "1 / (1 + k |U - theta|)^2", "output": "tanh"}
    elif isinstance(actor, MLPActor):
        arch = {"type": "mlp", "obs_dim": actor.obs_dim, "hidden": list(actor.hidden),
                "action_dim": actor.action_dim, "activation": "relu", "output": "tanh"}
    else:
        raise TypeError(f"cannot write a {type(actor).__name__} to a model file")
    layouts = {OBS_DIM: OBS_LAYOUT, PRIVILEGED_OBS_DIM: PRIVILEGED_OBS_LAYOUT}
    if arch["obs_dim"] not in layouts:
        raise ValueError(f"an actor on {arch['obs_dim']} inputs fits no observation layout ({sorted(layouts)})")
    manifest = {"architecture": arch, "observation_layout": layouts[arch["obs_dim"]], **action_manifest(ctbr),
                "dt": dt, "drone": drone, "provenance": provenance}
    if isinstance(actor, SpikingActor):
        manifest["slope"] = float(actor.slope)
    return actor_tensors(actor), manifest


def save_actor(actor: nn.Module, path, drone: str, dt: float, provenance: dict,
               ctbr: CtbrScaling | None = None) -> None:
    save_model(path, *actor_manifest(actor, drone, dt, provenance, ctbr))


def load_actor(path, drone: str | None = None, dtype=torch.float32) -> tuple[nn.Module, dict]:
    """A model file as a torch actor (spiking or MLP) and its manifest."""
    tensors, manifest = load_model(path, drone=drone)
    return actor_from(tensors, manifest, str(path), dtype), manifest


def actor_from(tensors: dict, manifest: dict, where: str = "model", dtype=torch.float32) -> nn.Module:
    """The torch actor of a model file's (validated) tensors and manifest."""
    arch = manifest["architecture"]
    if arch["type"] == "lif_actor":
        actor = SpikingActor(ActorArchitecture(arch["obs_dim"], tuple(arch["hidden"]), arch["action_dim"]),
                             slope=manifest["slope"])
    elif arch["type"] == "mlp":
        actor = MLPActor(arch["obs_dim"], tuple(arch["hidden"]), arch["action_dim"])
    else:
        raise ModelFileError(f"{where}: no torch network for architecture type {arch['type']!r}")
    state = {k: torch.as_tensor(v) for k, v in tensors.items()}
    state["slope"] = actor.slope
    actor.load_state_dict(state)
    return actor.to(dtype)
