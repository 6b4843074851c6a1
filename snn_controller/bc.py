"""Behaviour cloning of the guide on sequences (the paper's BC baseline, method.md section 6).

1. Collect guide (PID) rollouts on the batched engine: actor observations and guide actions.
2. Cut them into windows of ``window`` steps inside episodes; zero membrane state per window.
3. Train the spiking actor by BPTT over each window with the loss on steps >= ``warmup_steps``.
4. Evaluate on the paper task with the guide flying the first ``warmup_steps`` steps.

``dagger_rounds`` > 0 adds DAgger (an extension beyond the paper's BC): further rollouts are
flown by the guide-then-network policy and labelled with the guide's actions, so the network
also learns to recover from its own mistakes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import build, load_yaml, to_dict
from .drone import load_drone
from .envs import FlightEnv, evaluate
from .model_file import code_version
from .pid import PIDController
from .policy import EnvPolicy, GuidedPolicy
from .sequences import gather_windows, window_starts
from .snn import ActorArchitecture, SpikingActor, actor_tensors, save_actor
from .snn_numpy import NumpySpikingActor
from .task import TaskConfig


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning hyperparameters (config/train/bc.yaml)."""

    drone: str = "cf21"  # drone model
    seed: int = 0
    starts: tuple[str, ...] = ("moderate", "paper")  # start distributions of the rollouts (drones split evenly)
    stage: int = 5  # curriculum stage for the reported returns
    collect_drones: int = 512  # parallel drones per rollout
    collect_steps: int = 1500  # control steps per rollout (3 episodes of 500)
    window: int = 100  # L, steps per training sequence
    stride: int = 25  # steps between window starts
    warmup_steps: int = 50  # steps without loss at the start of each window; guide steps in evaluation
    batch_size: int = 256  # sequences per update
    updates: int = 1500  # gradient updates per round
    lr: float = 1e-3
    slope: float = 2.0  # surrogate slope k (fixed for BC)
    hidden: tuple[int, ...] = (256, 128)
    exploration_std: float = 0.0  # Gaussian noise on executed actions while collecting (labels stay clean)
    dagger_rounds: int = 0  # extra rounds of rollouts flown by guide-then-network, labelled by the guide
    eval_episodes: int = 100
    threads: int = 1  # torch threads


def load_bc_config(path) -> BCConfig:
    return build(BCConfig, load_yaml(path), str(path))


class GuideLabeller:
    """Runs the PID guide on every observation, so its actions label what any policy flies."""

    def __init__(self, model, n, dt):
        self.pid = PIDController(model, n, dt)

    def __call__(self, obs):
        return self.pid(obs)

    def reset(self, mask=None):
        self.pid.reset(mask)


