"""The flight task: reward, curriculum, termination, start distributions, observation, targets.

Expected values are computed here from the formulas of docs/task.md section 2.
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from snn_controller.config import ConfigError  # noqa: E402
from snn_controller.sim.state import DroneState  # noqa: E402
from snn_controller.task import spec as T

F64 = torch.float64
A_HOVER = 2 * 0.667 - 1
# paper Table 5 (docs/task.md): C_rp, C_rv, C_ra, C_rq, C_rs
START = dict(rp=1.0, rv=0.01, ra=0.14, rq=0.25, rs=1.0)
END = dict(rp=3.5, rv=0.10, ra=0.50, rq=0.25, rs=1.0)


def _weights_by_hand(stage):
    f = stage / 5
    return {k: START[k] + f * (END[k] - START[k]) for k in START}


def _state(position, quaternion, velocity, omega=(0.0, 0.0, 0.0), rotor=0.66):
    t = lambda v: torch.tensor([v], dtype=F64)  # noqa: E731
    return DroneState(t(position), t(quaternion), t(velocity), t(omega), torch.full((1, 4), rotor, dtype=F64))


# A known state: 0.4 rad about axis (1, 2, 2) / 3
THETA = 0.4
AXIS = (1 / 3, 2 / 3, 2 / 3)
QUAT = (math.cos(THETA / 2),) + tuple(a * math.sin(THETA / 2) for a in AXIS)
TARGET = (0.0, 0.0, 1.0)
POS = (0.1, -0.2, 1.3)
VEL = (0.5, 0.0, -1.0)
ACTION = (0.1, 0.5, -0.2, 0.9)


def _reward_by_hand(stage, attitude):
    c = _weights_by_hand(stage)
    p2 = sum((p - t) ** 2 for p, t in zip(POS, TARGET))  # 0.01 + 0.04 + 0.09
    v2 = sum(v * v for v in VEL)
    a2 = sum((a - A_HOVER) ** 2 for a in ACTION)
    if attitude == "angle":
        e_q = THETA**2
    else:
        qz = QUAT[3]
        e_q = 2 * math.acos(1 - qz * qz)
    return c["rs"] - c["rp"] * p2 - c["rv"] * v2 - c["rq"] * e_q - c["ra"] * a2


def test_curriculum_weights_match_paper_table():
    cur = T.Curriculum()
    assert cur.stages == 6
    for stage in range(6):
        w, h = cur.weights(stage), _weights_by_hand(stage)
        assert w.position == pytest.approx(h["rp"])
        assert w.velocity == pytest.approx(h["rv"])
        assert w.action == pytest.approx(h["ra"])
        assert w.attitude == pytest.approx(h["rq"])
        assert w.survive == pytest.approx(h["rs"])
    assert cur.weights(0).position == pytest.approx(1.0) and cur.weights(5).position == pytest.approx(3.5)
    assert cur.weights(2).position == pytest.approx(2.0)  # 1 + 2/5 * 2.5


@pytest.mark.parametrize("stage", [0, 2, 5])
@pytest.mark.parametrize("attitude", ["angle", "yaw"])
def test_reward_by_hand(stage, attitude):
    s = _state(POS, QUAT, VEL)
    cfg = T.TaskConfig(stage=stage, attitude_error=attitude)
    r = T.reward(s, torch.tensor([ACTION], dtype=F64), torch.tensor([TARGET], dtype=F64),
                 torch.zeros(1, 3, dtype=F64), cfg.curriculum.weights(stage), attitude, A_HOVER)
    assert r.shape == (1,)
    assert r.item() == pytest.approx(_reward_by_hand(stage, attitude), rel=1e-9)


def test_reward_stage0_value_spelled_out():
    """Stage 0, angle error, written out term by term as a second check of the helper above."""
    p2 = 0.01 + 0.04 + 0.09
    v2 = 0.25 + 0.0 + 1.0
    a2 = (0.1 - 0.334) ** 2 + (0.5 - 0.334) ** 2 + (-0.2 - 0.334) ** 2 + (0.9 - 0.334) ** 2
    expected = 1.0 - 1.0 * p2 - 0.01 * v2 - 0.25 * 0.16 - 0.14 * a2
    s = _state(POS, QUAT, VEL)
    w = T.Curriculum().weights(0)
    r = T.reward(s, torch.tensor([ACTION], dtype=F64), torch.tensor([TARGET], dtype=F64),
                 torch.zeros(1, 3, dtype=F64), w, "angle", A_HOVER)
    assert r.item() == pytest.approx(expected, rel=1e-9)


def test_attitude_errors():
    # pure yaw of 90 deg: angle form = (pi/2)^2; yaw form with q_z = sin(pi/4): 2 acos(1 - 1/2) = 2 pi / 3
    q = torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]], dtype=F64)
    assert T.attitude_error(q, "angle").item() == pytest.approx((math.pi / 2) ** 2)
    assert T.attitude_error(q, "yaw").item() == pytest.approx(2 * math.pi / 3)
    # pure roll: the yaw-only form ignores it, the angle form does not
    q = torch.tensor([[math.cos(0.3), math.sin(0.3), 0, 0]], dtype=F64)
    assert T.attitude_error(q, "yaw").item() == pytest.approx(0.0, abs=1e-12)
    assert T.attitude_error(q, "angle").item() == pytest.approx(0.36)
    # q and -q are the same attitude
    assert T.attitude_error(-q, "angle").item() == pytest.approx(0.36)
    level = torch.tensor([[1.0, 0, 0, 0]], dtype=F64)
    assert T.attitude_error(level, "angle").item() == 0.0 and T.attitude_error(level, "yaw").item() == 0.0


def test_reward_uses_target_velocity():
    s = _state(TARGET, (1.0, 0, 0, 0), (0.3, 0.0, 0.0))
    w = T.Curriculum().weights(5)
    hover = torch.full((1, 4), A_HOVER, dtype=F64)
    tp = torch.tensor([TARGET], dtype=F64)
    r_fixed = T.reward(s, hover, tp, torch.zeros(1, 3, dtype=F64), w, "angle", A_HOVER)
    r_moving = T.reward(s, hover, tp, torch.tensor([[0.3, 0.0, 0.0]], dtype=F64), w, "angle", A_HOVER)
    assert r_fixed.item() == pytest.approx(1.0 - 0.10 * 0.09)
    assert r_moving.item() == pytest.approx(1.0)


def test_termination():
    tp = torch.tensor([TARGET] * 6, dtype=F64)
    offsets = [(0.59, 0, 0), (0.61, 0, 0), (0, -0.59, 0), (0, -0.61, 0), (0, 0, 0.59), (0, 0, -0.61)]
    pos = tp + torch.tensor(offsets, dtype=F64)
    quat = torch.zeros(6, 4, dtype=F64)
    quat[:, 0] = 1
    z3 = torch.zeros(6, 3, dtype=F64)
    s = DroneState(pos, quat, z3, z3.clone(), torch.full((6, 4), 0.66, dtype=F64))
    assert T.crashed(s, tp, 0.6).tolist() == [False, True, False, True, False, True]
    # a NaN or inf anywhere in the state is a crash, even at the target
    for key in ("position", "quaternion", "velocity", "angular_velocity", "rotor_speed"):
        s = _state(TARGET, (1.0, 0, 0, 0), (0, 0, 0))
        getattr(s, key)[0, 0] = float("nan")
        assert T.crashed(s, torch.tensor([TARGET], dtype=F64), 0.6).tolist() == [True], key
    s = _state(TARGET, (1.0, 0, 0, 0), (float("inf"), 0, 0))
    assert T.crashed(s, torch.tensor([TARGET], dtype=F64), 0.6).tolist() == [True]


def test_curriculum_stage_out_of_range():
    cur = T.Curriculum()
    for bad in (-1, 6, 10):
        with pytest.raises(ValueError):
            cur.weights(bad)
        with pytest.raises(ValueError, match="stage"):
            T.TaskConfig(stage=bad)
    with pytest.raises(ConfigError):
        T.TaskConfig(start="wild")


def test_stage_out_of_range_in_a_file_names_file_and_key(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("stage: 6\n")
    with pytest.raises(ConfigError) as info:
        T.load_task_config(path)
    assert str(path) in str(info.value) and "stage" in str(info.value)


# --- start distributions -----------------------------------------------------------------------
N_START = 20000


def _tilt(q):
    qx, qy = q[:, 1], q[:, 2]
    return torch.rad2deg(torch.acos((1 - 2 * (qx * qx + qy * qy)).clamp(-1, 1)))


@pytest.fixture(scope="module")
def starts():
    target = torch.tensor([0.2, -0.1, 1.0], dtype=F64).expand(N_START, 3)
    out = {}
    for name in ("paper", "moderate"):
        g = torch.Generator().manual_seed(11)
        out[name] = T.sample_start(T.STARTS[name], N_START, target, 0.66, g)
    return target, out


def test_start_at_target_fraction(starts):
    target, out = starts
    for name, s in out.items():
        at = (s.position == target).all(-1)
        frac = at.float().mean().item()
        assert frac == pytest.approx(0.1, abs=0.015), name  # 10 sigma of a binomial(20000, 0.1) = 0.021
        # those are at rest, level, rotors at hover
        assert (s.velocity[at] == 0).all() and (s.angular_velocity[at] == 0).all()
        assert torch.equal(s.quaternion[at], torch.tensor([1.0, 0, 0, 0], dtype=F64).expand(int(at.sum()), 4))
        assert (s.rotor_speed[at] == 0.66).all()


def test_start_ranges_paper(starts):
    target, out = starts
    s = out["paper"]
    moving = ~(s.position == target).all(-1)
    err = s.position - target
    assert (err.abs() <= 0.5).all() and err.abs().max() > 0.49
    assert ((s.quaternion.norm(dim=-1) - 1).abs() < 1e-12).all()
    tilt = _tilt(s.quaternion[moving])
    assert tilt.max() <= 90.0 + 1e-9 and tilt.max() > 88.0
    # uniform on the spherical cap: cos(tilt) ~ U(cos 90deg, 1) -> mean 0.5
    assert torch.cos(torch.deg2rad(tilt)).mean().item() == pytest.approx(0.5, abs=0.02)
    v, om, w = s.velocity[moving], s.angular_velocity[moving], s.rotor_speed[moving]
    assert (v.abs() <= 1.0).all() and v.abs().max() > 0.99 and v.mean().abs() < 0.03
    assert (om.abs() <= 1.0).all() and om.abs().max() > 0.99
    # rotor speeds U(0, 1)
    assert (w >= 0).all() and (w <= 1).all()
    assert w.min() < 0.01 and w.max() > 0.99 and w.mean().item() == pytest.approx(0.5, abs=0.01)
    assert w.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.01)


def test_start_ranges_moderate(starts):
    target, out = starts
    s = out["moderate"]
    moving = ~(s.position == target).all(-1)
    assert ((s.position - target).abs() <= 0.5).all()
    tilt = _tilt(s.quaternion[moving])
    assert tilt.max() <= 30.0 + 1e-9 and tilt.max() > 29.0
    v, om = s.velocity[moving], s.angular_velocity[moving]
    assert (v.abs() <= 0.5).all() and v.abs().max() > 0.49
    assert (om.abs() <= 1.0).all() and om.abs().max() > 0.99
    assert (s.rotor_speed == 0.66).all()


def test_start_yaw_is_uniform(starts):
    target, out = starts
    s = out["moderate"]
    q = s.quaternion[~(s.position == target).all(-1)]  # the at-target starts have yaw 0
    # heading of the body x axis projected on the ground: R[0,0], R[1,0]
    w, x, y, z = q.unbind(-1)
    heading = torch.atan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))
    hist = torch.histc(heading, bins=8, min=-math.pi, max=math.pi) / len(heading)
    assert (hist - 1 / 8).abs().max() < 0.02


# --- observation --------------------------------------------------------------------------
def test_observation_layout():
    # 90 deg yaw: body x -> world y, R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    s = _state((1.0, 2.0, 3.0), (math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)), (0.4, 0.5, 0.6),
               omega=(0.7, 0.8, 0.9))
    obs = T.observation(s, torch.tensor([[0.5, 0.5, 0.5]], dtype=F64))
    assert obs.shape == (1, T.OBS_DIM) and T.OBS_DIM == 18
    expected = [0.5, 1.5, 2.5, 0, -1, 0, 1, 0, 0, 0, 0, 1, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert obs[0].tolist() == pytest.approx(expected, abs=1e-12)
    # a roll of +90 deg about x: body y -> world z, body z -> world -y; row-major R = [[1,0,0],[0,0,-1],[0,1,0]]
    s = _state((0.0, 0.0, 0.0), (math.cos(math.pi / 4), math.sin(math.pi / 4), 0, 0), (0, 0, 0))
    obs = T.observation(s, torch.zeros(1, 3, dtype=F64))
    assert obs[0, 3:12].tolist() == pytest.approx([1, 0, 0, 0, 0, -1, 0, 1, 0], abs=1e-12)
    assert T.PRIVILEGED_OBS_DIM == 18 + 32 * 4 == 146


def test_observation_noise_std_layout():
    std = T.observation_noise_std(T.ObservationNoise())
    assert std.tolist() == pytest.approx([0.05] * 3 + [0.001] * 9 + [0.1] * 3 + [0.2] * 3)


# --- targets --------------------------------------------------------------------------------
def _finite_difference_check(target, t_max):
    h = 1e-5
    t = torch.linspace(0.01, t_max, 257, dtype=F64)
    p_plus, _ = T.target_at(target, t + h)
    p_minus, _ = T.target_at(target, t - h)
    _, v = T.target_at(target, t)
    return t, (p_plus - p_minus) / (2 * h), v


@pytest.mark.parametrize("kind", ["circle", "figure8"])
def test_moving_target_velocity_is_derivative(kind):
    target = T.TargetConfig(kind=kind, position=(0.5, -0.5, 1.2), radius=0.3, period=4.0)
    _, fd, v = _finite_difference_check(target, 8.0)
    assert (fd - v).abs().max() < 1e-6
    assert v.norm(dim=-1).max() > 0.3  # it does move: 2 pi r / T = 0.47 m/s for the circle
    p0, _ = T.target_at(target, torch.zeros(1, dtype=F64))
    assert p0[0].tolist() == pytest.approx([0.5, -0.5, 1.2])  # starts at the configured position
    t = torch.linspace(0, 8, 101, dtype=F64)
    p, _ = T.target_at(target, t)
    assert (p[:, 2] == 1.2).all()
    p_period, _ = T.target_at(target, t + 4.0)
    assert (p_period - p).abs().max() < 1e-9  # periodic
    if kind == "circle":
        # every point lies at distance r from one centre
        half, _ = T.target_at(target, torch.tensor([2.0], dtype=F64))
        centre = (p[0] + half[0]) / 2  # the start and half a lap later are opposite points
        assert (p - centre).norm(dim=-1).tolist() == pytest.approx([0.3] * 101, abs=1e-9)
        assert v.norm(dim=-1).tolist() == pytest.approx([2 * math.pi * 0.3 / 4.0] * 257, rel=1e-9)


def test_waypoint_target():
    wps = ((0.0, 0.0, 1.0), (0.5, 0.0, 1.0), (0.5, 0.5, 1.5))
    target = T.TargetConfig(kind="waypoints", waypoints=wps, dwell=2.0)
    t = torch.tensor([0.0, 1.99, 2.0, 3.5, 4.01, 10.0], dtype=F64)
    p, v = T.target_at(target, t)
    assert p.tolist() == [list(wps[0]), list(wps[0]), list(wps[1]), list(wps[1]), list(wps[2]), list(wps[2])]
    assert (v == 0).all()
    _, fd, v = _finite_difference_check(target, 7.9)
    t = torch.linspace(0.01, 7.9, 257, dtype=F64)
    away = ((t / 2.0) - torch.round(t / 2.0)).abs() > 1e-3  # away from the jumps
    assert (fd[away] - v[away]).abs().max() < 1e-9


def test_fixed_target_and_target_validation():
    p, v = T.target_at(T.TargetConfig(position=(1.0, 2.0, 3.0)), torch.tensor([0.0, 5.0], dtype=F64))
    assert p.tolist() == [[1.0, 2.0, 3.0]] * 2 and (v == 0).all()
    with pytest.raises(ConfigError):
        T.TargetConfig(kind="waypoints")
    with pytest.raises(ConfigError):
        T.TargetConfig(kind="circle", period=0.0)


def test_load_task_config_rejects_unknown_key(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("drone: cf2x\nstage: 3\nstart: moderate\ntarget: {kind: circle, radius: 0.2}\n")
    cfg = T.load_task_config(path)
    assert cfg.drone == "cf2x" and cfg.stage == 3 and cfg.target.kind == "circle" and cfg.target.radius == 0.2
    path.write_text("drone: cf2x\nstagee: 3\n")
    with pytest.raises(ConfigError, match="stagee"):
        T.load_task_config(path)
