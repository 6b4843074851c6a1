"""One rollout of training: every drone flies one episode (crashed drones start new ones) into the buffer.

The guide flies the first ``guide_steps`` of each episode and the actor the rest (JSRL); the actor
steps on every observation, so its membrane state is warm when it takes over. A share of the
drones (``guide_demo_share``) is flown by the guide for whole episodes: demonstrations for the BC
term. The buffer stores the executed actions, and with ``bc_target: guide`` the guide's action at
every state, flown or not.
"""

from __future__ import annotations

import numpy as np
import torch

from ..task.envs import FlightEnv
from .buffer import SequenceBuffer
from .config import TrainConfig


def collect(env: FlightEnv, actor, guide, buffer: SequenceBuffer, config: TrainConfig, guide_steps: int,
            stage: int, seed: int, explore: bool = True) -> dict:
    """One episode per drone into ``buffer``; returns the actor's episode statistics."""
    c, n = config, env.n
    env.stage = stage
    obs, _ = env.reset(seed=seed)
    if guide is not None:
        guide.reset()
        _tell_guide_the_delay(guide, env, c)
    noise = torch.Generator().manual_seed(seed)
    state = actor.zero_state(n)
    steps = env.config.episode_steps
    rollout = {k: np.zeros((steps, n, *shape), np.float32) for k, shape in buffer.fields.items()}
    episode_start = np.zeros((steps, n), bool)
    new_episode = torch.ones(n, dtype=torch.bool)
    demo = torch.zeros(n, dtype=torch.bool)  # drones the guide flies whole episodes
    if guide is not None:
        demo[:round(c.guide_demo_share * n)] = True
    view = (lambda o: o.privileged) if c.privileged_actor else (lambda o: o.actor)
    episodes = []
    for t in range(steps):
        with torch.no_grad():
            action, state, _ = actor.step(state, view(obs).float())
        if explore and c.exploration_std > 0:
            action = action + c.exploration_std * torch.randn(action.shape, generator=noise)
        action = action.clamp(-1.0, 1.0)
        guided = (env.steps < guide_steps) | demo
        guide_action = None
        if guide is not None and (guided.any() or c.bc_target == "guide"):
            guide_action = guide(obs)  # also on the actor's drones: a label, not flown
            action = torch.where(guided[:, None], guide_action, action)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        final = info.get("final_obs", next_obs)  # the last observation of an episode that just ended
        for k, v in (("obs", view(obs)), ("critic_obs", obs.critic), ("action", action), ("reward", reward),
                     ("terminated", terminated.float()),
                     ("next_obs", torch.where(done[:, None], view(final), view(next_obs))),
                     ("next_critic_obs", torch.where(done[:, None], final.critic, next_obs.critic)),
                     ("guide_action", guide_action)):
            if k in rollout:
                rollout[k][t] = v.numpy()
        episode_start[t] = new_episode.numpy()
        new_episode = done
        episodes += info["episodes"]
        if done.any():
            state = actor.reset_state(state, done)
            if guide is not None:
                guide.reset(done.numpy())
                _tell_guide_the_delay(guide, env, c, done.numpy())  # the new episodes' delays
        obs = next_obs
    buffer.add(rollout, episode_start)
    finished = [e for e in episodes if e["length"] > 0 and not demo[e["drone"]]]  # the actor's episodes
    return {"train_return": float(np.mean([e["return"] for e in finished])) if finished else float("nan"),
            "train_survival": float(np.mean([e["survived"] for e in finished])) if finished else float("nan")}


def _tell_guide_the_delay(guide, env: FlightEnv, config: TrainConfig, mask=None) -> None:
    if config.guide_knows_delay:
        guide.controller.set_delay_compensation(env.action_delay.numpy(), mask)
