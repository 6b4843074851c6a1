"""Model files: weights + a JSON manifest in one safetensors file. Loading never runs code.

A file holds named float arrays (safetensors) and, in the safetensors metadata, ``manifest``:
a JSON object with the architecture, the observation and action layouts, the action interface
(``action``: what the outputs drive, motor commands or CTBR setpoints with their scaling), the control period,
the drone model, the surrogate slope at save time and the provenance (training config, seed,
steps, evaluation metrics, code version). This module needs only numpy and safetensors (and the
task's observation layout, which imports nothing).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np

# The layouts a model must have been trained with to be flown by this code: the task's.
from ..task.ctbr import CtbrScaling
from ..task.observation import OBS_DIM, OBS_LAYOUT, PRIVILEGED_OBS_DIM, PRIVILEGED_OBS_LAYOUT

FORMAT = "snn_controller.model/1"
# What the 4 outputs drive, per action interface (TaskConfig.action). A manifest without ``action``
# (files written before CTBR existed) drives motors.
ACTION_LAYOUTS = {
    "motors": "motor commands in [-1, 1], rotor speed command (a + 1) / 2, motor order 0..3 of docs/task.md",
    "ctbr": "CTBR setpoint of the firmware's rate mode from outputs u in [-1, 1]: thrust (u0 + 1) / 2 as the PWM "
            "ratio, body rates p, q, r = u1..u3 x max rates [rad/s] (manifest action; docs/ctbr.md)",
}


class ModelFileError(ValueError):
    """A model file is missing, corrupt, truncated or does not fit what it is used for."""


def code_version() -> str:
    from .. import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if rev.returncode == 0:
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def expected_shapes(arch: dict) -> dict[str, tuple]:
    """Tensor names and shapes of a ``lif_actor`` or ``mlp`` model."""
    sizes = [arch["obs_dim"], *arch["hidden"]]
    shapes = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.linear.weight"] = (b, a)
        shapes[f"layers.{i}.linear.bias"] = (b,)
        if arch["type"] == "lif_actor":
            shapes[f"layers.{i}.beta"] = (b,)
            shapes[f"layers.{i}.theta"] = (b,)
    shapes["readout.weight"] = (arch["action_dim"], sizes[-1])
    shapes["readout.bias"] = (arch["action_dim"],)
    return shapes


def action_manifest(ctbr: CtbrScaling | None) -> dict:
    """The manifest keys of an action interface: motor commands (``ctbr`` None) or CTBR with its scaling."""
    if ctbr is None:
        return {"action": {"interface": "motors"}, "action_layout": ACTION_LAYOUTS["motors"]}
    return {"action": {"interface": "ctbr", "max_rate_xy": ctbr.max_rate_xy, "max_rate_z": ctbr.max_rate_z},
            "action_layout": ACTION_LAYOUTS["ctbr"]}


def model_ctbr(manifest: dict) -> CtbrScaling | None:
    """The CTBR scaling a (validated) model flies with, or None for motor commands: the model's
    ``TaskConfig.ctbr_scaling``."""
    action = manifest.get("action", {"interface": "motors"})
    if action["interface"] == "motors":
        return None
    return CtbrScaling(max_rate_xy=action["max_rate_xy"], max_rate_z=action["max_rate_z"])


def save_model(path: str | os.PathLike, tensors: dict[str, np.ndarray], manifest: dict) -> None:
    """Write atomically (temp file + rename), so a crash never leaves a half-written model."""
    from safetensors.numpy import save_file

    manifest = {"format": FORMAT, **manifest}
    _check(manifest, {k: np.asarray(v) for k, v in tensors.items()}, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(arrays, str(tmp), metadata={"manifest": json.dumps(manifest, sort_keys=True)})
        os.chmod(tmp, 0o644)  # model files are shared data (installed to share/), readable by all

    write_atomically(path, write, "model file")


def write_atomically(path: Path, write, what: str, hint: str = "") -> None:
    """``write(tmp)`` to a temp file, then rename it over ``path``: a crash never leaves a half-written
    file in its place. A failed write (a full disk) removes the temp file and raises an OSError that
    names the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise OSError(f"{path}: could not write the {what} ({exc}){hint}") from None


def load_model(path: str | os.PathLike, drone: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a model file; ``drone``: refuse a model trained for another drone."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, Exception) as exc:
        raise ModelFileError(f"{path}: corrupt or truncated model file ({exc})") from None
    if "manifest" not in metadata:
        raise ModelFileError(f"{path}: no manifest in the file (not an snn_controller model)")
    try:
        manifest = json.loads(metadata["manifest"])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the manifest is not valid JSON ({exc})") from None
    _check(manifest, tensors, str(path))
    if drone is not None and manifest["drone"] != drone:
        raise ModelFileError(f"{path}: model was trained for drone '{manifest['drone']}', not '{drone}'")
    return tensors, manifest


def _check(manifest: dict, tensors: dict, where: str) -> None:
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{where}: unknown model format {manifest.get('format')!r} (expected {FORMAT})")
    for key in ("architecture", "observation_layout", "action_layout", "dt", "drone", "provenance"):
        if key not in manifest:
            raise ModelFileError(f"{where}: manifest is missing '{key}'")
    arch = manifest["architecture"]
    if arch.get("type") not in ("lif_actor", "mlp"):
        raise ModelFileError(f"{where}: unknown architecture type {arch.get('type')!r}")
    if arch["type"] == "lif_actor" and not (isinstance(manifest.get("slope"), (int, float)) and manifest["slope"] > 0):
        raise ModelFileError(f"{where}: a spiking model needs its surrogate slope in the manifest")
    layout = manifest["observation_layout"]
    if layout not in (OBS_LAYOUT, PRIVILEGED_OBS_LAYOUT):
        raise ModelFileError(f"{where}: observation layout {layout} is not one this code builds "
                             f"({OBS_LAYOUT} or the privileged one)")
    obs_dim = OBS_DIM if layout == OBS_LAYOUT else PRIVILEGED_OBS_DIM
    if arch.get("obs_dim") != obs_dim or arch.get("action_dim") != 4:
        raise ModelFileError(f"{where}: architecture obs_dim {arch.get('obs_dim')} / action_dim "
                             f"{arch.get('action_dim')} do not match the layout ({obs_dim} / 4)")
    _check_action(manifest.get("action", {"interface": "motors"}), where)
    if not (isinstance(manifest["dt"], (int, float)) and manifest["dt"] > 0 and math.isfinite(manifest["dt"])):
        raise ModelFileError(f"{where}: manifest dt must be a positive number")
    expected = expected_shapes(arch)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{where}: tensors do not match the architecture (missing {missing}, unexpected {extra})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelFileError(f"{where}: tensor '{name}' has shape {tuple(tensors[name].shape)}, "
                                 f"the architecture needs {shape}")
        if not np.isfinite(tensors[name]).all():
            raise ModelFileError(f"{where}: tensor '{name}' contains NaN or inf")


def _check_action(action, where: str) -> None:
    if not isinstance(action, dict) or action.get("interface") not in ACTION_LAYOUTS:
        raise ModelFileError(f"{where}: manifest action {action!r} names no action interface this code flies "
                             f"(interface one of {sorted(ACTION_LAYOUTS)})")
    if action["interface"] == "ctbr":
        rates = [action.get(k) for k in ("max_rate_xy", "max_rate_z")]
        if not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in rates):
            raise ModelFileError(f"{where}: a CTBR model's manifest action needs max_rate_xy and max_rate_z > 0 "
                                 f"(rad/s), got {rates}")
