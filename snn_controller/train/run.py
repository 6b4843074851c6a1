"""A training run: the loop of the paper's Algorithm 1 around the rollout and the update, with the
evaluation schedule, checkpoints, logs and provenance.

One iteration, top to bottom:

    k      <- slope schedule (fixed | interval | adaptive on evaluation scores)
    stage  <- reward curriculum (six stages over training)
    G      <- guide steps: episode length -> warm-up floor over ``guide_decay_share`` of training
    collect (train/rollout.py): online methods every iteration, offline ones (guide rollouts) once
    repeat ``updates_per_iteration`` times: TD3 update on a minibatch of windows (train/algorithm.py)
    lambda_BC <- lambda_BC * decay
    every ``eval_every`` iterations: evaluate (the guide flies the first ``warmup_steps``, final
        curriculum stage, the run's task) -> adaptive slope; best.safetensors = the best return
        on ``select_starts``

Files of a run directory: checkpoint.pt (everything needed to continue exactly, written
atomically), progress.csv (one row per iteration), tensorboard/, config.json, best.safetensors and
final.safetensors.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, to_dict
from ..control.controllers import TorchNetwork, flight_policy, make_guide
from ..io.model_file import code_version, save_model, write_atomically
from ..networks.files import actor_manifest
from ..task import spec as T
from ..task.envs import FlightEnv, evaluate
from .algorithm import TD3
from .buffer import SequenceBuffer
from .config import TrainConfig
from .rollout import collect
from .schedules import SlopeScheduler, bc_weight, curriculum_stage, guide_steps


class Trainer:
    """Owns the algorithm, the buffer, one environment and the guide; ``run()`` trains with checkpoints.

    ``engine_factory``: builds the rollouts' engine in place of ``make_engine`` (``collector: ros``:
    a :class:`~snn_controller.ros.sil.BridgePool`, whose ``available(n)`` says how many drones the
    bridges alive now can fly; the environment follows it from iteration to iteration).
    """

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, log=print, engine_factory=None):
        c = self.config = config
        if c.collector == "ros" and engine_factory is None:
            raise ConfigError("collector: ros flies the rollouts on training_bridge nodes: train with the trainer "
                              "node (snnctl launch sil_train.launch.yaml), or set collector: inprocess")
        self.out_dir, self.log = Path(out_dir), log
        torch.set_num_threads(c.threads)
        torch.manual_seed(c.derived_seed("networks"))
        self.td3 = TD3(c)
        self.slope = SlopeScheduler(c.slope)
        fields = {"obs": (c.obs_dim,), "critic_obs": (T.PRIVILEGED_OBS_DIM,), "action": (4,), "reward": (),
                  "terminated": (), "next_obs": (c.obs_dim,), "next_critic_obs": (T.PRIVILEGED_OBS_DIM,)}
        if c.bc_target == "guide":
            fields["guide_action"] = (4,)
        # a crashed episode is kept once it outlasts the warm-up: then the actor has a step to learn on
        self.buffer = SequenceBuffer(c.buffer_steps, c.task.episode_steps, fields, c.window, c.stride,
                                     min_steps=c.warmup_steps + 1)
        self.engine_factory = engine_factory
        self.env = None
        self._fleet(self._drones_available())
        self.iteration = 0  # next iteration to run
        self.env_steps = 0  # drone-steps collected
        self.history: list[dict] = []
        self.best_score = -float("inf")
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run

    @property
    def actor(self):
        return self.td3.actor

    def _fleet(self, n: int) -> None:
        """The rollouts' environment and guide for ``n`` drones (a new one when the drones change)."""
        c = self.config
        if self.env is not None:
            self.env.close()
        self.env = FlightEnv(c.task, n, engine="batched", seed=c.derived_seed("environment"), autoreset=True,
                             dtype=torch.float32, engine_options={"compile": c.compile_engine},
                             engine_factory=self.engine_factory)
        guide = c.rollout_guide
        self.guide = None if guide == "none" else make_guide(guide, c.task.drone, n, c.task.dt, c.task.ctbr_scaling)

    def _drones_available(self) -> int:
        """``num_drones``, or as many of them as the training bridges alive now serve."""
        if hasattr(self.engine_factory, "available"):
            return self.engine_factory.available(self.config.num_drones)
        return self.config.num_drones

    def collect(self, guide_steps_now: int, stage: int, seed: int, explore: bool = True) -> dict:
        if self.engine_factory is not None:  # bridges may have gone or joined since the last rollout
            n = self._drones_available()
            if n != self.env.n or getattr(self.env.engine, "lost", np.zeros(1, bool)).any():
                self._fleet(n)
        stats = collect(self.env, self.td3.actor, self.guide, self.buffer, self.config, guide_steps_now, stage,
                        seed, explore)
        self.env_steps += self.env.config.episode_steps * stats["drones"]
        return stats

    def evaluate(self, episodes: int | None = None, starts: str | None = None, stage: int | None = None,
                 engine: str = "batched", seed: int | None = None) -> dict:
        """The paper's evaluation: the run's guide (the PID for runs without one) flies the first
        warm-up steps, then the actor, on the run's task at its last curriculum stage."""
        c = self.config
        n = episodes or c.eval_episodes
        task = replace(c.task, start=starts or c.eval_starts,
                       stage=c.task.curriculum.stages - 1 if stage is None else stage)
        policy = flight_policy(TorchNetwork(self.td3.actor, n), task, n, c.privileged_actor, c.warmup_steps,
                               c.evaluation_guide)
        return evaluate(policy, task, n, engine=engine, seed=c.derived_seed("evaluation") if seed is None else seed)

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
        seed = c.derived_seed("iteration", i)  # every iteration has its own seeds: a resumed run repeats it exactly
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        stages = c.task.curriculum.stages
        stage = curriculum_stage(progress, stages) if c.curriculum else stages - 1
        k = self.slope.slope(progress)
        self.td3.set_slope(k)
        lambda_bc = bc_weight(i, c.lambda_bc, c.bc_decay)
        g = guide_steps(progress, c.task.episode_steps, c.warmup_steps, c.guide_decay_share) if c.jump_start else 0
        row = {"iteration": i + 1, "slope": k, "stage": stage, "guide_steps": g, "lambda_bc": lambda_bc}
        if c.online or i == 0:
            # offline: the guide flies whole episodes, once; online: JSRL handover at G
            for r in range(1 if c.online else c.offline_rollouts):
                row.update(self.collect(g if c.online else c.task.episode_steps, stage,
                                        c.derived_seed("rollout", i, r), explore=c.online))
        # Without a window (every episode crashed within the warm-up, as TD3 from scratch nearly
        # always does) there is nothing to learn from yet: the paper's warm-up problem.
        stats = []
        if self.buffer.num_windows > 0:
            stats = [self.td3.update(self.buffer.sample(c.batch_size, rng), lambda_bc)
                     for _ in range(c.updates_per_iteration)]
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
        row["updates"] = self.td3.updates
        if self.iteration % c.eval_every == 0 or self.iteration == c.iterations:
            ev = self.evaluate()
            row.update(eval_return=ev["return_mean"], eval_survival=ev["survival_rate"],
                       eval_position_error=ev["position_error_mean"])
            self.slope.observe(ev["return_mean"])
            if c.select_starts not in ("", c.eval_starts):
                ev = self.evaluate(starts=c.select_starts, seed=c.derived_seed("selection"))
                row.update(select_return=ev["return_mean"], select_survival=ev["survival_rate"])
            if ev["return_mean"] > self.best_score:
                self.best_score = ev["return_mean"]
                self.save_model(self.out_dir / "best.safetensors", {"evaluation": ev, "iteration": self.iteration})
        row["seconds"] = self.train_seconds()
        return row

    def train_seconds(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # --- files -------------------------------------------------------------------------------
    def provenance(self, extra: dict | None = None) -> dict:
        c = self.config
        return {"method": c.method, "training_config": to_dict(c), "seed": c.seed, "iterations": self.iteration,
                "updates": self.td3.updates, "env_steps": self.env_steps, "code_version": code_version(),
                "train_seconds": round(self.train_seconds(), 1), **(extra or {})}

    def save_model(self, path, extra: dict | None = None) -> None:
        task = self.config.task
        save_model(path, *actor_manifest(self.td3.actor, task.drone, task.dt, self.provenance(extra), task.ctbr_scaling))

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly, written atomically (temp file + rename)."""
        buf = self.buffer.state_dict()
        state = {
            "config": to_dict(self.config), "iteration": self.iteration, "best_score": self.best_score,
            "history": self.history, "env_steps": self.env_steps, "elapsed": self.train_seconds(),
            **self.td3.state_dict(), "slope": self.slope.state_dict(),
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
        saved = _upgrade(state["config"])
        current, defaults = to_dict(self.config), to_dict(TrainConfig())
        # a key the checkpoint predates held its default then
        differing = sorted(k for k in current if saved.get(k, defaults[k]) != current[k])
        if differing:
            raise ConfigError(f"{path}: the checkpoint was written with a different config ({differing}); "
                              "resume with the same config or start a new run directory")
        self.iteration, self.best_score = state["iteration"], state["best_score"]
        self.history, self.elapsed_before = state["history"], state["elapsed"]
        self.env_steps = state["env_steps"]
        self.td3.load_state_dict(state)
        self.slope.load_state_dict(state["slope"])
        b = state["buffer"]
        self.buffer.load_state_dict({"data": {k: v.numpy() for k, v in b["data"].items()},
                                     "windows": [w.numpy() for w in b["windows"]],
                                     "next_slot": b["next_slot"], "filled": b["filled"]})
        self.started = time.monotonic()
        return True


def _upgrade(saved: dict) -> dict:
    """A checkpoint's config in today's keys: checkpoints from before ``method:`` and the ``task:``
    section kept the drone, starts and flight conditions at the top, and the method as flags."""
    saved = dict(saved)
    if "task" not in saved:
        task = to_dict(T.TaskConfig())
        for old, new in (("drone", "drone"), ("starts", "start"), ("latency", "latency"),
                         ("randomization", "randomization")):
            if old in saved:
                task[new] = saved.pop(old)
        saved["task"] = task
    if "method" not in saved:
        online, jump_start = saved.pop("online", True), saved.pop("jump_start", True)
        saved["method"] = ("td3bc_jsrl" if online and jump_start else "td3" if online else
                           "bc" if saved.get("q_weight") == 0 else "td3bc")
    return saved


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
          on_iteration=None, should_stop=None, engine_factory=None) -> dict:
    """Train (or continue) a run in ``out_dir``: checkpoint.pt, progress.csv, tensorboard/, final and best models."""
    out_dir = Path(out_dir)
    if (out_dir / "checkpoint.pt").exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    trainer = Trainer(config, out_dir, log=log, engine_factory=engine_factory)
    if resume and trainer.load_checkpoint():
        log(f"resumed {out_dir} at iteration {trainer.iteration}/{config.iterations}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    trainer.run(progress_bar=progress_bar, on_iteration=on_iteration, should_stop=should_stop)
    result = {"out_dir": str(out_dir), "iterations": trainer.iteration, "env_steps": trainer.env_steps,
              "train_seconds": round(trainer.train_seconds(), 1), "history": trainer.history}
    if trainer.iteration < config.iterations:  # stopped early: resumable, no final model yet
        return {**result, "evaluation": {}, "stopped": True}
    final = {start: trainer.evaluate(episodes=100, starts=start) for start in ("moderate", "paper")}
    reached = milestones(trainer.history)
    trainer.save_model(out_dir / "final.safetensors", {"evaluation": {"stage": 5, "episodes": 100,
                                                                       "engine": "batched", **final},
                                                       "milestones": reached})
    return {**result, "evaluation": final, "milestones": reached}


def milestones(history: list[dict], returns=(100.0, 400.0)) -> dict:
    """Training seconds and env steps at the first evaluation that reached each return."""
    out = {}
    for target in returns:
        row = next((r for r in history if r.get("eval_return", -float("inf")) >= target), None)
        out[f"return_{int(target)}"] = None if row is None else {
            "seconds": round(row["seconds"], 1), "env_steps": row["env_steps"], "iteration": row["iteration"]}
    return out
