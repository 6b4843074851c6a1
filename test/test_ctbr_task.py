"""The CTBR task (docs/ctbr.md): config, FlightEnv through the firmware's rate loop, the CTBR PID guide."""

import pytest
import torch

torch.set_num_threads(1)

from snn_controller.config import ConfigError  # noqa: E402
from snn_controller.control.controllers import make_guide  # noqa: E402
from snn_controller.control.pid import PIDController  # noqa: E402
from snn_controller.sim.drone import load_drone  # noqa: E402
from snn_controller.sim.firmware import RateControlledEngine, hover_thrust  # noqa: E402
from snn_controller.sim.state import DroneState  # noqa: E402
from snn_controller.task import spec as T  # noqa: E402
from snn_controller.task.envs import FlightEnv, evaluate  # noqa: E402
from snn_controller.train.config import load_train_config  # noqa: E402

F64 = torch.float64
CTBR = T.TaskConfig(action="ctbr", start="moderate")


def test_action_is_validated_and_names_the_choices():
    with pytest.raises(ConfigError, match=r"\['motors', 'ctbr'\]"):
        T.TaskConfig(action="rates")
    with pytest.raises(ConfigError, match="max rates"):
        T.TaskConfig(ctbr=T.CtbrScaling(max_rate_xy=0.0))
    assert T.TaskConfig().ctbr_scaling is None and CTBR.ctbr_scaling == CTBR.ctbr


def test_train_config_with_ctbr_action_loads_from_yaml(tmp_path):
    path = tmp_path / "ctbr.yaml"
    base = (T.__file__.rsplit("/snn_controller/", 1)[0]) + "/config/train/td3bc_jsrl.yaml"
    path.write_text(f"base: {base}\nname: td3bc_jsrl_ctbr\n"
                    "task: {action: ctbr, ctbr: {max_rate_xy: 10.0, max_rate_z: 3.0}}\n")
    task = load_train_config(path).task
    assert task.action == "ctbr" and task.ctbr == T.CtbrScaling(max_rate_xy=10.0, max_rate_z=3.0)
    path.write_text(f"base: {base}\nname: bad\ntask: {{action: rates}}\n")
    with pytest.raises(ConfigError, match=r"action: 'rates' is not one of \['motors', 'ctbr'\]"):
        load_train_config(path)


def test_a_ctbr_model_file_records_its_interface_and_is_flown_with_it(tmp_path):
    """The trainer writes the action interface into the model file; eval and the nodes build their task
    and guide from it, and refuse a task that would fly the outputs as something else."""
    from snn_controller.control.controllers import deployed_controller, evaluate_model, model_task
    from snn_controller.io.model_file import ModelFileError, load_model, model_ctbr
    from snn_controller.networks.files import save_actor
    from snn_controller.networks.spiking import ActorArchitecture, SpikingActor

    scaling = T.CtbrScaling(max_rate_xy=10.0, max_rate_z=3.0)
    actor = SpikingActor(ActorArchitecture(T.OBS_DIM, (16,), 4), slope=2.0)
    save_actor(actor, tmp_path / "ctbr.safetensors", drone="cf21", dt=0.01, provenance={}, ctbr=scaling)
    save_actor(actor, tmp_path / "motors.safetensors", drone="cf21", dt=0.01, provenance={})
    _, manifest = load_model(tmp_path / "ctbr.safetensors")
    assert manifest["action"] == {"interface": "ctbr", "max_rate_xy": 10.0, "max_rate_z": 3.0}
    assert "CTBR" in manifest["action_layout"] and model_ctbr(manifest) == scaling
    task = model_task(manifest, start="moderate")
    assert task.action == "ctbr" and task.ctbr_scaling == scaling and task.drone == "cf21"
    assert model_ctbr(load_model(tmp_path / "motors.safetensors")[1]) is None
    result = evaluate_model(tmp_path / "ctbr.safetensors", task, episodes=2, warmup_steps=5)
    assert result["episodes"] == 2
    with pytest.raises(ModelFileError, match="outputs are CTBR setpoints.*the task flies motor commands"):
        evaluate_model(tmp_path / "ctbr.safetensors", T.TaskConfig(start="moderate"), episodes=2)
    with pytest.raises(ModelFileError, match="outputs are motor commands.*the task flies CTBR"):
        evaluate_model(tmp_path / "motors.safetensors", task, episodes=2)
    # the node's controller: its guide (and failsafe) flies the model's interface
    assert deployed_controller(str(tmp_path / "ctbr.safetensors"), "cf21", 1, 0.01).handover.guide.ctbr == scaling
    assert deployed_controller(str(tmp_path / "motors.safetensors"), "cf21", 1, 0.01).handover.guide.ctbr is None


