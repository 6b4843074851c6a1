"""TD3BC + JSRL on sequences with a spiking actor (the paper's Algorithm 1), and its baselines.

One iteration, top to bottom as in the paper:

    k      <- slope schedule (fixed | interval | adaptive on evaluation scores)
    stage  <- reward curriculum (six stages over training)
    G      <- guide steps: episode length -> warm-up floor over ``guide_decay_share`` of training
    collect: N drones fly one episode each on the batched engine; the guide flies the first G
             steps, the spiking actor (with Gaussian exploration) the rest; the actor is stepped on
             every observation so it is warm at the handover; the buffer stores the executed actions
             (and, with ``bc_target: guide``, the guide's action at every state, flown or not)
    repeat ``updates_per_iteration`` times on minibatches of L-step windows (zero initial state;
    a window may end at a crash, masked after it):
        critics (privileged 146-value obs + action, time invariant) learn on every step:
            y = r + gamma (1 - terminated) min_j Q'_j(s', clip(pi'(s') + clip(eps, -c, c)))
            (with ``n_step`` > 1: n rewards, then the same bootstrap)
        every ``policy_delay`` updates the actor learns on steps t >= warm-up:
            loss = -(alpha / mean|Q1|) Q1(s, pi(s)) + lambda_BC ||pi(s) - a_bc||^2
        (a_bc: the executed action as in the paper, or the guide's action at s)
        and the target networks move by tau
    lambda_BC <- lambda_BC * decay
    evaluate (guide flies the first 50 steps, final curriculum stage, the run's latency and
             randomisation) -> adaptive slope;
             best.safetensors = the best evaluation return on ``select_starts``

Baselines are flags of the same harness (config/train/*.yaml): BC (offline, alpha = 0),
TD3BC (offline), TD3 (online, no guide, no BC term), an ANN actor (``actor: ann``) and the
privileged guide ANN (``actor: ann``, ``privileged_actor: true``, no guide).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import ConfigError, build, load_yaml, to_dict
from ..control.controllers import TorchActorRunner, flight_policy, make_guide, pid_gains
from ..io.model_file import ACTION_LAYOUT, OBS_LAYOUT, PRIVILEGED_OBS_LAYOUT, code_version, save_model, write_atomically
from ..networks.mlp import Critic, MLPActor
from ..networks.spiking import ActorArchitecture, SpikingActor, actor_tensors
from ..task import spec as T
from ..task.envs import FlightEnv, evaluate
from .buffer import SequenceBuffer
from .schedules import SlopeSchedule, SlopeScheduler, bc_weight, curriculum_stage, guide_steps


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (config/train/<name>.yaml; unknown keys are errors)."""

    name: str = "td3bc_jsrl"  # run name: files go to runs/<name>_seed<S>/ unless --out is given
    seed: int = 0
    drone: str = "cf21"
    iterations: int = 100  # collect + update cycles
    threads: int = 1  # torch threads
    # --- rollouts
    num_drones: int = 64  # parallel drones (one episode each per iteration)
    starts: str = "paper"  # start distribution of training episodes
    exploration_std: float = 0.05  # Gaussian noise on the actor's actions while collecting (then clipped)
    online: bool = True  # False: offline (BC, TD3BC): guide rollouts once at the start, then updates only
    offline_rollouts: int = 4  # offline: guide rollouts collected at the start
    compile_engine: bool = False  # torch.compile the batched engine (faster rollouts, ~20 s to compile)
    # --- method
    actor: Literal["snn", "ann"] = "snn"
    actor_hidden: tuple[int, ...] = (256, 128)
    privileged_actor: bool = False  # the actor sees the 146-value observation (the guide ANN)
    guide: str = "pid"  # pid | a PID gains file (.yaml) | a guide ANN model file | none
    jump_start: bool = True  # JSRL: the guide flies the first G steps of each rollout
    guide_decay_share: float = 0.75  # share of training over which G shrinks to the warm-up floor
    guide_knows_delay: bool = False  # a PID guide predicts across each episode's true action delay (it is
    # privileged; deployment's PID predicts across its gains file's nominal delay)
    guide_demo_share: float = 0.25  # share of drones the guide flies for whole episodes: demonstrations
    # for the BC term after G reaches the floor (not in the paper; README says why)
    warmup_steps: int = 50  # no actor loss before this step of a window; guide steps in evaluation
    critic_after_warmup: bool = True  # critics learn only on steps >= warmup_steps, where the target actor
    # is warm (paper: every step; README says why not here)
    q_weight: float = 2.0  # alpha of the TD3BC actor loss; 0 = no Q term (BC)
    bc_weight: float = 1.0  # initial lambda_BC (paper: 0.2, see README); 0 = no BC term (TD3)
    bc_decay: float = 1.0  # lambda_BC *= bc_decay each iteration (paper: 0.99, see README)
    bc_target: Literal["executed", "guide"] = "executed"  # the BC term's target action: the buffer's
    # executed action (paper), or the guide's action at that state, recorded on every step (README)
    # --- TD3
    gamma: float = 0.99
    n_step: int = 10  # critic targets over n rewards before bootstrapping (paper: 1; README says why 10)
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
    # --- flight conditions of rollouts and evaluations (config/conditions/*.yaml holds the same two keys)
    latency: T.Latency = field(default_factory=T.Latency)  # action / observation delay and jitter, per episode
    randomization: T.Randomization = field(default_factory=T.Randomization)  # physics scales, noise, bias
    # --- schedules
    slope: SlopeSchedule = field(default_factory=SlopeSchedule)
    curriculum: bool = True  # False: always the final stage
    # --- evaluation and files
    eval_every: int = 5  # iterations
    eval_episodes: int = 100  # picks best.safetensors: 20 (the paper's test size) was too noisy for that
    eval_starts: str = "moderate"  # evaluation during training (feeds the adaptive slope)
    select_starts: str = ""  # best.safetensors is picked on these starts ("": the evaluation's own); a
    # second evaluation of eval_episodes on its own starts (seed 20,000 + seed) when they differ
    checkpoint_every: int = 5  # iterations

    def __post_init__(self):
        for key in ("starts", "eval_starts", "select_starts"):
            value = getattr(self, key)
            if value not in T.STARTS and (key, value) != ("select_starts", ""):
                raise ConfigError(f"{key} must be one of {sorted(T.STARTS)}, got {value!r}")
        if not 0 <= self.guide_demo_share < 1:
            raise ConfigError(f"guide_demo_share must be in [0, 1), got {self.guide_demo_share}")
        if self.window <= self.warmup_steps:
            raise ConfigError(f"window ({self.window}) must be longer than warmup_steps ({self.warmup_steps})")
        if self.q_weight == 0 and self.bc_weight == 0:
            raise ConfigError("q_weight and bc_weight are both 0: the actor would learn nothing")
        if self.jump_start and self.guide == "none":
            raise ConfigError("jump_start needs a guide (guide: pid, a PID gains file or a guide model file)")
        if self.bc_target == "guide" and self.guide == "none":
            raise ConfigError("bc_target: guide needs a guide (guide: pid, a PID gains file or a guide model file)")
        if self.guide_knows_delay and pid_gains(self.guide) is None:
            raise ConfigError("guide_knows_delay needs a PID guide (pid or a gains file): it sets the PID's delay "
                              "compensation")
        if not self.online and self.guide == "none":
            raise ConfigError("offline training learns from guide rollouts: set a guide")
        for key in ("iterations", "num_drones", "batch_size", "updates_per_iteration", "eval_every",
                    "checkpoint_every", "policy_delay", "n_step"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")


def load_train_config(path) -> TrainConfig:
    return build(TrainConfig, load_yaml(path), str(path))


# --- networks ---------------------------------------------------------------------------------
def make_actor(config: TrainConfig):
    obs_dim = T.PRIVILEGED_OBS_DIM if config.privileged_actor else T.OBS_DIM
    if config.actor == "snn":
        return SpikingActor(ActorArchitecture(obs_dim, tuple(config.actor_hidden), 4), slope=config.slope.initial)
    return MLPActor(obs_dim, tuple(config.actor_hidden), 4)


def actor_manifest(actor, config: TrainConfig, provenance: dict) -> tuple[dict, dict]:
    """Model-file tensors and manifest of any actor."""
    spiking = isinstance(actor, SpikingActor)
    obs_dim = T.PRIVILEGED_OBS_DIM if config.privileged_actor else T.OBS_DIM
    arch = {"type": "lif_actor" if spiking else "mlp", "obs_dim": obs_dim, "hidden": list(config.actor_hidden),
            "action_dim": 4}
    manifest = {"architecture": arch, "observation_layout": PRIVILEGED_OBS_LAYOUT if config.privileged_actor
                else OBS_LAYOUT, "action_layout": ACTION_LAYOUT, "dt": T.TaskConfig().dt, "drone": config.drone,
                "provenance": provenance}
    if spiking:
        manifest["slope"] = float(actor.slope)
    return actor_tensors(actor), manifest


# --- the algorithm ----------------------------------------------------------------------------
class TD3Trainer:
    """Owns the networks, the buffer and one environment; ``run()`` trains with checkpoints."""

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, log=print):
        self.config, self.out_dir, self.log = config, Path(out_dir), log
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        c = config
        self.actor = make_actor(c)
        self.actor_target = copy.deepcopy(self.actor)
        obs_dim = T.PRIVILEGED_OBS_DIM if c.privileged_actor else T.OBS_DIM
        self.critics = torch.nn.ModuleList(Critic(T.PRIVILEGED_OBS_DIM, 4, tuple(c.critic_hidden)) for _ in range(2))
        self.critics_target = copy.deepcopy(self.critics)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)
        self.slope = SlopeScheduler(c.slope)
        fields = {"obs": (obs_dim,), "critic_obs": (T.PRIVILEGED_OBS_DIM,), "action": (4,), "reward": (),
                  "terminated": (), "next_obs": (obs_dim,), "next_critic_obs": (T.PRIVILEGED_OBS_DIM,)}
        if c.bc_target == "guide":
            fields["guide_action"] = (4,)
        self.task = T.TaskConfig(drone=c.drone, start=c.starts, latency=c.latency, randomization=c.randomization)
        # a crashed episode is kept once it outlasts the warm-up: then the actor has a step to learn on
        self.buffer = SequenceBuffer(c.buffer_steps, self.task.episode_steps, fields, c.window, c.stride,
                                     min_steps=c.warmup_steps + 1)
        self.env = FlightEnv(self.task, c.num_drones, engine="batched", seed=c.seed, autoreset=True,
                             dtype=torch.float32, engine_options={"compile": c.compile_engine})
        self.guide = None if c.guide == "none" else make_guide(c.guide, c.drone, c.num_drones, self.task.dt)
        self.iteration = 0  # next iteration to run
        self.updates = 0
        self.env_steps = 0  # drone-steps collected
        self.history: list[dict] = []
        self.best_score = -float("inf")
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run

    # --- collection --------------------------------------------------------------------------
    def collect(self, guide_steps_now: int, stage: int, seed: int, explore: bool = True) -> dict:
        """One episode per drone (crashed drones start new episodes) into the buffer; returns stats."""
        c, env, n = self.config, self.env, self.config.num_drones
        env.stage = stage
        obs, _ = env.reset(seed=seed)
        if self.guide is not None:
            self.guide.reset()
            self._tell_guide_the_delay()
        noise_gen = torch.Generator().manual_seed(seed)
        state = self.actor.zero_state(n)
        steps = self.task.episode_steps
        rollout = {k: np.zeros((steps, n, *shape), np.float32) for k, shape in self.buffer.fields.items()}
        episode_start = np.zeros((steps, n), bool)
        new_episode = torch.ones(n, dtype=torch.bool)
        demo = torch.zeros(n, dtype=torch.bool)  # drones the guide flies whole episodes
        if self.guide is not None:
            demo[:round(c.guide_demo_share * n)] = True
        episodes = []
        for t in range(steps):
            actor_in = obs.privileged if c.privileged_actor else obs.actor
            with torch.no_grad():
                action, state, _ = self.actor.step(state, actor_in.float())
            if explore and c.exploration_std > 0:
                action = action + c.exploration_std * torch.randn(action.shape, generator=noise_gen)
            action = action.clamp(-1.0, 1.0)
            guided = (env.steps < guide_steps_now) | demo
            guide_action = None
            if self.guide is not None and (guided.any() or c.bc_target == "guide"):
                guide_action = self.guide(obs)  # also on the actor's drones: a label, not flown
                action = torch.where(guided[:, None], guide_action, action)
            next_obs, reward, terminated, truncated, info = env.step(action)
            done = terminated | truncated
            final = info.get("final_obs", next_obs)
            store_next = torch.where(done[:, None], final.privileged if c.privileged_actor else final.actor,
                                     next_obs.privileged if c.privileged_actor else next_obs.actor)
            store_next_critic = torch.where(done[:, None], final.critic, next_obs.critic)
            for k, v in (("obs", actor_in), ("critic_obs", obs.critic), ("action", action), ("reward", reward),
                         ("terminated", terminated.float()), ("next_obs", store_next),
                         ("next_critic_obs", store_next_critic), ("guide_action", guide_action)):
                if k in rollout:
                    rollout[k][t] = v.numpy()
            episode_start[t] = new_episode.numpy()
            new_episode = done
            episodes += info["episodes"]
            if done.any():
                state = self.actor.reset_state(state, done)
                if self.guide is not None:
                    self.guide.reset(done.numpy())
                    self._tell_guide_the_delay(done.numpy())  # the new episodes' delays
            obs = next_obs
        self.buffer.add(rollout, episode_start)
        self.env_steps += steps * n
        finished = [e for e in episodes if e["length"] > 0 and not demo[e["drone"]]]  # the actor's episodes
        return {"train_return": float(np.mean([e["return"] for e in finished])) if finished else float("nan"),
                "train_survival": float(np.mean([e["survived"] for e in finished])) if finished else float("nan")}

    def _tell_guide_the_delay(self, mask=None) -> None:
        if self.config.guide_knows_delay:
            self.guide.controller.set_delay_compensation(self.env.action_delay.numpy(), mask)

    # --- updates -----------------------------------------------------------------------------
    def critic_loss(self, batch: dict) -> torch.Tensor:
        c = self.config
        with torch.no_grad():
            # pi'(s') for every step: unroll the target actor over the window plus the last next obs
            inputs = torch.cat([batch["obs"], batch["next_obs"][-1:]], 0)
            next_action = self.actor_target.unroll(inputs)[0][1:]
            noise = (torch.randn_like(next_action) * c.policy_noise).clamp(-c.noise_clip, c.noise_clip)
            next_action = (next_action + noise).clamp(-1.0, 1.0)
            q_next = torch.min(*(q(batch["next_critic_obs"], next_action) for q in self.critics_target))
            target = n_step_targets(batch["reward"], batch["terminated"], q_next, c.gamma, c.n_step)
        # Optionally skip the first steps, where pi'(s') comes from a cold target actor.
        w = c.warmup_steps if c.critic_after_warmup else 0
        mask = batch["mask"][w:]
        return sum(_masked_mean((q(batch["critic_obs"][w:], batch["action"][w:]) - target[w:]) ** 2, mask)
                   for q in self.critics)

    def actor_loss(self, batch: dict, lambda_bc: float) -> tuple[torch.Tensor, dict]:
        """TD3BC on the steps after the warm-up, evaluated at the actor's own actions."""
        c = self.config
        pi, _, rates = self.actor.unroll(batch["obs"])
        w = c.warmup_steps
        bc_action = batch["guide_action" if c.bc_target == "guide" else "action"][w:]
        pi, critic_obs, mask = pi[w:], batch["critic_obs"][w:], batch["mask"][w:]
        loss = lambda_bc * _masked_mean(((pi - bc_action) ** 2).sum(-1), mask)
        q = None
        if c.q_weight > 0:
            q = self.critics[0](critic_obs, pi)
            q_scale = _masked_mean(q.abs(), mask).detach().clamp(min=1e-6)
            q = _masked_mean(q, mask)
            loss = loss - c.q_weight / q_scale * q
        info = {"spike_rates": rates.tolist(), "q": q.detach().item() if q is not None else float("nan")}
        return loss, info

    @torch.no_grad()
    def soft_update(self) -> None:
        tau = self.config.tau
        for net, target in ((self.actor, self.actor_target), (self.critics, self.critics_target)):
            for p, tp in zip(net.parameters(), target.parameters()):
                tp.mul_(1 - tau).add_(p, alpha=tau)

    def _clip(self, net) -> None:
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.max_grad_norm)

    def update(self, rng: np.random.Generator, lambda_bc: float) -> dict:
        c = self.config
        batch = {k: torch.as_tensor(v) for k, v in self.buffer.sample(c.batch_size, rng).items()}
        stats = {}
        if c.q_weight > 0:
            loss = self.critic_loss(batch)
            self.critic_opt.zero_grad()
            loss.backward()
            self._clip(self.critics)
            self.critic_opt.step()
            stats["critic_loss"] = loss.item()
        self.updates += 1
        if self.updates % c.policy_delay == 0 or c.q_weight == 0:
            loss, info = self.actor_loss(batch, lambda_bc)
            self.actor_opt.zero_grad()
            loss.backward()
            self._clip(self.actor)
            self.actor_opt.step()
            self.soft_update()
            stats.update(actor_loss=loss.item(), **info)
        return stats

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, episodes: int | None = None, starts: str | None = None, stage: int | None = None,
                 engine: str = "batched", seed: int | None = None) -> dict:
        """The paper's evaluation: the run's guide (the PID for runs without one) flies the first
        warm-up steps, then the actor."""
        c = self.config
        n = episodes or c.eval_episodes
        task = T.TaskConfig(drone=c.drone, start=starts or c.eval_starts, latency=c.latency,
                            randomization=c.randomization,
                            stage=self.task.curriculum.stages - 1 if stage is None else stage)
        guide = "pid" if c.guide == "none" else c.guide
        policy = flight_policy(TorchActorRunner(self.actor, n), task, n, c.privileged_actor, c.warmup_steps, guide)
        return evaluate(policy, task, n, engine=engine, seed=10_000 + c.seed if seed is None else seed)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, progress_bar: bool = True, on_iteration=None, should_stop=None) -> dict:
        """Train until ``iterations``; ``on_iteration(row)`` after each, ``should_stop()`` ends early
        (after a checkpoint, so the run can be resumed)."""
        from tqdm import tqdm

        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        writer = _tensorboard(self.out_dir)
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not progress_bar, dynamic_ncols=True,
                   desc=c.name)
        try:
            while self.iteration < c.iterations:
                row = self.run_iteration()
                self.history.append(row)
                _write_progress(self.out_dir / "progress.csv", self.history)
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and np.isfinite(v):
                            writer.add_scalar(k, v, row["env_steps"])
                bar.update(1)
                bar.set_postfix(_progress_fields(self.history))
                stop = should_stop is not None and should_stop()
                if self.iteration % c.checkpoint_every == 0 or self.iteration == c.iterations or stop:
                    self.save_checkpoint()
                if on_iteration is not None:
                    on_iteration(row)
                if stop:
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.history[-1] if self.history else {}

    def run_iteration(self) -> dict:
        c, i = self.config, self.iteration
        progress = i / c.iterations
        seed = c.seed * 100_003 + i  # every iteration has its own seeds: a resumed run repeats it exactly
        torch.manual_seed(seed)
        rng = np.random.default_rng([c.seed, i])
        stage = curriculum_stage(progress, self.task.curriculum.stages) if c.curriculum else \
            self.task.curriculum.stages - 1
        k = self.slope.slope(progress)
        self.actor.set_slope(k)
        self.actor_target.set_slope(k)
        lambda_bc = bc_weight(i, c.bc_weight, c.bc_decay)
        g = guide_steps(progress, self.task.episode_steps, c.warmup_steps, c.guide_decay_share) \
            if c.jump_start else 0
        row = {"iteration": i + 1, "slope": k, "stage": stage, "guide_steps": g, "lambda_bc": lambda_bc}
        if c.online or i == 0:
            rollouts = 1 if c.online else c.offline_rollouts
            for r in range(rollouts):
                # offline: the guide flies whole episodes; online: JSRL handover at G
                row.update(self.collect(g if c.online else self.task.episode_steps, stage, seed * 31 + r,
                                        explore=c.online))
        # Without a window (every episode crashed within the warm-up, as TD3 from scratch nearly
        # always does) there is nothing to learn from yet: the paper's warm-up problem.
        ready = self.buffer.num_windows > 0
        stats = [self.update(rng, lambda_bc) for _ in range(c.updates_per_iteration)] if ready else []
        row["windows"] = self.buffer.num_windows
        for key in ("critic_loss", "actor_loss", "q"):
            values = [s[key] for s in stats if key in s]
            if values:
                row[key] = float(np.mean(values))
        rates = [s["spike_rates"] for s in stats if s.get("spike_rates")]
        for layer, rate in enumerate(np.mean(rates, 0) if rates else []):
            row[f"spike_rate_{layer}"] = float(rate)
        self.iteration += 1
        row["env_steps"] = self.env_steps
        row["updates"] = self.updates
        if self.iteration % c.eval_every == 0 or self.iteration == c.iterations:
            ev = self.evaluate()
            row.update(eval_return=ev["return_mean"], eval_survival=ev["survival_rate"],
                       eval_position_error=ev["position_error_mean"])
            self.slope.observe(ev["return_mean"])
            if c.select_starts not in ("", c.eval_starts):
                ev = self.evaluate(starts=c.select_starts, seed=20_000 + c.seed)
                row.update(select_return=ev["return_mean"], select_survival=ev["survival_rate"])
            if ev["return_mean"] > self.best_score:
                self.best_score = ev["return_mean"]
                self.save_model(self.out_dir / "best.safetensors", {"evaluation": ev, "iteration": self.iteration})
        row["seconds"] = self.elapsed_before + time.monotonic() - self.started
        return row

    # --- files -------------------------------------------------------------------------------
    def provenance(self, extra: dict | None = None) -> dict:
        c = self.config
        method = ("td3bc_jsrl" if c.online and c.jump_start and c.bc_weight > 0 else
                  "td3" if c.online and c.bc_weight == 0 else
                  "bc" if not c.online and c.q_weight == 0 else "td3bc" if not c.online else "custom")
        return {"method": method, "training_config": to_dict(c), "seed": c.seed, "iterations": self.iteration,
                "updates": self.updates, "env_steps": self.env_steps, "code_version": code_version(),
                "train_seconds": round(self.elapsed_before + time.monotonic() - self.started, 1), **(extra or {})}

    def save_model(self, path, extra: dict | None = None) -> None:
        tensors, manifest = actor_manifest(self.actor, self.config, self.provenance(extra))
        save_model(path, tensors, manifest)

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly, written atomically (temp file + rename)."""
        buf = self.buffer.state_dict()
        state = {
            "config": to_dict(self.config), "iteration": self.iteration, "updates": self.updates,
            "best_score": self.best_score, "history": self.history, "env_steps": self.env_steps,
            "elapsed": self.elapsed_before + time.monotonic() - self.started,
            "actor": self.actor.state_dict(), "actor_target": self.actor_target.state_dict(),
            "critics": self.critics.state_dict(), "critics_target": self.critics_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "slope": self.slope.state_dict(),
            "buffer": {"data": {k: torch.from_numpy(v) for k, v in buf["data"].items()},
                       "windows": [torch.from_numpy(w) for w in buf["windows"]],
                       "next_slot": buf["next_slot"], "filled": buf["filled"]},
        }
        write_atomically(self.out_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp), "checkpoint",
                         "; the previous checkpoint is intact: free some disk space, then continue with --resume")

    def load_checkpoint(self) -> bool:
        path = self.out_dir / "checkpoint.pt"
        if not path.is_file():
            return False
        try:
            state = torch.load(path, weights_only=True)
        except Exception as exc:  # a corrupt checkpoint must say so, not start over silently
            raise ConfigError(f"{path}: cannot read the checkpoint ({exc})") from None
        saved = state["config"]
        current, defaults = to_dict(self.config), to_dict(TrainConfig())
        # a key the checkpoint predates held its default then
        differing = sorted(k for k in current if saved.get(k, defaults[k]) != current[k])
        if differing:
            raise ConfigError(f"{path}: the checkpoint was written with a different config ({differing}); "
                              "resume with the same config or start a new run directory")
        self.iteration, self.updates, self.best_score = state["iteration"], state["updates"], state["best_score"]
        self.history, self.elapsed_before = state["history"], state["elapsed"]
        self.env_steps = state["env_steps"]
        self.actor.load_state_dict(state["actor"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critics.load_state_dict(state["critics"])
        self.critics_target.load_state_dict(state["critics_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.slope.load_state_dict(state["slope"])
        b = state["buffer"]
        self.buffer.load_state_dict({"data": {k: v.numpy() for k, v in b["data"].items()},
                                     "windows": [w.numpy() for w in b["windows"]],
                                     "next_slot": b["next_slot"], "filled": b["filled"]})
        self.started = time.monotonic()
        return True


def n_step_targets(reward: torch.Tensor, terminated: torch.Tensor, q_next: torch.Tensor, gamma: float,
                   n: int) -> torch.Tensor:
    """y_t = sum_{k<m} gamma^k r_{t+k} + gamma^m Q'(s_{t+m}), m = n or fewer at the window's end;
    nothing after a crash. (L, B) tensors along a window; q_next[t] = Q'(s_{t+1}, pi'(s_{t+1})).
    n = 1 is the one-step TD target. n > 1 carries a crash or a slow recovery n times further back
    per update, at the price of following the stored actions for n - 1 steps (R2D2, D4PG)."""
    steps = reward.shape[0]
    t = torch.arange(steps)[:, None]
    target = torch.zeros_like(reward)
    alive = torch.ones_like(reward)  # no crash yet between t and t + k
    for k in range(min(n, steps)):
        # step t + k of each row; zeros past the window's end, so those rows add nothing
        r, done, q = (torch.cat([x[k:], torch.zeros_like(x[:k])]) for x in (reward, terminated, q_next))
        bootstrap = ((t + k == steps - 1) | (k == n - 1)).to(reward)  # the last reward t + k sums
        target = target + alive * gamma ** k * (r + bootstrap * gamma * (1.0 - done) * q)
        alive = alive * (1.0 - done)
    return target


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the steps a window's episode owns (a crashed episode's window is padded)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _progress_fields(history: list[dict]) -> dict:
    """The progress bar: this iteration's rollouts and schedules, and the latest evaluation."""
    row = history[-1]
    fields = {"steps": row["env_steps"], "return": row.get("train_return"), "survival": row.get("train_survival"),
              "slope": row["slope"], "stage": row["stage"], "G": row["guide_steps"]}
    last_eval = next((r for r in reversed(history) if "eval_return" in r), None)
    if last_eval is not None:
        fields["eval"] = f"{last_eval['eval_return']:.1f}/{last_eval['eval_survival']:.0%}"
    return {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in fields.items() if v is not None}


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV log still has everything
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _write_progress(path: Path, rows: list[dict]) -> None:
    """The CSV log, rewritten whole from the run's history: after a resume it holds exactly the
    iterations of the checkpoint and those run since, none twice."""
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    write_atomically(path, write, "progress log")


