"""The hyperparameters of one training run: :class:`TrainConfig`, loaded from config/train/<name>.yaml.

A config declares its ``method`` (what the flags of the harness are) and its ``task`` (the flight
task of :mod:`snn_controller.task.spec`, saved with the run). A baseline's config names the
method's file as its ``base:`` and lists only what differs, so every method trains in the same
harness with the same budget, by construction:

    base: td3bc_jsrl.yaml      # a path relative to this file
    name: baseline_td3
    method: td3

Every key is checked on load; an error names the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import ConfigError, build, load_yaml
from ..control.controllers import pid_gains
from ..task import spec as T
from .schedules import SlopeSchedule

# What each method is, as flags of the one harness (docs/method.md section 6):
#   online:     rollouts every iteration (else guide rollouts once at the start, then updates only)
#   jump_start: the guide flies the first G steps of each rollout (JSRL)
#   q_term:     the actor loss has the critic's term (alpha = q_weight)
#   bc_term:    the actor loss has the behaviour-cloning term (lambda_BC = bc_weight)
#   guide:      rollouts use the guide (jump start, demonstrations, BC labels)
METHODS = {
    "td3bc_jsrl": dict(online=True, jump_start=True, q_term=True, bc_term=True, guide=True),
    "td3bc": dict(online=False, jump_start=False, q_term=True, bc_term=True, guide=True),
    "bc": dict(online=False, jump_start=False, q_term=False, bc_term=True, guide=True),
    "td3": dict(online=True, jump_start=False, q_term=True, bc_term=False, guide=False),
}

# Keys of earlier configs, and where they live now.
MOVED = {"drone": "task: {drone: ...}", "starts": "task: {start: ...}", "latency": "task: {latency: ...}",
         "randomization": "task: {randomization: ...}", "online": "method", "jump_start": "method"}

# Every random draw of a run is seeded from (seed, purpose, index...): one derivation, no two
# purposes share a stream, and a resumed run repeats an iteration exactly.
SEED_PURPOSES = ("networks", "environment", "iteration", "rollout", "evaluation", "selection")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (config/train/<name>.yaml; unknown keys are errors)."""

    name: str = "td3bc_jsrl"  # run name: files go to runs/<name>_seed<S>/ unless --out is given
    method: Literal["td3bc_jsrl", "td3bc", "bc", "td3"] = "td3bc_jsrl"  # see METHODS
    seed: int = 0
    iterations: int = 100  # collect + update cycles
    threads: int = 1  # torch threads
    # --- the flight task of rollouts and evaluations: drone, starts, reward curriculum, noise,
    # termination, latency and randomisation (snn_controller/task/spec.py: TaskConfig)
    task: T.TaskConfig = field(default_factory=T.TaskConfig)
    # --- rollouts
    collector: Literal["inprocess", "ros"] = "inprocess"  # where the physics of rollouts runs: this process,
    # or training_bridge nodes over ROS 2 (the trainer node; ros/sil.py): the same flight either way
    num_drones: int = 64  # parallel drones (one episode each per iteration; over ROS at most what the bridges serve)
    exploration_std: float = 0.05  # Gaussian noise on the actor's actions while collecting (then clipped)
    offline_rollouts: int = 4  # offline methods: guide rollouts collected at the start
    compile_engine: bool = False  # torch.compile the batched engine (faster rollouts, ~20 s to compile)
    # --- actor and guide
    actor: Literal["snn", "ann"] = "snn"
    actor_hidden: tuple[int, ...] = (256, 128)
    privileged_actor: bool = False  # the actor sees the 146-value observation (the guide ANN)
    guide: str = "pid"  # pid | a PID gains file (.yaml) | a guide ANN model file | none
    guide_decay_share: float = 0.75  # share of training over which G shrinks to the warm-up floor
    guide_knows_delay: bool = False  # a PID guide predicts across each episode's true action delay (it is
    # privileged; deployment's PID predicts across its gains file's nominal delay)
    guide_demo_share: float = 0.25  # share of drones the guide flies for whole episodes: demonstrations
    # for the BC term after G reaches the floor (not in the paper; docs/training.md says why)
    warmup_steps: int = 50  # no actor loss before this step of a window; guide steps in evaluation
    critic_after_warmup: bool = True  # critics learn only on steps >= warmup_steps, where the target actor
    # is warm (paper: every step; docs/training.md says why not here)
    q_weight: float = 2.0  # alpha of the TD3BC actor loss
    bc_weight: float = 1.0  # initial lambda_BC (paper: 0.2, see docs/training.md)
    bc_decay: float = 1.0  # lambda_BC *= bc_decay each iteration (paper: 0.99, see docs/training.md)
    bc_target: Literal["executed", "guide"] = "executed"  # the BC term's target action: the buffer's
    # executed action (paper), or the guide's action at that state, recorded on every step
    # --- TD3
    gamma: float = 0.99
    n_step: int = 10  # critic targets over n rewards before bootstrapping (paper: 1; docs/training.md)
    tau: float = 0.01
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_delay: int = 2
    actor_lr: float = 1e-3
    critic_lr: float = 3e-4
    critic_hidden: tuple[int, ...] = (256, 128)
    max_grad_norm: float = 1.0  # clip each network's gradient norm (0: off; not in the paper)
    batch_size: int = 32  # windows per update
    updates_per_iteration: int = 100
    window: int = 100  # L
    stride: int = 25
    buffer_steps: int = 1_000_000
    # --- schedules
    slope: SlopeSchedule = field(default_factory=SlopeSchedule)  # the surrogate slope schedule
    curriculum: bool = True  # walk the task's reward curriculum over training (False: always its last stage)
    # --- evaluation and files
    eval_every: int = 5  # iterations
    eval_episodes: int = 100  # picks best.safetensors: 20 (the paper's test size) was too noisy for that
    eval_starts: str = "moderate"  # evaluation during training (feeds the adaptive slope)
    select_starts: str = ""  # best.safetensors is picked on these starts ("": the evaluation's own); a
    # second evaluation of eval_episodes on its own starts when they differ
    checkpoint_every: int = 5  # iterations

    def __post_init__(self):
        for key in ("eval_starts", "select_starts"):
            value = getattr(self, key)
            if value not in T.STARTS and (key, value) != ("select_starts", ""):
                raise ConfigError(f"{key} must be one of {sorted(T.STARTS)}, got {value!r}")
        if not 0 <= self.guide_demo_share < 1:
            raise ConfigError(f"guide_demo_share must be in [0, 1), got {self.guide_demo_share}")
        if self.window <= self.warmup_steps:
            raise ConfigError(f"window ({self.window}) must be longer than warmup_steps ({self.warmup_steps})")
        if self.alpha == 0 and self.lambda_bc == 0:
            raise ConfigError(f"method {self.method} with q_weight {self.q_weight} and bc_weight {self.bc_weight}: "
                              "the actor would learn nothing")
        if self.rollout_guide == "none" and METHODS[self.method]["guide"]:
            need = "jump_start needs a guide" if self.jump_start else "learns from guide rollouts"
            raise ConfigError(f"method {self.method}: {need} (guide: pid, a PID gains file or a guide model file)")
        if self.guide_knows_delay and pid_gains(self.rollout_guide) is None:
            raise ConfigError("guide_knows_delay needs a PID guide (pid or a gains file): it sets the PID's delay "
                              "compensation")
        for key in ("iterations", "num_drones", "batch_size", "updates_per_iteration", "eval_every",
                    "checkpoint_every", "policy_delay", "n_step"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")

    # --- what the method sets
    @property
    def online(self) -> bool:
        return METHODS[self.method]["online"]

    @property
    def jump_start(self) -> bool:
        return METHODS[self.method]["jump_start"]

    @property
    def alpha(self) -> float:
        """The weight of the actor loss's Q term (0: none)."""
        return self.q_weight if METHODS[self.method]["q_term"] else 0.0

    @property
    def lambda_bc(self) -> float:
        """The initial weight of the actor loss's BC term (0: none)."""
        return self.bc_weight if METHODS[self.method]["bc_term"] else 0.0

    @property
    def rollout_guide(self) -> str:
        """The guide of the rollouts ("none" for methods without one)."""
        return self.guide if METHODS[self.method]["guide"] else "none"

    @property
    def evaluation_guide(self) -> str:
        """Who flies the warm-up of an evaluation: the run's guide, the PID for runs without one."""
        return "pid" if self.rollout_guide == "none" else self.rollout_guide

    @property
    def obs_dim(self) -> int:
        return T.PRIVILEGED_OBS_DIM if self.privileged_actor else T.OBS_DIM

    def derived_seed(self, purpose: str, *index: int) -> int:
        """The seed of one purpose (SEED_PURPOSES) of this run, at an iteration / rollout index."""
        sequence = np.random.SeedSequence([self.seed, SEED_PURPOSES.index(purpose), *index])
        return int(sequence.generate_state(1, np.uint32)[0])


def _merge(base: dict, changes: dict) -> dict:
    """``changes`` over ``base``, section by section (a section lists only the keys it changes)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolved(path: Path, seen: tuple = ()) -> dict:
    """A config file's keys with its ``base:`` chain applied."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base: chain loops ({' -> '.join(str(p) for p in (*seen, path))})")
    data = load_yaml(path)
    moved = sorted(set(data) & set(MOVED))
    if moved:
        raise ConfigError(f"{path}: '{moved[0]}' is now {MOVED[moved[0]]} (see config/train/td3bc_jsrl.yaml)")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must be a file name, got {base!r}")
    base_path = path.parent / base  # relative to this file (an absolute path stays itself)
    base_data = _resolved(base_path, (*seen, path.resolve()))
    build(TrainConfig, base_data, str(base_path))  # the base must be valid on its own: its errors name its file
    return _merge(base_data, data)


def load_train_config(path) -> TrainConfig:
    path = Path(path)
    return build(TrainConfig, _resolved(path), str(path))


def quick_config(**changes) -> TrainConfig:
    return replace(TrainConfig(), **changes)
