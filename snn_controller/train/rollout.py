"""One rollout of training: every drone flies one episode (crashed drones start new ones) into the buffer.

The handover of the deployed controller (control/handover.py) flies it: the guide flies the first
``guide_steps`` of each episode and the actor the rest (JSRL); the actor steps on every
observation, so its membrane state is warm when it takes over. A share of the drones
(``guide_demo_share``) is flown by the guide for whole episodes: demonstrations for the BC term.
The buffer stores the executed actions, and with ``bc_target: guide`` the guide's action at every
state, flown or not.
"""

from __future__ import annotations

import numpy as np
import torch

from ..control.controllers import TorchNetwork
from ..control.handover import Handover
from ..task.envs import FlightEnv
from .buffer import SequenceBuffer
from .config import TrainConfig


class ExploringNetwork(TorchNetwork):
    """The actor in training: Gaussian noise of ``std`` on its actions, clipped to [-1, 1]."""

    def __init__(self, actor, batch: int, std: float, generator: torch.Generator):
        super().__init__(actor, batch)
        self.std, self.generator = std, generator

    def step(self, inputs):
        action = torch.from_numpy(super().step(inputs))
        if self.std > 0:
            action = action + self.std * torch.randn(action.shape, generator=self.generator)
        return action.clamp(-1.0, 1.0).numpy()


def collect(env: FlightEnv, actor, guide, buffer: SequenceBuffer, config: TrainConfig, guide_steps: int,
            stage: int, seed: int, explore: bool = True) -> dict:
    """One episode per drone into ``buffer`` (``guide``: a controller, or None); returns the actor's
    episode statistics."""
    c, n = config, env.n
    env.stage = stage
    obs, _ = env.reset(seed=seed)
    view = "privileged" if c.privileged_actor else "actor"
    network = ExploringNetwork(actor, n, c.exploration_std if explore else 0.0, torch.Generator().manual_seed(seed))
    controller = network if guide is None else Handover(network, guide, guide_steps, view, label=c.bc_target == "guide")
    controller.reset()
    _tell_guide_the_delay(guide, env, c)
    demo = np.zeros(n, dtype=bool)  # drones the guide flies whole episodes
    if guide is not None:
        demo[:round(c.guide_demo_share * n)] = True
    steps = env.config.episode_steps
    rollout = {k: np.zeros((steps, n, *shape), np.float32) for k, shape in buffer.fields.items()}
    episode_start = np.zeros((steps, n), bool)
    new_episode = np.ones(n, dtype=bool)
    episodes = []
    for t in range(steps):
        seen = obs.numpy()
        action = network.step(seen.view(view)) if guide is None else controller(seen, guide_only=demo)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = (terminated | truncated).numpy()
        following = next_obs.numpy()
        final = info["final_obs"].numpy() if "final_obs" in info else following  # an ended episode's last
        for k, v in (("obs", seen.view(view)), ("critic_obs", seen.critic), ("action", action),
                     ("reward", reward.numpy()), ("terminated", terminated.numpy()),
                     ("next_obs", np.where(done[:, None], final.view(view), following.view(view))),
                     ("next_critic_obs", np.where(done[:, None], final.critic, following.critic)),
                     ("guide_action", getattr(controller, "guide_action", None))):
            if k in rollout:
                rollout[k][t] = v
        episode_start[t] = new_episode
        new_episode = done
        episodes += info["episodes"]
        if done.any():
            controller.reset(done)
            _tell_guide_the_delay(guide, env, c, done)  # the new episodes' delays
        obs = next_obs
    # Drones whose simulator went away mid-rollout (a training bridge dropped): their episodes are
    # incomplete, so none of their steps enter the buffer.
    lost = getattr(env.engine, "lost", np.zeros(n, dtype=bool))
    buffer.add({k: v[:, ~lost] for k, v in rollout.items()}, episode_start[:, ~lost])
    finished = [e for e in episodes if e["length"] > 0 and not demo[e["drone"]] and not lost[e["drone"]]]
    return {"train_return": float(np.mean([e["return"] for e in finished])) if finished else float("nan"),
            "train_survival": float(np.mean([e["survived"] for e in finished])) if finished else float("nan"),
            "drones": int((~lost).sum())}


def _tell_guide_the_delay(guide, env: FlightEnv, config: TrainConfig, mask=None) -> None:
    if config.guide_knows_delay:
        guide.set_delay_compensation(env.action_delay.numpy(), mask)
