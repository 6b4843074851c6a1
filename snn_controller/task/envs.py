"""Environments of the flight task on either engine.

:class:`FlightEnv` steps N drones with per-drone episodes on the batched engine (training)
or the pybullet engine (reference): both share every line of task logic and draw the same
random numbers for the same seed, so they differ only in the physics. Latency (action and
observation delay, jitter) and domain randomisation (``config.latency``, ``config.randomization``)
are applied here, above the engines, so both engines fly under identical conditions. :class:`CrazyflieEnv`
is the single-drone Gymnasium environment (numpy in, numpy out) on top of it.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch

from ..sim.drone import load_drone
from ..sim.engines import make_engine
from ..sim.firmware import RateControlledEngine
from ..sim.state import DroneState
from . import spec as T
from .observation import ANGULAR_VELOCITY, POSITION_ERROR, VELOCITY, Observation


# The latency and randomisation draws have a generator of their own, so the starts and the noise of
# a seed are the same with and without them.
DOMAIN_SEED_OFFSET = 7_919


class FlightEnv:
    """N copies of the task, stepped together.

    Args:
        config: the task.
        n: number of drones (parallel episodes).
        engine: ``batched`` or ``pybullet``.
        seed: seeds the initial states and the observation noise.
        autoreset: reset each drone when its episode ends (training). Without it, a finished
            drone is frozen (its reward is 0 and ``active`` is False) until :meth:`reset`.
        dtype: float32 or float64 for the batched engine (pybullet is always float64).
        engine_options: passed to the engine (substeps, gui, compile, ground_effect, drag, ...).
        target_fn: ``(t (N,) [s]) -> (position (N, 3), velocity (N, 3))`` replaces ``config.target``
            (a mission's goals).
        engine_factory: builds the engine in place of :func:`~snn_controller.sim.engines.make_engine`,
            with the same arguments (sim-in-the-loop training: the engine runs in bridge processes).

    ``step`` returns ``(obs, reward, terminated, truncated, info)``; ``info["episodes"]`` lists the
    statistics of episodes that ended in this step (see :meth:`_episode_stats`), and with
    autoreset ``info["final_obs"]`` holds the last observation of the drones that were reset.
    """

    def __init__(self, config: T.TaskConfig, n: int = 1, engine: str = "batched", seed: int | None = None,
                 autoreset: bool = True, dtype: torch.dtype = torch.float32, engine_options: dict | None = None,
                 target_fn=None, engine_factory=None):
        self.config, self.n, self.autoreset = config, n, autoreset
        self.target_fn = target_fn or (lambda t: T.target_at(config.target, t))
        self.model = load_drone(config.drone)
        # hover_action: the motor command, or with CTBR the thrust output, that hovers; hover_command:
        # all four outputs that hover (CTBR: rates 0), the centre of the action penalty and the history.
        self.hover_action = self.model.hover_action if config.hover_action is None else config.hover_action
        if config.action == "ctbr":
            self.hover_command = torch.tensor([self.hover_action, 0.0, 0.0, 0.0], dtype=torch.float64)
        else:
            self.hover_command = torch.full((4,), self.hover_action, dtype=torch.float64)
        options = dict(engine_options or {})
        if engine == "pybullet":
            dtype = torch.float64
            options.setdefault("ground", True)
        else:
            options.setdefault("dtype", dtype)
        self.dtype = dtype
        self.engine_kind = engine
        build = engine_factory or make_engine
        if config.action == "ctbr":  # the firmware's rate loop on an engine stepping at its 500 Hz
            self._ctbr_scale = torch.tensor(config.ctbr.scale, dtype=dtype)
            self._ctbr_offset = torch.tensor(config.ctbr.offset, dtype=dtype)
            self.engine = RateControlledEngine(lambda inner_dt: build(engine, self.model, n, dt=inner_dt, **options),
                                               dt=config.dt)
        else:
            self.engine = build(engine, self.model, n, dt=config.dt, **options)
        # Each drone flies in its own task frame: copies sit 2 m apart on x in pybullet's shared world.
        self.origin = torch.zeros(n, 3, dtype=torch.float64)
        if engine == "pybullet":
            self.origin[:, 0] = 2.0 * torch.arange(n)
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.noise_std = T.observation_noise_std(config.noise)
        self.stage = config.stage
        self.steps = torch.zeros(n, dtype=torch.long)
        self.active = torch.ones(n, dtype=torch.bool)
        self.history = self.hover_command.to(dtype).expand(n, T.HISTORY, 4).clone()
        self._init_domain(seed)
        self._stats = {k: torch.zeros(n, dtype=torch.float64) for k in
                       ("return", "late_error", "late_steps", "action_dev")}

    # --- latency and domain randomisation ---------------------------------------------------
    def _init_domain(self, seed: int | None) -> None:
        latency, n = self.config.latency, self.n
        self.domain_generator = torch.Generator().manual_seed(DOMAIN_SEED_OFFSET + (seed or 0))
        self.action_delay = torch.zeros(n, dtype=torch.long)  # steps, this episode's
        self.observation_delay = torch.zeros(n, dtype=torch.long)
        self.noise_scale = torch.ones(n, 1, dtype=torch.float64)
        self.observation_bias = torch.zeros(n, T.OBS_DIM, dtype=torch.float64)
        # Commands in flight, newest first: slot j was sent j steps ago; ``_late``: jittered ones.
        slots = latency.max_action_delay + 1
        self._sent = self.hover_command.to(self.dtype).expand(n, slots, 4).clone()
        self._late = torch.zeros(n, slots, dtype=torch.long)
        # True observations (absolute position) of the last steps, newest first, for observation delay.
        self._observed = None
        if latency.observation_delay[1] > 0:
            self._observed = torch.zeros(n, latency.observation_delay[1] + 1, T.OBS_DIM, dtype=torch.float64)
        r = self.config.randomization
        self._scales_dynamics = any(getattr(r, k) != (1.0, 1.0) for k in
                                    ("mass", "inertia", "thrust", "motor_time_constant"))

    def _draw_domain(self, idx: torch.Tensor) -> None:
        """This episode's delays, physics scales, noise scale and bias for drones ``idx``."""
        g, n = self.domain_generator, self.n
        lat, r = self.config.latency, self.config.randomization
        uniform = lambda lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
        integers = lambda lo_hi: torch.randint(lo_hi[0], lo_hi[1] + 1, (n,), generator=g)  # noqa: E731
        self.action_delay[idx] = integers(lat.action_delay)[idx]
        self.observation_delay[idx] = integers(lat.observation_delay)[idx]
        scales = [uniform(getattr(r, k))[idx] for k in ("mass", "inertia", "thrust", "motor_time_constant")]
        self.noise_scale[idx, 0] = uniform(r.noise)[idx]
        bias = torch.zeros(T.OBS_DIM, dtype=torch.float64)  # the rotation matrix gets none
        bias[POSITION_ERROR], bias[VELOCITY], bias[ANGULAR_VELOCITY] = (r.position_bias, r.velocity_bias,
                                                                        r.angular_velocity_bias)
        self.observation_bias[idx] = ((2 * torch.rand(n, T.OBS_DIM, generator=g, dtype=torch.float64) - 1) * bias)[idx]
        if self._scales_dynamics:
            self.engine.scale_dynamics(*scales, index=idx)
        self._sent[idx] = self.hover_command.to(self.dtype)
        self._late[idx] = 0

    def _deliver(self, action: torch.Tensor) -> torch.Tensor:
        """The commands the motors run this step: the newest that has arrived (``action`` was sent now)."""
        lat = self.config.latency
        if lat.max_action_delay == 0:
            return action
        self._sent = torch.cat([action[:, None], self._sent[:, :-1]], 1)
        late = (torch.rand(self.n, generator=self.domain_generator) < lat.jitter).long() if lat.jitter > 0 \
            else torch.zeros(self.n, dtype=torch.long)
        self._late = torch.cat([late[:, None], self._late[:, :-1]], 1)
        age = torch.arange(self._sent.shape[1])[None]
        arrived = age >= self.action_delay[:, None] + self._late  # the oldest slot has always arrived
        newest = arrived.to(torch.uint8).argmax(1)
        return self._sent[torch.arange(self.n), newest]

    def _engine_command(self, action: torch.Tensor) -> torch.Tensor:
        """What the engine takes: the motor commands, or the CTBR setpoint [thrust, p, q, r] of the outputs."""
        if self.config.action == "ctbr":
            return action * self._ctbr_scale + self._ctbr_offset
        return action

    def _record_observed(self, state: DroneState, idx: torch.Tensor | None = None) -> None:
        """Push this step's true observation (absolute position) into the delay line; ``idx``: drones
        that were just reset, whose whole line is filled with their new state."""
        if self._observed is None:
            return
        absolute = T.observation(state.to(torch.float64), torch.zeros(self.n, 3, dtype=torch.float64))
        if idx is None:
            self._observed = torch.cat([absolute[:, None], self._observed[:, :-1]], 1)
        else:
            self._observed[idx] = absolute[idx, None]

    # --- helpers ------------------------------------------------------------------------
    @property
    def weights(self) -> T.RewardWeights:
        return self.config.curriculum.weights(self.stage)

    def _target(self, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, v = self.target_fn(steps.to(torch.float64) * self.config.dt)
        return p + self.origin, v

    def _observe(self, state: DroneState) -> Observation:
        target_p, _ = self._target(self.steps)
        true = T.observation(state.to(torch.float64), target_p)
        seen = true
        if self._observed is not None:  # the state observation_delay steps ago, against today's target
            seen = self._observed[torch.arange(self.n), self.observation_delay].clone()
            seen[:, POSITION_ERROR] -= target_p
        noise = torch.randn(true.shape, generator=self.generator, dtype=torch.float64) * self.noise_std
        noisy = (seen + noise * self.noise_scale + self.observation_bias).to(self.dtype)
        hist = self.history.reshape(self.n, -1)
        return Observation(actor=noisy, privileged=torch.cat([noisy, hist], -1),
                           critic=torch.cat([true.to(self.dtype), hist], -1))

    def _reset_drones(self, mask: torch.Tensor) -> None:
        idx = mask.nonzero().squeeze(-1)
        if len(idx) == 0:
            return
        self.steps[idx] = 0
        target_p, _ = self._target(self.steps)
        start = T.sample_start(self.config.start_distribution, self.n, target_p, self.model.hover_rotor_speed,
                               self.generator)
        self.engine.reset(start.select(idx), idx)
        self._draw_domain(idx)
        self._record_observed(self.engine.state, idx)
        self.history[idx] = self.hover_command.to(self.dtype)
        self.active[idx] = True
        for v in self._stats.values():
            v[idx] = 0

    def reset(self, seed: int | None = None) -> tuple[Observation, dict]:
        if seed is not None:
            self.generator.manual_seed(seed)
        self.steps.zero_()
        self._reset_drones(torch.ones(self.n, dtype=torch.bool))
        return self._observe(self.engine.state), {}

    # --- stepping -----------------------------------------------------------------------
    def step(self, action: torch.Tensor):
        action = torch.as_tensor(action).to(self.dtype).clamp(-1.0, 1.0)
        if action.shape != (self.n, 4):
            raise ValueError(f"action must have shape ({self.n}, 4), got {tuple(action.shape)}")
        if not torch.isfinite(action).all():
            raise ValueError("action contains NaN or inf")
        state = self.engine.step(self._engine_command(self._deliver(action)))
        self._record_observed(state)
        self.steps += 1
        self.history = torch.cat([self.history[:, 1:], action[:, None]], 1)
        s64 = state.to(torch.float64)
        target_p, target_v = self._target(self.steps)
        r = T.reward(s64, action.to(torch.float64), target_p, target_v, self.weights, self.config.attitude_error,
                     self.hover_command)
        terminated = T.crashed(s64, target_p, self.config.termination_distance)
        r = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
        truncated = (self.steps >= self.config.episode_steps) & ~terminated
        was_active = self.active.clone()
        self._accumulate(s64, action, target_p, r, was_active)
        if not self.autoreset:
            r = torch.where(was_active, r, 0.0)
            terminated &= was_active
            truncated &= was_active
        done = terminated | truncated
        info = {"episodes": self._episode_stats(done, terminated)}
        obs = self._observe(state)
        if self.autoreset and done.any():
            info["final_obs"] = obs
            info["done_mask"] = done
            self._reset_drones(done)
            obs = self._observe(self.engine.state)
        elif not self.autoreset:
            self.active &= ~done
        return obs, r.to(self.dtype), terminated, truncated, info

    def _accumulate(self, s64, action, target_p, r, active):
        half = self.config.episode_steps // 2
        late = (self.steps > half) & active
        err = (s64.position - target_p).norm(dim=-1)
        st = self._stats
        st["return"] += torch.where(active, r, 0.0)
        st["late_error"] += torch.where(late, torch.nan_to_num(err, nan=0.0), 0.0)
        st["late_steps"] += late.double()
        dev = (action.to(torch.float64) - self.hover_command).abs().mean(-1)
        st["action_dev"] += torch.where(active, dev, 0.0)

    def _episode_stats(self, done: torch.Tensor, terminated: torch.Tensor) -> list[dict]:
        """Per finished episode: return, length, survived, late position error (last half), action deviation."""
        out = []
        for i in done.nonzero().squeeze(-1).tolist():
            st = self._stats
            late = st["late_steps"][i].item()
            out.append({
                "drone": i, "return": st["return"][i].item(), "length": int(self.steps[i]),
                "survived": not bool(terminated[i]),
                "position_error": st["late_error"][i].item() / late if late else float("nan"),
                "action_deviation": st["action_dev"][i].item() / max(int(self.steps[i]), 1),
            })
        return out

    def close(self) -> None:
        self.engine.close()


def summarize(episodes: list[dict]) -> dict:
    """Aggregate episode statistics: the metrics of docs/task.md section 2."""
    if not episodes:
        raise ValueError("no finished episodes to summarize")
    ret = np.array([e["return"] for e in episodes])
    surv = np.array([e["survived"] for e in episodes])
    err = np.array([e["position_error"] for e in episodes if e["survived"]])
    return {
        "episodes": len(episodes),
        "return_mean": float(ret.mean()), "return_std": float(ret.std()),
        "survival_rate": float(surv.mean()),
        "position_error_mean": float(err.mean()) if len(err) else float("nan"),
        "action_deviation_mean": float(np.mean([e["action_deviation"] for e in episodes])),
        # episode i starts from start i of the seed: models evaluated with one seed compare start by start
        "crashed_episodes": sorted(e["drone"] for e in episodes if not e["survived"]),
    }


def evaluate(policy, config: T.TaskConfig, episodes: int = 100, engine: str = "batched", seed: int = 0,
             dtype: torch.dtype = torch.float64, engine_options: dict | None = None) -> dict:
    """Run ``episodes`` episodes in parallel and summarize them.

    ``policy`` is a controller (snn_controller/control): ``reset(mask=None)``, and
    ``policy(obs: Observation) -> actions (N, 4)`` on numpy observations, called every step.
    """
    env = FlightEnv(config, episodes, engine=engine, seed=seed, autoreset=False, dtype=dtype,
                    engine_options=engine_options)
    try:
        obs, _ = env.reset()
        policy.reset()
        finished = []
        for _ in range(config.episode_steps):
            with torch.no_grad():
                action = policy(obs.numpy())
            obs, _, _, _, info = env.step(action)
            finished += info["episodes"]
            if not env.active.any():
                break
        return summarize(finished)
    finally:
        env.close()


class CrazyflieEnv(gymnasium.Env):
    """Single-drone Gymnasium environment of the paper task.

    Observation: the 18-value actor observation (``privileged=True``: the 146-value one).
    Action: 4 outputs in [-1, 1], motor commands or (``action: ctbr``) CTBR. ``render_mode="human"`` opens
    the pybullet GUI.
    """

    metadata = {"render_modes": ["human"], "render_fps": 100}

    def __init__(self, config: T.TaskConfig | None = None, engine: str = "pybullet", privileged: bool = False,
                 render_mode: str | None = None, **config_overrides):
        config = (config or T.TaskConfig()).with_options(**config_overrides)
        self.privileged = privileged
        self.render_mode = render_mode
        options = {"gui": True} if render_mode == "human" else {}
        if render_mode == "human" and engine != "pybullet":
            raise ValueError("render_mode='human' needs the pybullet engine")
        self._env = FlightEnv(config, 1, engine=engine, autoreset=False, dtype=torch.float64, engine_options=options)
        dim = T.PRIVILEGED_OBS_DIM if privileged else T.OBS_DIM
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (4,), np.float64)

    def _obs(self, obs: Observation) -> np.ndarray:
        return (obs.privileged if self.privileged else obs.actor)[0].numpy().copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self._env.reset(seed=seed)
        return self._obs(obs), {"state": self._env.engine.state.as_numpy()}

    def step(self, action):
        obs, r, term, trunc, info = self._env.step(torch.as_tensor(np.asarray(action, dtype=np.float64)[None]))
        out = {"state": self._env.engine.state.as_numpy()}
        if info["episodes"]:
            out["episode"] = info["episodes"][0]
        return self._obs(obs), float(r[0]), bool(term[0]), bool(trunc[0]), out

    def close(self):
        self._env.close()


gymnasium.register(id="snn_controller/Crazyflie-v0", entry_point=CrazyflieEnv, max_episode_steps=None)
