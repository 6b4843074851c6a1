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


@pytest.fixture(scope="module")
def recorded_observations():
    """1000 actor observations (noise included) of the shipped model flying through the deployed
    controller (the PID's 50-step warm-up, then the network), two moderate starts of 500 steps one
    after the other: realistic inputs, and an episode boundary in the middle for a reset."""
    from snn_controller.control.controllers import deployed_controller
    from snn_controller.task.envs import FlightEnv
    from snn_controller.task.spec import TaskConfig

    torch.set_num_threads(1)
    task = TaskConfig(drone="cf21", start="moderate")
    env = FlightEnv(task, 2, seed=3, autoreset=False, dtype=torch.float64)
    controller = deployed_controller(MODEL, "cf21", 2, task.dt)
    obs, _ = env.reset()
    controller.reset()
    recorded = []
    for _ in range(task.episode_steps):
        obs = obs.numpy()
        recorded.append(obs.actor.copy())
        obs, _, terminated, _, _ = env.step(torch.as_tensor(controller(obs)))
        assert not terminated.any(), "the recorded flight should not crash"
    recorded = np.array(recorded)  # (500, 2 drones, 18)
    return np.concatenate([recorded[:, 0], recorded[:, 1]]), task.episode_steps


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
