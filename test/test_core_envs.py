"""FlightEnv on both engines, episode bookkeeping, autoreset, determinism, the Gymnasium wrapper."""

import math
import warnings

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from snn_controller.task import spec as T
from snn_controller.task.envs import CrazyflieEnv, FlightEnv  # noqa: E402
from snn_controller.control.pid import PIDController  # noqa: E402
from snn_controller.sim.state import DroneState  # noqa: E402

F64 = torch.float64
A_HOVER_TASK = 2 * 0.667 - 1


def _hover_w_cf21():
    """Larger root of 4 (0.0213 - 0.0112 w + 0.1201 w^2) = 0.027 * 9.81 (docs/task.md)."""
    c = 0.0213 - 0.027 * 9.81 / 4
    return (0.0112 + math.sqrt(0.0112**2 - 4 * 0.1201 * c)) / (2 * 0.1201)


@pytest.mark.parametrize("drone", ["cf21", "cf2x"])
def test_batched_and_pybullet_envs_agree(drone):
    cfg = T.TaskConfig(drone=drone, start="moderate")
    eb = FlightEnv(cfg, 4, engine="batched", seed=3, autoreset=False, dtype=F64)
    ep = FlightEnv(cfg, 4, engine="pybullet", seed=3, autoreset=False)
    try:
        ob, _ = eb.reset()
        op, _ = ep.reset()
        # same seed: same starts and the same noise draws
        assert (ob.actor - op.actor).abs().max() < 1e-9
        assert (ob.critic - op.critic).abs().max() < 1e-9
        # the pybullet copies really sit in different places of one world
        assert ep.engine.state.position[:, 0].unique().numel() == 4
        policy = PIDController(eb.model, 4)
        for _ in range(100):
            a = policy(ob.numpy())
            ob, rb, tb, trb, _ = eb.step(a)
            op, rp, tp, trp, _ = ep.step(a)
            assert (ob.actor - op.actor).abs().max() < 0.02
            assert (ob.critic - op.critic).abs().max() < 0.02
            assert (rb - rp).abs().max() < 0.01
            assert torch.equal(tb, tp) and torch.equal(trb, trp)
        # the PID kept every drone flying and brought it near the target (not a trivial comparison)
        assert ep.active.all() and eb.active.all()
        assert (rb > 0.5).all() and (rp > 0.5).all()
    finally:
        eb.close()
        ep.close()


def _env_at_target(drone="cf21", n=2, **kwargs):
    cfg = T.TaskConfig(drone=drone, **kwargs)
    env = FlightEnv(cfg, n, engine="batched", seed=0, autoreset=False, dtype=F64)
    env.reset()
    target = torch.tensor(cfg.target.position, dtype=F64)
    env.engine.reset(DroneState.hover(n, env.model, position=target))
    return env


@pytest.mark.parametrize("hover_action", [None, A_HOVER_TASK])
def test_episode_at_target_with_hover_actions_survives_to_truncation(hover_action):
    """a_hover is the drone's own hover command by default; docs/task.md's rounded 0.334 stays selectable."""
    env = _env_at_target(hover_action=hover_action)
    w = _hover_w_cf21()
    a_model = 2 * w - 1  # the model's own hover command (~0.320)
    a_hover = a_model if hover_action is None else hover_action
    action = torch.full((2, 4), a_model, dtype=F64)
    episodes = []
    for k in range(1, 501):
        _, r, term, trunc, info = env.step(action)
        episodes += info["episodes"]
        assert not term.any()
        assert trunc.all() == (k == 500) and trunc.any() == (k == 500), k
    # per step: C_rs - C_ra * 4 (a - a_hover)^2 at the final stage (C_ra = 0.5), other terms ~0
    per_step = 1.0 - 0.5 * 4 * (a_model - a_hover) ** 2
    assert len(episodes) == 2
    for e in episodes:
        assert e["length"] == 500 and e["survived"] is True
        assert e["return"] == pytest.approx(500 * per_step, rel=1e-6)
        assert e["return"] <= 500 and e["return"] > 499  # "500 * (1 - small)"
        assert e["position_error"] < 1e-4
        assert e["action_deviation"] == pytest.approx(abs(a_model - a_hover), rel=1e-9, abs=1e-12)
    # without autoreset a finished drone is frozen: reward 0, no further flags, inactive
    _, r, term, trunc, info = env.step(action)
    assert (r == 0).all() and not term.any() and not trunc.any() and info["episodes"] == []
    assert not env.active.any()