def test_the_trainer_saves_ctbr_models(tmp_path):
    from snn_controller.io.model_file import load_model, model_ctbr
    from snn_controller.train.run import Trainer

    path = tmp_path / "ctbr.yaml"
    base = (T.__file__.rsplit("/snn_controller/", 1)[0]) + "/config/train/td3bc_jsrl_ctbr.yaml"
    path.write_text(f"base: {base}\nname: tiny\nnum_drones: 2\nactor_hidden: [8]\ncritic_hidden: [8]\n")
    trainer = Trainer(load_train_config(path), tmp_path / "run", log=lambda *a: None)
    trainer.save_model(tmp_path / "model.safetensors")
    assert model_ctbr(load_model(tmp_path / "model.safetensors")[1]) == T.CtbrScaling()


def test_outputs_map_to_the_setpoint_and_the_hover_output_hovers():
    model = load_drone("cf21")
    env = FlightEnv(CTBR.with_options(start="paper"), 2, seed=0, dtype=F64)
    assert isinstance(env.engine, RateControlledEngine) and env.engine.inner_steps == 5
    # the thrust output that hovers is the motor task's hover command (PWM ratio = w_cmd): rates 0
    assert env.hover_command.tolist() == [model.hover_action, 0.0, 0.0, 0.0]
    assert (env.hover_command[0] + 1) / 2 == pytest.approx(hover_thrust(model))
    u = torch.tensor([[-1.0, 1.0, -0.5, 1.0], [model.hover_action, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(env._engine_command(u), torch.tensor(
        [[0.0, 14.0, -7.0, 4.5], [hover_thrust(model), 0.0, 0.0, 0.0]], dtype=F64))
    # at rest at the target the hover command holds it: reward = survive - 0, no action penalty
    at_target = lambda *v: torch.tensor([v] * 2, dtype=F64)  # noqa: E731
    start = DroneState(at_target(0.0, 0.0, 1.0), at_target(1.0, 0.0, 0.0, 0.0), at_target(0.0, 0.0, 0.0),
                       at_target(0.0, 0.0, 0.0), at_target(*[model.hover_rotor_speed] * 4))
    env.reset()
    env.engine.reset(start)
    for _ in range(50):
        _, r, terminated, _, _ = env.step(env.hover_command.expand(2, 4))
    assert not terminated.any()
    assert (env.engine.state.position - torch.tensor([0.0, 0.0, 1.0], dtype=F64)).norm(dim=-1).max() < 1e-3
    assert r.tolist() == pytest.approx([1.0, 1.0], abs=1e-3)


def test_resetting_drones_reinitialises_their_rate_controller():
    env = FlightEnv(CTBR, 3, seed=0, dtype=F64)
    env.reset()
    env.step(env.hover_command.expand(3, 4))
    assert not env.engine.controller.fresh.any()
    env._reset_drones(torch.tensor([False, True, False]))
    assert env.engine.controller.fresh.tolist() == [False, True, False]


def test_ctbr_pid_flies_moderate_starts_like_the_motor_pid():
    """Measured (100 moderate starts, seed 0, batched float64, final stage, observation noise):
    motor PID survival 1.00, late position error 1.64 cm, return 402.0;
    CTBR PID survival 1.00, late position error 1.50 cm, return 405.0."""
    n, model = 100, load_drone("cf21")
    motor = evaluate(PIDController(model, n, CTBR.dt), CTBR.with_options(action="motors"), n, seed=0)
    ctbr = evaluate(make_guide("pid", "cf21", n, CTBR.dt, CTBR.ctbr_scaling), CTBR, n, seed=0)
    assert motor["survival_rate"] >= 0.9 and ctbr["survival_rate"] >= 0.9, (motor, ctbr)
    assert ctbr["position_error_mean"] < 0.03, ctbr  # hovers within a few cm (noisy observations)
    assert ctbr["return_mean"] > 0.9 * motor["return_mean"], (motor, ctbr)


def test_guide_ann_is_refused_for_the_ctbr_task():
    with pytest.raises(ValueError, match="guide is a PID"):
        make_guide("models/guide_cf21.safetensors", "cf21", 1, 0.01, T.CtbrScaling())


def test_engines_agree_on_a_ctbr_episode():
    """The CTBR PID flies the same 3 moderate starts on both engines for 0.5 s (same seed: same starts
    and noise). Measured: positions 0.13 mm apart at most, drones moved up to 0.36 m; ~15x margin."""
    n, steps = 3, 50
    config = CTBR.with_options(episode_steps=steps)
    final, moved = {}, {}
    for engine in ("batched", "pybullet"):
        env = FlightEnv(config, n, engine=engine, seed=3, autoreset=False, dtype=F64)
        try:
            obs, _ = env.reset()
            start = env.engine.state.position - env.origin
            pid = make_guide("pid", "cf21", n, config.dt, config.ctbr_scaling)
            for _ in range(steps):
                obs, _, terminated, _, _ = env.step(torch.as_tensor(pid(obs.numpy())))
            assert not terminated.any()
            final[engine] = env.engine.state.position - env.origin
            moved[engine] = (final[engine] - start).norm(dim=-1).max().item()
        finally:
            env.close()
    gap = (final["batched"] - final["pybullet"]).norm(dim=-1)
    assert gap.max() < 0.002, gap
    assert min(moved.values()) > 0.1  # the drones flew: not a trivially passing comparison