def train(config: TrainConfig, out_dir, resume: bool = False, log=print, progress_bar: bool = True,
          on_iteration=None, should_stop=None) -> dict:
    """Train (or continue) a run in ``out_dir``: checkpoint.pt, progress.csv, tensorboard/, final and best models."""
    out_dir = Path(out_dir)
    if (out_dir / "checkpoint.pt").exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    trainer = TD3Trainer(config, out_dir, log=log)
    if resume and trainer.load_checkpoint():
        log(f"resumed {out_dir} at iteration {trainer.iteration}/{config.iterations}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    trainer.run(progress_bar=progress_bar, on_iteration=on_iteration, should_stop=should_stop)
    if trainer.iteration < config.iterations:  # stopped early: resumable, no final model yet
        return {"out_dir": str(out_dir), "iterations": trainer.iteration, "env_steps": trainer.env_steps,
                "train_seconds": round(trainer.elapsed_before + time.monotonic() - trainer.started, 1),
                "evaluation": {}, "history": trainer.history, "stopped": True}
    final = {}
    for start in ("moderate", "paper"):
        final[start] = trainer.evaluate(episodes=100, starts=start)
    reached = milestones(trainer.history)
    trainer.save_model(out_dir / "final.safetensors", {"evaluation": {"stage": 5, "episodes": 100,
                                                                       "engine": "batched", **final},
                                                       "milestones": reached})
    return {"out_dir": str(out_dir), "iterations": trainer.iteration, "env_steps": trainer.env_steps,
            "train_seconds": round(trainer.elapsed_before + time.monotonic() - trainer.started, 1),
            "evaluation": final, "milestones": reached, "history": trainer.history}


def milestones(history: list[dict], returns=(100.0, 400.0)) -> dict:
    """Training seconds and env steps at the first evaluation that reached each return."""
    out = {}
    for target in returns:
        row = next((r for r in history if r.get("eval_return", -float("inf")) >= target), None)
        out[f"return_{int(target)}"] = None if row is None else {
            "seconds": round(row["seconds"], 1), "env_steps": row["env_steps"], "iteration": row["iteration"]}
    return out


def quick_config(**changes) -> TrainConfig:
    return replace(TrainConfig(), **changes)