def test_episode_length_follows_config():
    env = _env_at_target(episode_steps=7)
    action = torch.full((2, 4), 2 * _hover_w_cf21() - 1, dtype=F64)
    flags = [env.step(action)[3].all().item() for _ in range(7)]
    assert flags == [False] * 6 + [True]


def test_crash_terminates_without_autoreset():
    env = _env_at_target()
    s = env.engine.state.select(torch.tensor([0]))
    s.position[0, 0] += 0.7  # 0.7 m beside the target: past the 0.6 m limit
    env.engine.reset(s, torch.tensor([0]))
    action = torch.full((2, 4), 2 * _hover_w_cf21() - 1, dtype=F64)
    _, r, term, trunc, info = env.step(action)
    assert term.tolist() == [True, False] and not trunc.any()
    assert len(info["episodes"]) == 1
    e = info["episodes"][0]
    assert e["drone"] == 0 and e["survived"] is False and e["length"] == 1
    # the crash step itself is still rewarded from the true state: 1 - 3.5 * 0.7^2 - ...
    assert r[0].item() == pytest.approx(1 - 3.5 * 0.49, rel=1e-4)  # hover command: no action penalty
    _, r, term, trunc, info = env.step(action)
    assert r[0] == 0 and not term[0] and info["episodes"] == []
    assert env.active.tolist() == [False, True]


def test_non_finite_action_is_rejected():
    env = _env_at_target()
    with pytest.raises(ValueError):
        env.step(torch.tensor([[float("nan"), 0, 0, 0], [0, 0, 0, 0]], dtype=F64))
    with pytest.raises(ValueError):
        env.step(torch.zeros(3, 4, dtype=F64))


def test_autoreset_resets_only_the_done_drone():
    cfg = T.TaskConfig(start="moderate")
    env = FlightEnv(cfg, 3, engine="batched", seed=5, autoreset=True, dtype=F64)
    twin = FlightEnv(cfg, 3, engine="batched", seed=5, autoreset=True, dtype=F64)
    env.reset()
    twin.reset()
    s = env.engine.state.select(torch.tensor([1]))
    s.position[0, 2] = 1.0 + 0.9  # far above the target at (0, 0, 1)
    env.engine.reset(s, torch.tensor([1]))
    action = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3, dtype=F64)
    obs, r, term, trunc, info = env.step(action)
    twin.step(action)
    assert term.tolist() == [False, True, False]
    assert info["done_mask"].tolist() == [False, True, False]
    assert [e["drone"] for e in info["episodes"]] == [1] and info["episodes"][0]["survived"] is False
    # final_obs is the observation before the reset: drone 1 still ~0.9 m above (true critic part)
    assert info["final_obs"].critic[1, 2].item() > 0.6
    # the returned observation is after the reset: drone 1 back inside the start box, fresh history
    assert obs.critic[1, :3].abs().max() <= 0.5
    assert torch.allclose(obs.critic[1, 18:], torch.tensor(2 * _hover_w_cf21() - 1, dtype=obs.critic.dtype))
    assert obs.critic[0, -4:].tolist() == pytest.approx(action[0].tolist())
    assert env.steps.tolist() == [1, 0, 1]
    assert env.active.all()
    # the other drones flew on untouched: the same state as in the twin env
    for key in ("position", "quaternion", "velocity", "angular_velocity", "rotor_speed"):
        assert torch.equal(getattr(env.engine.state, key)[[0, 2]], getattr(twin.engine.state, key)[[0, 2]]), key
    # and their episodes go on: the next step counts 2 for them and 1 for the new episode
    env.step(action)
    assert env.steps.tolist() == [2, 1, 2]
    env.close()
    twin.close()


