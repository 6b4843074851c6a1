"""A spiking actor as a self-contained C99 module for a microcontroller (``snnctl export --format c``).

:func:`export_c_module` writes ``PREFIX.h`` and ``PREFIX.c``: the weights as ``static const float``
arrays (flash, not RAM), a state struct the caller owns (membrane potentials and last spikes of
each LIF layer), and ``PREFIX_init`` / ``PREFIX_reset`` / ``PREFIX_step``. Float32 throughout, no
heap, no mutable globals, nothing of libm but ``expf``. The equations are those of
:mod:`snn_controller.networks.spiking_numpy` (the node's deployment path):

    U = beta U + W x + b - S_prev theta;  S = (U > theta);  action = tanh(W_out S_last + b_out)

The header's description of the inputs, the outputs and the control rate is generated from the
model's manifest and the drone model it names, so it cannot drift from what the network was
trained on. docs/onboard.md puts the module into a Crazyflie out-of-tree controller.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..io.model_file import ModelFileError, code_version, load_model, model_ctbr, write_atomically
from ..sim.drone import load_drone
from ..task.observation import MEANINGS

C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROVENANCE_KEYS = ("method", "seed", "code_version", "iteration", "env_steps")  # the identity a user needs


def export_c_module(model_path, out_dir, prefix: str | None = None) -> dict:
    """Write ``PREFIX.h`` and ``PREFIX.c`` for a spiking model file into ``out_dir`` (created if
    missing). ``prefix`` names the files and every public symbol; default: the model file's name."""
    model_path = Path(model_path)
    tensors, manifest = load_model(model_path)  # ModelFileError names an unreadable or invalid file
    arch = manifest["architecture"]
    if arch["type"] != "lif_actor":
        raise ModelFileError(f"{model_path}: not a spiking model (architecture type {arch['type']!r}); "
                             "the C export writes LIF actors only")
    prefix = prefix or default_prefix(model_path)
    if not C_IDENTIFIER.fullmatch(prefix) or prefix.startswith("__"):
        raise ValueError(f"the prefix (--name) {prefix!r} is not a usable C identifier (letters, digits, _; "
                         "not a leading digit)")
    identity = {"file": model_path.name, "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()}
    header, source = render_c_module(tensors, manifest, prefix, identity)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in ((f"{prefix}.h", header), (f"{prefix}.c", source)):
        path = out_dir / name
        write_atomically(path, lambda tmp, text=text: tmp.write_text(text), "C module")
        files.append(str(path))
    sizes = [arch["obs_dim"], *arch["hidden"], arch["action_dim"]]
    return {"format": "c", "model": str(model_path), "sha256": identity["sha256"], "prefix": prefix,
            "files": files, "weight_bytes": weight_bytes(tensors), "state_bytes": state_bytes(arch["hidden"]),
            "network": " -> ".join(map(str, sizes)),
            "architecture": {k: arch[k] for k in ("obs_dim", "hidden", "action_dim")}}


def default_prefix(model_path) -> str:
    """The model file's name as a C identifier: ``td3bc_jsrl_cf21.safetensors`` -> ``td3bc_jsrl_cf21``."""
    name = re.sub(r"\W", "_", Path(model_path).stem).lower()
    return name if C_IDENTIFIER.fullmatch(name) and not name.startswith("__") else f"snn_{name}"


def weight_bytes(tensors: dict) -> int:
    """Flash the weights take as float32 (every tensor of a model file is a weight of the step)."""
    return 4 * sum(t.size for t in tensors.values())


def state_bytes(hidden: list[int]) -> int:
    """sizeof the state struct: per layer float membranes then uint8 spikes, floats 4-aligned."""
    size = 0
    for n in hidden:
        size = -(-size // 4) * 4 + 4 * n + n
    return -(-size // 4) * 4


def render_c_module(tensors: dict, manifest: dict, prefix: str, identity: dict) -> tuple[str, str]:
    """(header text, source text) of a validated ``lif_actor`` model."""
    arch = manifest["architecture"]
    hidden = list(arch["hidden"])
    layer_inputs = [arch["obs_dim"], *hidden[:-1]]
    macro = prefix.upper()
    arrays = []
    for i, (n_in, n_out) in enumerate(zip(layer_inputs, hidden)):
        weight = tensors[f"layers.{i}.linear.weight"]  # (out, in)
        arrays += [
            (f"layer{i}_weight[{n_in}][{n_out}]", weight.T, "input-major: row j = the weights from input j"),
            (f"layer{i}_bias[{n_out}]", tensors[f"layers.{i}.linear.bias"], ""),
            (f"layer{i}_beta[{n_out}]", np.clip(tensors[f"layers.{i}.beta"], 0.0, 1.0),
             "membrane decay per step, clipped to [0, 1] as in training"),
            (f"layer{i}_theta[{n_out}]", tensors[f"layers.{i}.theta"], "firing threshold, also the soft reset"),
        ]
    arrays += [(f"readout_weight[{hidden[-1]}][{arch['action_dim']}]", tensors["readout.weight"].T, "input-major"),
               (f"readout_bias[{arch['action_dim']}]", tensors["readout.bias"], "")]
    header = _header(manifest, prefix, macro, identity, hidden, weight_bytes(tensors))
    source = _source(prefix, macro, hidden, layer_inputs, arrays)
    return header, source


# --- the header: what the network expects, from the manifest ------------------------------------
def _header(manifest: dict, prefix: str, macro: str, identity: dict, hidden: list[int], flash: int) -> str:
    arch, dt = manifest["architecture"], float(manifest["dt"])
    provenance = manifest["provenance"]
    made_by = ", ".join(f"{k} {provenance[k]}" for k in PROVENANCE_KEYS if k in provenance)
    rate = 1.0 / dt
    integral_rate = abs(rate - round(rate)) < 1e-6
    state_fields = "\n".join(
        f"    float layer{i}_membrane[{n}];  /* U of layer {i}'s {n} LIF neurons */\n"
        f"    uint8_t layer{i}_spikes[{n}];  /* S of the last step, 0 or 1 */" for i, n in enumerate(hidden))
    rate_macro = (f"#define {macro}_CONTROL_RATE_HZ {round(rate)}  /* 1 / dt */" if integral_rate else
                  f"/* 1 / dt = {rate:.6g} Hz is not an integer rate: schedule the step every dt seconds. */")
    network = " -> ".join([str(arch["obs_dim"]), *(f"LIF {n}" for n in hidden), f"{arch['action_dim']} (tanh)"])
    return f"""\
/* {prefix}.h - a spiking flight controller exported from an snn_controller model file.
 *
 * Generated by `snnctl export MODEL --format c` (snn_controller {code_version()}); regenerate, do not edit.
 * Model file: {identity['file']}
 *   sha256 {identity['sha256']}
 *   drone {manifest['drone']}; {made_by}
 * Network: {network}. Per LIF layer and step: U = beta U + W x + b - S_prev theta, S = (U > theta).
 *
 * Control rate: call {prefix}_step once every {dt:g} s ({rate:.6g} Hz), the model's dt. The neurons'
 * decay and the dynamics the network learned are per step: another rate flies another controller.
 *
 * Input obs[{arch['obs_dim']}], float32, in this order (SI units: m, m/s, rad/s; never deg/s):
{_input_lines(manifest)}
 *
 * Output action[{arch['action_dim']}], float32: {manifest['action_layout']}.
{_output_lines(manifest)}
 *
 * Usage: one {prefix}_state per drone, owned by the caller; {prefix}_init before the first step,
 * {prefix}_reset whenever the network starts flying again (zero membranes, no spikes);
 * {prefix}_step at the control rate. No heap, no mutable globals: the state is all that changes.
 * Flash: {flash} bytes of weights; RAM: sizeof({prefix}_state) = {state_bytes(hidden)} bytes.
 * Firmware integration (Crazyflie out-of-tree controller): docs/onboard.md of snn_controller.
 */
#ifndef {macro}_H
#define {macro}_H

#include <stdint.h>

#define {macro}_MODEL_SHA256 "{identity['sha256']}"
#define {macro}_OBS_DIM {arch['obs_dim']}
#define {macro}_ACTION_DIM {arch['action_dim']}
#define {macro}_CONTROL_PERIOD_S {dt!r}f  /* the model's dt */
{rate_macro}

typedef struct {{
{state_fields}
}} {prefix}_state;

void {prefix}_init({prefix}_state *state);
void {prefix}_reset({prefix}_state *state);
void {prefix}_step({prefix}_state *state, const float obs[{macro}_OBS_DIM], float action[{macro}_ACTION_DIM]);

#endif /* {macro}_H */
"""


def _input_lines(manifest: dict) -> str:
    lines, start = [], 0
    for part in manifest["observation_layout"]:
        name, size_text = part.split(":")
        size = int(np.prod([int(s) for s in size_text.split("x")]))
        span = f"obs[{start}]" if size == 1 else f"obs[{start}..{start + size - 1}]"
        lines.append(f" *   {span:13s} {name}: {MEANINGS[name]}")
        start += size
    lines.append(" *   World frame: z up; the network holds yaw 0, its nose along world +x.")
    return "\n".join(lines)


def _output_lines(manifest: dict) -> str:
    """What each output drives: the CTBR setpoint's terms, or where each motor is and which way it
    turns, from the drone model the manifest names."""
    ctbr = model_ctbr(manifest)
    if ctbr is not None:
        return "\n".join([
            " *   action[0]: collective thrust, PWM ratio (action[0] + 1) / 2 (x 65535: the commander's thrust)",
            f" *   action[1], action[2]: roll and pitch rate p, q = action x {ctbr.max_rate_xy:g} rad/s "
            "(body x forward, y left)",
            f" *   action[3]: yaw rate r = action x {ctbr.max_rate_z:g} rad/s about body z up",
            " *   A setpoint of the firmware's rate mode (attitude-rate PIDs at 500 Hz, docs/ctbr.md): mind its",
            " *   pitch sign (controller_pid.c feeds -gyro.y) and deg/s units when you hand it over."])
    model = load_drone(manifest["drone"])
    lines = [" *   Motor positions in the body frame (x forward, y left, z up):"]
    for i, ((x, y, _), direction) in enumerate(zip(model.rotor_positions, model.rotor_directions)):
        # yaw reaction on the body is opposite to the rotor's spin: -1 (about -z) = counter-clockwise from above
        spin = "counter-clockwise" if direction < 0 else "clockwise"
        lines.append(f" *   action[{i}]: motor {i} (M{i + 1}) at ({x:+.3f}, {y:+.3f}) m, yaw reaction "
                     f"{'-' if direction < 0 else '+'}z: spins {spin} seen from above")
    lines.append(f" *   Rotor speed command w = (a + 1) / 2 of full speed; hover: a = {model.hover_action:.3f} on every "
                 f"motor ({model.name}).")
    return "\n".join(lines)


# --- the source: weights and the step -----------------------------------------------------------
def _source(prefix: str, macro: str, hidden: list[int], layer_inputs: list[int], arrays: list) -> str:
    tables = "\n\n".join(
        (f"/* {comment} */\n" if comment else "") + f"static const float {decl} = {_c_array(values)};"
        for decl, values, comment in arrays)
    resets = "\n".join(
        f"    for (i = 0; i < {n}; i++) {{\n        state->layer{l}_membrane[i] = 0.0f;\n"
        f"        state->layer{l}_spikes[i] = 0;\n    }}" for l, n in enumerate(hidden))
    steps = []
    for l, (n_in, n_out) in enumerate(zip(layer_inputs, hidden)):
        layer = f"state->layer{l}"
        steps.append(f"    leak_and_reset({n_out}, layer{l}_beta, layer{l}_theta, layer{l}_bias, "
                     f"{layer}_membrane, {layer}_spikes);")
        if l == 0:
            steps.append(f"    add_dense_input({n_in}, {n_out}, &layer0_weight[0][0], obs, {layer}_membrane);")
        else:
            steps.append(f"    add_spiking_input({n_in}, {n_out}, &layer{l}_weight[0][0], state->layer{l - 1}_spikes, "
                         f"{layer}_membrane);")
        steps.append(f"    fire({n_out}, layer{l}_theta, {layer}_membrane, {layer}_spikes);")
    last = len(hidden) - 1
    steps_text = "\n".join(steps)
    return f"""\
/* {prefix}.c - generated by `snnctl export --format c`; the inputs, outputs, rate and model: {prefix}.h */
#include "{prefix}.h"

#include <math.h> /* expf */

{tables}

/* U = beta U - S_prev theta + b: the leak, the soft reset of the neurons that fired on the last
 * step, and the bias. The synaptic input is added next, straight into U: no scratch buffer, so the
 * step needs a few words of stack (a Crazyflie's stabilizer task has 1.8 kB). numpy adds the same
 * terms in another order: the sums differ in the last bits, nothing else. */
static void leak_and_reset(int n, const float *beta, const float *theta, const float *bias, float *membrane,
                           const uint8_t *spikes)
{{
    int i;
    for (i = 0; i < n; i++) {{
        float u = beta[i] * membrane[i];
        if (spikes[i]) {{
            u -= theta[i];
        }}
        membrane[i] = u + bias[i];
    }}
}}

/* out += W x for real-valued inputs (the observation): a dense product, column by column. */
static void add_dense_input(int n_in, int n_out, const float *weight, const float *x, float *out)
{{
    int i, j;
    for (j = 0; j < n_in; j++) {{
        const float *column = weight + j * n_out; /* stored input-major: W[:, j] is contiguous */
        for (i = 0; i < n_out; i++) {{
            out[i] += column[i] * x[j];
        }}
    }}
}}

/* out += W s for binary spikes s: W s is the sum of the columns of the inputs that spiked, so this
 * adds a column only where s[j] is 1 and skips the rest. No multiplications, and since a fraction
 * of the neurons spike in a step, a fraction of the dense product's flash reads and additions:
 * that is what makes the hidden layers cheap on a Cortex-M4 (single-precision FPU, no vector unit,
 * flash-bound). Adding w (not 1.0f * w) gives the same float as the dense product. */
static void add_spiking_input(int n_in, int n_out, const float *weight, const uint8_t *spikes, float *out)
{{
    int i, j;
    for (j = 0; j < n_in; j++) {{
        if (spikes[j]) {{
            const float *column = weight + j * n_out;
            for (i = 0; i < n_out; i++) {{
                out[i] += column[i];
            }}
        }}
    }}
}}

/* S = (U > theta): the Heaviside step of the trained network. */
static void fire(int n, const float *theta, const float *membrane, uint8_t *spikes)
{{
    int i;
    for (i = 0; i < n; i++) {{
        spikes[i] = (uint8_t)(membrane[i] > theta[i]);
    }}
}}

/* tanh from expf alone (no tanhf in libm needed); expf overflowing to inf still gives 1. */
static float tanh_from_expf(float x)
{{
    return 1.0f - 2.0f / (expf(2.0f * x) + 1.0f);
}}

void {prefix}_init({prefix}_state *state)
{{
    {prefix}_reset(state);
}}

void {prefix}_reset({prefix}_state *state)
{{
    int i;
{resets}
}}

void {prefix}_step({prefix}_state *state, const float obs[{macro}_OBS_DIM], float action[{macro}_ACTION_DIM])
{{
    int k;
{steps_text}
    for (k = 0; k < {macro}_ACTION_DIM; k++) {{
        action[k] = readout_bias[k];
    }}
    add_spiking_input({hidden[-1]}, {macro}_ACTION_DIM, &readout_weight[0][0], state->layer{last}_spikes, action);
    for (k = 0; k < {macro}_ACTION_DIM; k++) {{
        action[k] = tanh_from_expf(action[k]);
    }}
}}
"""


def _c_float(value) -> str:
    """The shortest literal that reads back as the same float32."""
    return np.format_float_scientific(np.float32(value), unique=True, trim="-") + "f"


def _c_array(values: np.ndarray) -> str:
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        items = [_c_float(v) for v in values]
        return "{\n" + "\n".join("    " + ", ".join(items[k:k + 8]) + "," for k in range(0, len(items), 8)) + "\n}"
    return "{\n" + ",\n".join("    " + _c_array(row).replace("\n", "\n    ") for row in values) + "\n}"