def collect(config: BCConfig, seed: int, network=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One rollout of every start distribution: actor obs (S, N, 18), guide actions (S, N, 4),
    episode starts (S, N). With ``network``, the network flies after the warm-up (DAgger)."""
    model = load_drone(config.drone)
    per_start = config.collect_drones // len(config.starts)
    all_obs, all_act, all_start = [], [], []
    for k, start in enumerate(config.starts):
        task = TaskConfig(drone=config.drone, start=start, stage=config.stage)
        env = FlightEnv(task, per_start, engine="batched", seed=seed * 101 + k, autoreset=True,
                        dtype=torch.float64)
        guide = GuideLabeller(model, per_start, task.dt)
        flyer = None
        if network is not None:
            flyer = GuidedPolicy(NumpySpikingActor(network[0], network[1], batch=per_start), guide,
                                 config.warmup_steps)
        rng = np.random.default_rng(seed * 7 + k)
        obs, _ = env.reset()
        new_episode = np.ones(per_start, dtype=bool)
        o_buf, a_buf, s_buf = [], [], []
        for _ in range(config.collect_steps):
            actor_obs = obs.actor.numpy()
            if flyer is not None:
                executed = flyer(actor_obs)
                label = guide.pid.last_output
            else:
                label = executed = guide(actor_obs)
            if config.exploration_std > 0:
                executed = np.clip(executed + rng.normal(0, config.exploration_std, executed.shape), -1, 1)
            o_buf.append(actor_obs.astype(np.float32))
            a_buf.append(label.astype(np.float32))
            s_buf.append(new_episode.copy())
            obs, _, term, trunc, _ = env.step(torch.as_tensor(executed))
            new_episode = (term | trunc).numpy()
            if new_episode.any():
                (flyer or guide).reset(new_episode)
        env.close()
        all_obs.append(np.stack(o_buf))
        all_act.append(np.stack(a_buf))
        all_start.append(np.stack(s_buf))
    return np.concatenate(all_obs, 1), np.concatenate(all_act, 1), np.concatenate(all_start, 1)


def evaluate_actor(tensors: dict, manifest: dict, task: TaskConfig, episodes: int, seed: int,
                   engine: str = "batched", warmup_steps: int = 50) -> dict:
    """The paper's evaluation: the guide flies the first ``warmup_steps``, then the network."""
    model = load_drone(task.drone)
    net = NumpySpikingActor(tensors, manifest, batch=episodes)
    policy = GuidedPolicy(net, PIDController(model, episodes, task.dt), warmup_steps)
    result = evaluate(EnvPolicy(policy), task, episodes, engine=engine, seed=seed)
    result["spikes_per_step"] = [round(x, 2) for x in net.spikes_per_step()]
    return result


def _manifest(actor, config) -> dict:
    return {"architecture": {"type": "lif_actor", "obs_dim": actor.arch.obs_dim, "hidden": list(actor.arch.hidden),
                             "action_dim": actor.arch.action_dim}, "slope": float(actor.slope)}


def train_bc(config: BCConfig, out_path=None, log=print) -> tuple[SpikingActor, dict]:
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    actor = SpikingActor(ActorArchitecture(hidden=tuple(config.hidden)), slope=config.slope)
    optimiser = torch.optim.Adam(actor.parameters(), lr=config.lr)
    started = time.monotonic()
    obs, act, starts = collect(config, config.seed)
    history = []
    for round_ in range(config.dagger_rounds + 1):
        if round_ > 0:
            new = collect(config, config.seed + round_, network=(actor_tensors(actor), _manifest(actor, config)))
            obs, act, starts = (np.concatenate([a, b], 1) for a, b in zip((obs, act, starts), new))
        index = window_starts(starts, config.window, config.stride)
        log(f"round {round_}: {obs.shape[1]} rollouts x {obs.shape[0]} steps -> {len(index)} windows")
        for update in range(config.updates):
            batch = index[rng.integers(len(index), size=config.batch_size)]
            x = torch.as_tensor(gather_windows(obs, batch, config.window))
            y = torch.as_tensor(gather_windows(act, batch, config.window))
            pred, _, rates = actor.unroll(x)
            loss = ((pred[config.warmup_steps:] - y[config.warmup_steps:]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if update % 100 == 0 or update == config.updates - 1:
                history.append({"round": round_, "update": update, "loss": loss.item(),
                                "spike_rates": rates.tolist(), "seconds": time.monotonic() - started})
                log(f"  update {update:5d} loss {loss.item():.5f} spike rates {np.round(rates.tolist(), 3)}")
    train_seconds = time.monotonic() - started
    metrics = {}
    for start in ("moderate", "paper"):
        task = TaskConfig(drone=config.drone, start=start, stage=config.stage)
        metrics[start] = evaluate_actor(actor_tensors(actor), _manifest(actor, config), task,
                                        config.eval_episodes, seed=10_000 + config.seed,
                                        warmup_steps=config.warmup_steps)
        log(f"eval {start}: {metrics[start]}")
    provenance = {"method": "bc" if config.dagger_rounds == 0 else "bc+dagger", "training_config": to_dict(config),
                  "seed": config.seed, "updates": config.updates * (config.dagger_rounds + 1),
                  "env_steps": int(obs.shape[0] * obs.shape[1]), "train_seconds": round(train_seconds, 1),
                  "evaluation": {"stage": config.stage, "episodes": config.eval_episodes,
                                 "guide_warmup_steps": config.warmup_steps, "engine": "batched", **metrics},
                  "code_version": code_version(), "history": history[-5:]}
    if out_path is not None:
        save_actor(actor, out_path, drone=config.drone, dt=TaskConfig().dt, provenance=provenance)
    return actor, provenance


def quick_config(**changes) -> BCConfig:
    return replace(BCConfig(), **changes)