def test_same_seed_is_deterministic():
    cfg = T.TaskConfig(start="paper")
    runs = []
    for seed in (42, 42, 43):
        env = FlightEnv(cfg, 4, engine="batched", seed=seed, autoreset=True)
        obs, _ = env.reset()
        seq = [obs.actor.clone()]
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            a = 2 * torch.rand(4, 4, generator=g) - 1
            obs, r, *_ = env.step(a)
            seq.append(obs.actor.clone())
            seq.append(r.clone())
        runs.append(seq)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
    # reset(seed) reproduces the same starts on the same env
    env = FlightEnv(cfg, 4, engine="batched", seed=1)
    first, _ = env.reset(seed=9)
    again, _ = env.reset(seed=9)
    assert torch.equal(first.actor, again.actor)


def test_observation_noise_and_history():
    cfg = T.TaskConfig(start="moderate")
    env = FlightEnv(cfg, 4000, engine="batched", seed=2, autoreset=False, dtype=F64)
    obs, _ = env.reset()
    assert obs.actor.shape == (4000, 18) and obs.privileged.shape == (4000, 146) and obs.critic.shape == (4000, 146)
    # the critic sees the true state; the actor the same plus Gaussian noise of docs/task.md's std
    target = torch.tensor(cfg.target.position, dtype=F64)
    true = T.observation(env.engine.state, target.expand(4000, 3))
    assert (obs.critic[:, :18] - true).abs().max() < 1e-12
    noise = obs.actor - obs.critic[:, :18]
    expected = [0.05] * 3 + [0.001] * 9 + [0.1] * 3 + [0.2] * 3
    assert noise.std(0).tolist() == pytest.approx(expected, rel=0.05)
    assert noise.mean(0).abs().max() < 0.02
    assert torch.equal(obs.privileged[:, :18], obs.actor)
    # history: the last 32 actions, oldest first
    env = FlightEnv(cfg, 2, engine="batched", seed=2, autoreset=False, dtype=F64)
    env.reset()
    actions = [torch.full((2, 4), 0.01 * k, dtype=F64) for k in range(40)]
    for a in actions:
        obs, *_ = env.step(a)
    hist = obs.privileged[0, 18:].reshape(32, 4)
    assert hist[:, 0].tolist() == pytest.approx([0.01 * k for k in range(8, 40)])
    assert torch.equal(obs.privileged[:, 18:], obs.critic[:, 18:])


# --- Gymnasium ----------------------------------------------------------------------------------
def test_crazyflie_env_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    env = CrazyflieEnv(engine="batched")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert obs.shape == (18,) and obs.dtype == np.float64 and "state" in info
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert obs.shape == (18,) and isinstance(r, float) and isinstance(term, bool) and isinstance(trunc, bool)
    env.close()


def test_crazyflie_env_privileged_and_pybullet():
    env = CrazyflieEnv(engine="batched", privileged=True, drone="cf2x", start="moderate")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (146,) and env.observation_space.shape == (146,)
    assert obs[18:] == pytest.approx(np.full(128, 1 / 3))  # cf2x hovers at 2/3 of its maximum rotor speed
    env.close()
    env = CrazyflieEnv(engine="pybullet")
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (18,) and env.observation_space.contains(obs)
        for _ in range(5):
            obs, r, term, trunc, _ = env.step(np.zeros(4))
        assert obs.shape == (18,) and np.isfinite(obs).all()
    finally:
        env.close()
    with pytest.raises(ValueError):
        CrazyflieEnv(engine="batched", render_mode="human")
