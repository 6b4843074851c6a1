"""snnctl entry points: a tiny-budget run of each, and their errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from snn_controller.cli import main
from snn_controller.sim.drone import load_drone


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    return code, json.loads(out)


def replay_input(path, n=2, steps=50, **override):
    model = load_drone("cf21")
    rng = np.random.default_rng(0)
    data = {
        "position": np.array([[0.0, 0.0, 1.0], [3.0, 0.0, 1.0]])[:n],
        "quaternion": np.tile([1.0, 0, 0, 0], (n, 1)),
        "velocity": rng.uniform(-0.3, 0.3, (n, 3)),
        "angular_velocity": rng.uniform(-0.5, 0.5, (n, 3)),
        "rotor_speed": np.full((n, 4), model.hover_rotor_speed),
        "actions": np.clip(model.hover_action + 0.05 * rng.standard_normal((n, steps, 4)), -1, 1),
        "dt": 0.01,
    }
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    np.savez(path, **data)
    return data


def test_sim_replay_on_both_engines_agrees(tmp_path, capsys):
    data = replay_input(tmp_path / "in.npz")
    outs = {}
    for engine in ("batched", "pybullet"):
        code, result = run_json(capsys, "sim", "replay", "--drone", "cf21", "--engine", engine,
                                "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / f"{engine}.npz"))
        assert code == 0 and result["steps"] == 50 and result["drones"] == 2
        outs[engine] = np.load(tmp_path / f"{engine}.npz")
    b = outs["batched"]
    assert b["position"].shape == (2, 51, 3) and b["quaternion"].shape == (2, 51, 4)
    assert b["rotor_speed"].shape == (2, 51, 4) and b["time"].shape == (51,)
    assert b["position"][:, 0] == pytest.approx(data["position"])  # index 0: the initial state
    assert np.abs(b["position"] - outs["pybullet"]["position"]).max() < 0.01


@pytest.mark.parametrize("override, message", [
    ({"actions": None}, "missing key 'actions'"),
    ({"quaternion": None}, r"missing key\(s\) \['quaternion'\]"),
    ({"position": np.zeros((2, 2))}, r"'position' must have shape \(N, 3\)"),
    ({"actions": np.zeros((2, 10, 3))}, r"'actions' must have shape \(2, T, 4\)"),
    ({"velocity": np.array([[np.nan, 0, 0], [0, 0, 0]])}, "'velocity' contains NaN"),
    ({"actions": np.full((2, 5, 4), 2.0)}, r"must be in \[-1, 1\]"),
    ({"dt": -1.0}, "'dt' must be a positive number"),
])
def test_sim_replay_rejects_bad_input(tmp_path, capsys, override, message):
    replay_input(tmp_path / "in.npz", **override)
    code, result = run_json(capsys, "sim", "replay", "--input", str(tmp_path / "in.npz"),
                            "--output", str(tmp_path / "out.npz"))
    assert code == 2
    assert __import__("re").search(message, result["error"]), result["error"]
    assert not (tmp_path / "out.npz").exists()


def test_sim_replay_corrupt_file(tmp_path, capsys):
    (tmp_path / "in.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, result = run_json(capsys, "sim", "replay", "--input", str(tmp_path / "in.npz"),
                            "--output", str(tmp_path / "out.npz"))
    assert code == 2 and "not a readable .npz" in result["error"]


def test_drones_and_bench_smoke(capsys):
    code, result = run_json(capsys, "drones")
    assert code == 0 and {d["name"] for d in result["drones"]} >= {"cf21", "cf2x"}
    code, result = run_json(capsys, "bench", "sim", "--seconds", "0.05", "--no-compile")
    assert code == 0
    assert set(result["batched_eager_drone_steps_per_s"]) == {"1", "64", "1024", "4096"}
    assert result["pybullet_steps_per_s"] > 0 and result["ratio_batched_at_max_n_to_pybullet"] > 0


def test_snnctl_console_script_human_output():
    out = subprocess.run([sys.executable, "-m", "snn_controller.cli", "drones"], capture_output=True, text=True)
    assert out.returncode == 0 and "cf21" in out.stdout and "thrust/weight" in out.stdout
    out = subprocess.run([sys.executable, "-m", "snn_controller.cli", "sim", "replay", "--drone", "nope",
                          "--input", "x.npz", "--output", "y.npz"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown drone 'nope'" in out.stderr


def test_eval_shipped_model_pid_and_bad_files(capsys, tmp_path):
    code, r = run_json(capsys, "eval", "models/td3bc_jsrl_cf21.safetensors", "--episodes", "8", "--starts", "moderate")
    assert code == 0 and r["episodes"] == 8 and r["drone"] == "cf21" and r["guide_warmup_steps"] == 50
    assert 0 <= r["survival_rate"] <= 1 and len(r["spikes_per_step"]) == 2 and min(r["spikes_per_step"]) > 0
    code, pid = run_json(capsys, "eval", "pid", "--episodes", "8", "--starts", "moderate")
    assert code == 0 and pid["guide_warmup_steps"] == 0 and "spikes_per_step" not in pid
    (tmp_path / "bad.safetensors").write_bytes(b"\x01\x02garbage")
    code, r = run_json(capsys, "eval", str(tmp_path / "bad.safetensors"))
    assert code == 2 and "corrupt or truncated" in r["error"]
    # the warm-up guide is selectable; a bad guide file is an error that names it
    code, r = run_json(capsys, "eval", "models/td3bc_jsrl_cf21.safetensors", "--episodes", "8", "--starts", "moderate",
                       "--guide", "models/guide_cf21.safetensors")
    assert code == 0 and r["guide"] == "models/guide_cf21.safetensors" and r["guide_warmup_steps"] == 50
    code, r = run_json(capsys, "eval", "models/td3bc_jsrl_cf21.safetensors", "--episodes", "4", "--warmup-steps", "0")
    assert code == 0 and r["guide"] == "pid" and r["guide_warmup_steps"] == 0
    code, r = run_json(capsys, "eval", "models/td3bc_jsrl_cf21.safetensors",
                       "--guide", str(tmp_path / "bad.safetensors"))
    assert code == 2 and "bad.safetensors" in r["error"] and "corrupt or truncated" in r["error"]


def test_a_pid_gains_file_is_a_controller_and_a_guide(capsys, tmp_path):
    """'pid' is config/controllers/pid.yaml; any gains file names another PID, alone or as the guide."""
    weak = "config/controllers/pid_weak.yaml"
    _, pid = run_json(capsys, "eval", "pid", "--episodes", "8", "--starts", "paper")
    code, alone = run_json(capsys, "eval", weak, "--episodes", "8", "--starts", "paper")
    assert code == 0 and alone["guide"] == weak and alone["guide_warmup_steps"] == 0
    assert alone["return_mean"] != pid["return_mean"]
    model = "models/td3bc_jsrl_cf21.safetensors"
    _, default = run_json(capsys, "eval", model, "--episodes", "8", "--starts", "paper")
    code, guided = run_json(capsys, "eval", model, "--episodes", "8", "--starts", "paper", "--guide", weak)
    assert code == 0 and guided["guide"] == weak and default["guide"] == "pid"
    assert guided["return_mean"] != default["return_mean"]  # another guide flew the first 50 steps
    (tmp_path / "gains.yaml").write_text("kp_xy: 1.0\nkp_typo: 2.0\n")
    code, r = run_json(capsys, "eval", model, "--guide", str(tmp_path / "gains.yaml"))
    assert code == 2 and "gains.yaml" in r["error"] and "kp_typo" in r["error"]


def test_eval_compares_two_controllers_start_by_start(capsys):
    code, r = run_json(capsys, "eval", "models/td3bc_jsrl_cf21.safetensors", "--episodes", "20", "--starts", "paper",
                       "--compare", "pid")
    _, pid = run_json(capsys, "eval", "pid", "--episodes", "20", "--starts", "paper")
    assert code == 0 and len(r["crashed_episodes"]) == round(20 * (1 - r["survival_rate"]))
    assert r["compare"]["survival_rate"] == pid["survival_rate"]
    # the same starts: crashes inside the PID's own first 50 steps are crashes of both
    assert set(r["crashed_episodes"]) & set(pid["crashed_episodes"])
    assert r["compare"]["lost"] == sorted(set(r["crashed_episodes"]) - set(pid["crashed_episodes"]))
    assert r["compare"]["saved"] == sorted(set(pid["crashed_episodes"]) - set(r["crashed_episodes"]))


def test_eval_of_an_ann_model(capsys, tmp_path):
    from snn_controller.io.model_file import save_model
    from snn_controller.networks.files import actor_manifest, actor_tensors
    from snn_controller.networks.mlp import MLPActor

    tensors, manifest = actor_manifest(MLPActor(18, (16, 8)), "cf21", 0.01, {"method": "test"})
    save_model(tmp_path / "ann.safetensors", tensors, manifest)
    assert set(tensors) == set(actor_tensors(MLPActor(18, (16, 8))))
    code, r = run_json(capsys, "eval", str(tmp_path / "ann.safetensors"), "--episodes", "4")
    assert code == 0 and r["episodes"] == 4 and "spikes_per_step" not in r


def test_train_guide_override_goes_through_the_config_checks(capsys, tmp_path):
    code, r = run_json(capsys, "train", "--config", "config/train/td3bc_jsrl.yaml", "--guide", "none",
                       "--out", str(tmp_path / "run"))
    assert code == 2 and "jump_start needs a guide" in r["error"]
    assert not (tmp_path / "run").exists(), "nothing is written for a config that does not validate"


def test_latency_table_flies_each_controller_at_each_delay_on_the_same_starts(capsys):
    code, r = run_json(capsys, "latency", "pid", "config/controllers/pid_no_prediction.yaml", "--delays", "3,0,2",
                       "--episodes", "20")
    assert code == 0 and r["starts"] == "moderate" and r["episodes"] == 20
    pid, old = r["rows"]
    assert list(pid["delays"]) == ["0", "2", "3"]  # sorted
    # the PID that predicts across the loop delay holds 3 steps; the one without it loses every drone at 2
    assert pid["delays"]["2"]["survival_rate"] >= 0.95 and pid["max_delay_holding"] == 3
    assert old["delays"]["2"]["survival_rate"] < 0.5 and old["max_delay_holding"] == 0
    code, r = run_json(capsys, "eval", "pid", "--delay", "3-1", "--episodes", "2")
    assert code == 2 and "latency.action_delay must be a range" in r["error"]
