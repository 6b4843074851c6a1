"""snnctl export --format c: the generated C99 module compiles strictly, says what the manifest says,
and flies like the numpy deployment path (float32 and float64) on a recorded flight."""

import json
import re

import numpy as np
import pytest
import torch

from snn_controller.cli import main
from snn_controller.export.host import CompiledPolicy, find_compiler
from snn_controller.io.model_file import load_model
from snn_controller.networks.spiking_numpy import NumpySpikingActor

MODEL = "models/td3bc_jsrl_cf21.safetensors"
MLP_MODEL = "models/guide_cf21.safetensors"
needs_gcc = pytest.mark.skipif(find_compiler() is None, reason="gcc is not installed: the C module cannot be built")


def export(capsys, *argv):
    code = main(["export", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def shipped_model_flight(drones: int, seed: int, steps: int):
    """The shipped model flying ``drones`` moderate starts through the deployed controller (the
    PID's 50-step warm-up, then the network): yields (env, observation, terminated so far) before
    each step, then takes the step."""
    from snn_controller.control.controllers import deployed_controller
    from snn_controller.task.envs import FlightEnv
    from snn_controller.task.spec import TaskConfig

    torch.set_num_threads(1)
    task = TaskConfig(drone="cf21", start="moderate")
    env = FlightEnv(task, drones, seed=seed, autoreset=False, dtype=torch.float64)
    controller = deployed_controller(MODEL, "cf21", drones, task.dt)
    obs, _ = env.reset()
    controller.reset()
    terminated = torch.zeros(drones, dtype=torch.bool)
    for _ in range(steps):
        obs = obs.numpy()
        yield env, obs, terminated
        obs, _, now_terminated, _, _ = env.step(torch.as_tensor(controller(obs)))
        terminated = terminated | now_terminated


@pytest.fixture(scope="module")
def recorded_observations():
    """1000 actor observations (noise included) of the shipped model's flight, two moderate starts of
    500 steps one after the other: realistic inputs, and an episode boundary in the middle for a reset."""
    steps = 500
    recorded = []
    for _, obs, terminated in shipped_model_flight(2, seed=3, steps=steps):
        assert not terminated.any(), "the recorded flight should not crash"
        recorded.append(obs.actor.copy())
    recorded = np.array(recorded)  # (500, 2 drones, 18)
    return np.concatenate([recorded[:, 0], recorded[:, 1]]), steps


def test_export_writes_a_header_generated_from_the_manifest(capsys, tmp_path):
    code, r = export(capsys, MODEL, "--format", "c", "--out", str(tmp_path / "out"))
    assert code == 0 and r["prefix"] == "td3bc_jsrl_cf21" and r["network"] == "18 -> 256 -> 128 -> 4"
    header = (tmp_path / "out" / "td3bc_jsrl_cf21.h").read_text()
    source = (tmp_path / "out" / "td3bc_jsrl_cf21.c").read_text()
    _, manifest = load_model(MODEL)
    assert r["sha256"] in header and f'TD3BC_JSRL_CF21_MODEL_SHA256 "{r["sha256"]}"' in header
    assert "0.01 s (100 Hz)" in header and "#define TD3BC_JSRL_CF21_CONTROL_RATE_HZ 100" in header
    for part in manifest["observation_layout"]:  # every input part, in the manifest's order
        assert part.split(":")[0] in header
    positions = [header.index(p.split(":")[0] + ":") for p in manifest["observation_layout"]]
    assert positions == sorted(positions)
    assert "obs[15..17]   angular_velocity_body: body rates [rad/s]" in header and "never deg/s" in header
    assert manifest["action_layout"] in header and "action[0]: motor 0 (M1) at (+0.028, -0.028) m" in header
    assert "hover: a = 0.320" in header
    # flash and RAM as stated: every weight a static const, the state all that changes
    assert r["weight_bytes"] == 4 * (18 * 256 + 3 * 256 + 256 * 128 + 3 * 128 + 128 * 4 + 4) == 156176
    assert r["state_bytes"] == 5 * (256 + 128)
    assert re.findall(r"^static (?!const float|void|float tanh)", source, re.M) == []  # no mutable statics
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    called = set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", code)) - {"if", "for", "sizeof"}
    defined = set(re.findall(r"^(?:static )?(?:void|float) (\w+)\(", code, re.M))
    assert called - defined == {"expf"}, "nothing of libm (or anything else) but expf, no heap"
    assert "double" not in code


def test_a_ctbr_model_exports_with_its_outputs_stated_as_a_rate_mode_setpoint(capsys, tmp_path):
    from snn_controller.networks.files import save_actor
    from snn_controller.networks.spiking import ActorArchitecture, SpikingActor
    from snn_controller.task.ctbr import CtbrScaling

    actor = SpikingActor(ActorArchitecture(18, (8,), 4), slope=2.0)
    save_actor(actor, tmp_path / "ctbr.safetensors", drone="cf21", dt=0.01, provenance={}, ctbr=CtbrScaling())
    code, r = export(capsys, str(tmp_path / "ctbr.safetensors"), "--format", "c", "--out", str(tmp_path / "out"))
    assert code == 0, r
    header = (tmp_path / "out" / "ctbr.h").read_text()
    assert "CTBR setpoint of the firmware's rate mode" in header and "motor 0 (M1)" not in header
    assert "p, q = action x 14 rad/s" in header and "r = action x 4.5 rad/s" in header


def test_export_refuses_what_it_cannot_write(capsys, tmp_path):
    code, r = export(capsys, MLP_MODEL, "--format", "c", "--out", str(tmp_path))
    assert code == 2 and r["error"] == (f"{MLP_MODEL}: not a spiking model (architecture type 'mlp'); "
                                        "the C export writes LIF actors only")
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x02garbage")
    code, r = export(capsys, str(tmp_path / "bad.safetensors"), "--format", "c", "--out", str(tmp_path))
    assert code == 2 and "corrupt or truncated model file" in r["error"]
    code, r = export(capsys, str(tmp_path / "missing.safetensors"), "--format", "c", "--out", str(tmp_path))
    assert code == 2 and "model file not found" in r["error"]
    code, r = export(capsys, MODEL, "--format", "c", "--out", str(tmp_path), "--name", "2fast")
    assert code == 2 and "'2fast' is not a usable C identifier" in r["error"]
    assert not list(tmp_path.glob("*.[ch]")), "a refused export writes nothing"


@needs_gcc
def test_compiled_module_matches_the_numpy_path_over_1000_recorded_steps(tmp_path, recorded_observations):
    observations, reset_at = recorded_observations
    compiled = CompiledPolicy.from_model(MODEL, tmp_path)
    assert compiled.spikes()[0].sum() == 0 and np.abs(compiled.membranes()[0]).sum() == 0  # init: zero state
    for dtype in (np.float32, np.float64):
        numpy_actor = NumpySpikingActor.from_file(MODEL, dtype=dtype)
        compiled.reset()
        c_actions, numpy_actions, spike_disagreements = [], [], [0, 0]
        for step, obs in enumerate(observations):
            if step == reset_at:  # a new episode: both start again from zero state
                compiled.reset()
                numpy_actor.reset()
                assert all(np.abs(u).sum() == 0 for u in compiled.membranes())
                assert all(s.sum() == 0 for s in compiled.spikes())
            c_actions.append(compiled.step(obs))
            numpy_actions.append(numpy_actor.step(obs)[0])
            for layer, (c_spikes, numpy_spikes) in enumerate(zip(compiled.spikes(), numpy_actor.s)):
                spike_disagreements[layer] += int((c_spikes != numpy_spikes[0]).sum())
        difference = np.abs(np.array(c_actions) - np.array(numpy_actions)).max()
        # ties at the threshold can flip a spike between two float32 summation orders; none on this flight
        assert spike_disagreements == [0, 0], f"{np.dtype(dtype).name}: spikes differ {spike_disagreements}"
        assert difference < 1e-4, f"{np.dtype(dtype).name}: actions differ by {difference}"
    assert min(numpy_actor.spikes_per_step()) > 10, "the flight must exercise spiking, not a silent network"
    # the reset really is a fresh start: the second episode equals a fresh module's run of it
    fresh = CompiledPolicy(tmp_path / "libsnn_policy.so", "snn_policy", [256, 128])
    second_episode = np.array([fresh.step(obs) for obs in observations[reset_at:]])
    assert np.array_equal(second_episode, np.array(c_actions[reset_at:]))


@needs_gcc
def test_bench_policy_times_the_compiled_step_and_a_bare_ctypes_call():
    from snn_controller.bench import bench_policy

    r = bench_policy(MODEL, repeats=200)
    assert r["c_ctypes"]["p50_us"] > 0 and r["ctypes_noop"]["p50_us"] > 0
    assert r["c_ctypes"]["p50_us"] > r["ctypes_noop"]["p50_us"]


def test_the_export_needs_no_torch():
    import subprocess
    import sys

    code = "import sys\nimport snn_controller.export.c_module, snn_controller.export.host\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# The example controller of docs/onboard.md on this machine, against a Crazyflie firmware checkout's
# headers: FreeRTOS, the PID and its resets stubbed, the simulator's states in the firmware's structs.
FIRMWARE_STUBS = {
    "FreeRTOS.h": "#pragma once\n#include <stdint.h>\n#define M2T(x) (x)\ntypedef uint32_t TickType_t;\n",
    "task.h": "#pragma once\nvoid vTaskDelay(TickType_t ticks);\n",
    "autoconf.h": "#define CONFIG_CONTROLLER_OOT 1\n",
}
HARNESS = r"""
#include <stdio.h>
#include "FreeRTOS.h"
#include "attitude_controller.h"
#include "controller.h"
#include "controller_pid.h"
#include "position_controller.h"
void vTaskDelay(TickType_t ticks) { (void)ticks; }
void controllerPidInit(void) {}
bool controllerPidTest(void) { return true; }
void controllerPid(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors, const state_t *state,
                   const stabilizerStep_t step)
{ (void)setpoint; (void)sensors; (void)state; (void)step; control->controlMode = controlModeLegacy; }
void positionControllerResetAllPID(float x, float y, float z) { (void)x; (void)y; (void)z; }
void attitudeControllerResetAllPID(float roll, float pitch, float yaw) { (void)roll; (void)pitch; (void)yaw; }
int main(void)
{
  float v[16];
  control_t control = {0};
  setpoint_t setpoint = {0};
  sensorData_t sensors = {0};
  state_t state = {0};
  stabilizerStep_t tick = 10;
  controllerOutOfTreeInit();
  setpoint.mode.x = setpoint.mode.y = setpoint.mode.z = modeAbs;
  while (scanf("%f %f %f %f %f %f %f %f %f %f %f %f %f %f %f %f", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
               &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13], &v[14], &v[15]) == 16) {
    int t;
    state.position.x = v[0]; state.position.y = v[1]; state.position.z = v[2];
    state.attitudeQuaternion.w = v[3]; state.attitudeQuaternion.x = v[4];
    state.attitudeQuaternion.y = v[5]; state.attitudeQuaternion.z = v[6];
    state.velocity.x = v[7]; state.velocity.y = v[8]; state.velocity.z = v[9];
    sensors.gyro.x = v[10]; sensors.gyro.y = v[11]; sensors.gyro.z = v[12];
    setpoint.position.x = v[13]; setpoint.position.y = v[14]; setpoint.position.z = v[15];
    for (t = 0; t < 10; t++, tick++) { /* one control period: 10 ticks of the 1 kHz loop */
      controllerOutOfTree(&control, &setpoint, &sensors, &state, tick);
      if (t == 0 && control.controlMode == controlModeForce) {
        printf("%.9g %.9g %.9g %.9g\n", (double)control.normalizedForces[0], (double)control.normalizedForces[1],
               (double)control.normalizedForces[2], (double)control.normalizedForces[3]);
      } else if (t == 0) {
        printf("pid\n");
      }
    }
  }
  return 0;
}
"""


@needs_gcc
def test_the_onboard_example_controller_flies_the_network_from_firmware_structs(tmp_path):
    """The snippet of docs/onboard.md, given the simulator's true states as the firmware carries them
    (quaternion w x y z, world velocity, gyro in deg/s), lets the PID fly 50 steps, then drives
    normalizedForces = (a + 1) / 2 of the numpy path on the package's own observation."""
    import os
    import subprocess
    from pathlib import Path

    from snn_controller.export.c_module import export_c_module
    from snn_controller.task.spec import observation

    firmware = os.environ.get("CRAZYFLIE_FIRMWARE")
    if not firmware:
        pytest.skip("set CRAZYFLIE_FIRMWARE to a crazyflie-firmware checkout to build docs/onboard.md's controller")
    doc = Path(__file__).resolve().parents[1].joinpath("docs", "onboard.md").read_text()
    snippet = doc.split("`src/out_of_tree_controller.c`", 1)[1].split("```c\n", 1)[1].split("```", 1)[0]
    (tmp_path / "out_of_tree_controller.c").write_text(snippet)
    (tmp_path / "harness.c").write_text(HARNESS)
    for name, text in FIRMWARE_STUBS.items():
        (tmp_path / name).write_text(text)
    export_c_module(MODEL, tmp_path, "snn_policy")
    includes = [f"-I{tmp_path}"] + [f"-I{firmware}/src/{d}" for d in (
        "modules/interface", "modules/interface/controller", "hal/interface", "utils/interface",
        "utils/interface/lighthouse", "config", "drivers/interface", "platform/interface")]
    build = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-O2",
                            "-include", str(tmp_path / "autoconf.h"), *includes,
                            *(str(tmp_path / f) for f in ("harness.c", "out_of_tree_controller.c", "snn_policy.c")),
                            "-lm", "-o", str(tmp_path / "harness")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr

    target = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    rows, true_observations = [], []
    for env, _, _ in shipped_model_flight(1, seed=5, steps=200):
        state = env.engine.state.to(torch.float64)
        s = state.as_numpy()
        rows.append(np.concatenate([s["position"][0], s["quaternion"][0], s["velocity"][0],
                                    np.degrees(s["angular_velocity"][0]), target[0].numpy()]))
        true_observations.append(observation(state, target)[0].numpy())
    states = "\n".join(" ".join(f"{x:.9g}" for x in np.float32(row)) for row in rows)
    run = subprocess.run([str(tmp_path / "harness")], input=states, capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines[:50] == ["pid"] * 50 and "pid" not in lines[50:], "the PID flies the 50 warm-up steps, then the network"
    numpy_actor = NumpySpikingActor.from_file(MODEL, dtype=np.float32)
    expected = np.array([(numpy_actor.step(o)[0] + 1) / 2 for o in true_observations])[50:]
    forces = np.array([[float(x) for x in line.split()] for line in lines[50:]])
    assert np.abs(forces - expected).max() < 1e-4
