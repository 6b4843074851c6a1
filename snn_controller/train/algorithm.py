"""TD3 on sequences with a TD3BC actor loss: the update of the paper's Algorithm 1.

A minibatch is B windows of L steps (time first: tensors are (L, B, ...)); the spiking actor
unrolls each window from zero membrane state. For every update:

    critics (privileged 146-value obs + action, time invariant), on every step t of a window:
        a'  = clip(pi'(s_{t+1}) + clip(eps, -c, c), -1, 1)          eps ~ N(0, policy_noise)
        y_t = sum_{k<n} gamma^k r_{t+k} + gamma^n min_j Q'_j(s_{t+n}, a')   (nothing after a crash)
        loss = sum_j mean_t (Q_j(s_t, a_t) - y_t)^2     (t >= warm-up with ``critic_after_warmup``)
    every ``policy_delay`` updates, the actor on steps t >= warm-up:
        loss = -(alpha / mean|Q_1|) Q_1(s_t, pi(s_t)) + lambda_BC ||pi(s_t) - a_bc||^2
        (a_bc: the executed action as in the paper, or the guide's action at s_t)
    and the target networks move by tau.

Hyperparameters (defaults of :class:`~snn_controller.train.config.TrainConfig`; a test keeps these
in step): ``gamma`` = 0.99, ``n_step`` = 10, ``tau`` = 0.01, ``policy_noise`` = 0.2,
``noise_clip`` = 0.5, ``policy_delay`` = 2, ``q_weight`` = 2.0 (alpha), ``bc_weight`` = 1.0
(lambda_BC), ``warmup_steps`` = 50, ``actor_lr`` = 0.001, ``critic_lr`` = 0.0003,
``max_grad_norm`` = 1.0, ``batch_size`` = 32, ``window`` = 100.
The method (``method``: td3bc_jsrl, td3bc, bc, td3) decides which loss terms are on: BC has no Q
term, TD3 no BC term (train/config.py: METHODS).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..networks.mlp import Critic, MLPActor
from ..networks.spiking import ActorArchitecture, SpikingActor
from ..task import spec as T
from .config import TrainConfig


def make_actor(config: TrainConfig):
    """The actor a config trains: the spiking actor, or an MLP (the ANN baseline and the guide ANN)."""
    if config.actor == "snn":
        return SpikingActor(ActorArchitecture(config.obs_dim, tuple(config.actor_hidden), 4),
                            slope=config.slope.initial)
    return MLPActor(config.obs_dim, tuple(config.actor_hidden), 4)


class TD3:
    """The actor, two critics, their target networks and optimisers, and one update."""

    def __init__(self, config: TrainConfig):
        c = self.config = config
        self.actor = make_actor(c)
        self.actor_target = copy.deepcopy(self.actor)
        self.critics = torch.nn.ModuleList(Critic(T.PRIVILEGED_OBS_DIM, 4, tuple(c.critic_hidden)) for _ in range(2))
        self.critics_target = copy.deepcopy(self.critics)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)
        self.updates = 0

    def set_slope(self, slope: float) -> None:
        self.actor.set_slope(slope)
        self.actor_target.set_slope(slope)

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
        return sum(masked_mean((q(batch["critic_obs"][w:], batch["action"][w:]) - target[w:]) ** 2, mask)
                   for q in self.critics)

    def actor_loss(self, batch: dict, lambda_bc: float) -> tuple[torch.Tensor, dict]:
        """TD3BC on the steps after the warm-up, evaluated at the actor's own actions."""
        c = self.config
        pi, _, rates = self.actor.unroll(batch["obs"])
        w = c.warmup_steps
        bc_action = batch["guide_action" if c.bc_target == "guide" else "action"][w:]
        pi, critic_obs, mask = pi[w:], batch["critic_obs"][w:], batch["mask"][w:]
        loss = lambda_bc * masked_mean(((pi - bc_action) ** 2).sum(-1), mask)
        q = None
        if c.alpha > 0:
            q = self.critics[0](critic_obs, pi)
            q_scale = masked_mean(q.abs(), mask).detach().clamp(min=1e-6)
            q = masked_mean(q, mask)
            loss = loss - c.alpha / q_scale * q
        info = {"spike_rates": rates.tolist(), "q": q.detach().item() if q is not None else float("nan")}
        return loss, info

    @torch.no_grad()
    def soft_update(self) -> None:
        tau = self.config.tau
        for net, target in ((self.actor, self.actor_target), (self.critics, self.critics_target)):
            for p, tp in zip(net.parameters(), target.parameters()):
                tp.mul_(1 - tau).add_(p, alpha=tau)

    def _step(self, optimizer, loss: torch.Tensor, net) -> None:
        optimizer.zero_grad()
        loss.backward()
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.max_grad_norm)
        optimizer.step()

    def update(self, batch: dict[str, np.ndarray], lambda_bc: float) -> dict:
        """One update on a minibatch of windows; returns the losses it computed."""
        c = self.config
        batch = {k: torch.as_tensor(v) for k, v in batch.items()}
        stats = {}
        if c.alpha > 0:  # BC has no critic to learn
            loss = self.critic_loss(batch)
            self._step(self.critic_opt, loss, self.critics)
            stats["critic_loss"] = loss.item()
        self.updates += 1
        if self.updates % c.policy_delay == 0 or c.alpha == 0:
            loss, info = self.actor_loss(batch, lambda_bc)
            self._step(self.actor_opt, loss, self.actor)
            self.soft_update()
            stats.update(actor_loss=loss.item(), **info)
        return stats

    # --- checkpoints
    PARTS = ("actor", "actor_target", "critics", "critics_target", "actor_opt", "critic_opt")

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in self.PARTS} | {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for name in self.PARTS:
            getattr(self, name).load_state_dict(state[name])
        self.updates = state["updates"]


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


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the steps a window's episode owns (a crashed episode's window is padded)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
