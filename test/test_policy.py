"""Warm-up handover and failsafe of the deployed controller."""

import numpy as np
import pytest

from snn_controller.control.handover import Handover, SupervisedPolicy
from snn_controller.task.observation import Observation


def O(actor):  # noqa: E743  (an observation of one or more drones)
    return Observation(actor=np.atleast_2d(actor))


class Const:
    """A stand-in network/guide that returns a constant and counts calls and resets."""

    def __init__(self, value):
        self.value, self.calls, self.resets = value, 0, 0

    def step(self, inputs):
        self.calls += 1
        return np.full((len(inputs), 4), self.value)

    def __call__(self, obs):  # as a guide: a controller
        return self.step(obs.actor)

    def reset(self, mask=None):
        self.resets += 1

    def spikes_per_step(self):
        return [0.0]


def test_guide_flies_the_warmup_while_the_network_runs():
    net, guide = Const(0.5), Const(-0.5)
    policy = Handover(net, guide, guide_steps=3)
    obs = O(np.zeros((2, 18)))
    actions = [policy(obs)[:, 0] for _ in range(5)]
    assert [a[0] for a in actions] == [-0.5, -0.5, -0.5, 0.5, 0.5]
    assert net.calls == 5, "the network steps on every observation, also during the warm-up"
    policy.reset(np.array([True, False]))
    a = policy(obs)[:, 0]
    assert a.tolist() == [-0.5, 0.5], "only the reset drone goes back to its guide"


def test_failsafe_on_nan_hands_control_to_the_guide_and_rewarms():
    net, guide = Const(0.5), Const(-0.5)
    sup = SupervisedPolicy(net, guide, warmup_steps=2)
    obs = np.zeros(18)
    assert [sup(O(obs))[0, 0] for _ in range(3)] == [-0.5, -0.5, 0.5]
    assert sup.flying() == "network"
    calls = net.calls
    bad = obs.copy()
    bad[4] = np.nan
    assert np.isnan(sup(O(bad))).all()
    assert net.calls == calls, "a non-finite observation must never reach the network"
    assert sup.status()["invalid_observations"] == 1 and sup.status()["faults"] == 1
    assert net.resets >= 1 and sup.flying() == "guide"
    assert [sup(O(obs))[0, 0] for _ in range(3)] == [-0.5, -0.5, 0.5]
    sup.fault("stale odometry")
    assert sup.flying() == "guide" and sup.status()["last_fault"] == "stale odometry"


def test_no_handover_when_warmup_is_zero():
    sup = SupervisedPolicy(Const(0.5), Const(-0.5), warmup_steps=0)
    assert sup(O(np.zeros(18)))[0, 0] == 0.5
    with pytest.raises(ValueError):
        Handover(Const(0), Const(0), guide_steps=-1)


def test_guide_flies_outside_the_trained_envelope():
    net, guide = Const(0.5), Const(-0.5)
    sup = SupervisedPolicy(net, guide, warmup_steps=2, envelope=0.5)
    far = np.zeros(18)
    far[2] = -1.0  # 1 m below the goal: a take-off
    assert [sup(O(far))[0, 0] for _ in range(5)] == [-0.5] * 5
    near = np.zeros(18)
    assert [sup(O(near))[0, 0] for _ in range(3)] == [-0.5, -0.5, 0.5], "network after warm-up inside"


def test_a_nan_drone_in_a_batch_gets_nan_and_leaves_the_others_flying():
    """Two drones, one with a non-finite observation: it gets a NaN row and a fresh warm-up, the
    other keeps its network, and the stand-in zeros leave no state behind."""
    net, guide = Const(0.5), Const(-0.5)
    sup = SupervisedPolicy(net, guide, warmup_steps=2)
    obs = np.zeros((2, 18))
    for _ in range(3):
        sup(O(obs))
    bad = obs.copy()
    bad[1, 4] = np.nan
    action = sup(O(bad))
    assert action[0, 0] == 0.5 and np.isnan(action[1]).all()
    assert sup.handover.steps.tolist() == [4, 0] and sup.status()["invalid_observations"] == 1
    assert sup(O(obs))[:, 0].tolist() == [0.5, -0.5], "the faulted drone warms up again"


def test_the_handover_labels_every_step_with_the_guide_when_asked():
    net, guide = Const(0.5), Const(-0.5)
    handover = Handover(net, guide, guide_steps=1, label=True)
    obs = O(np.zeros((2, 18)))
    handover(obs)
    assert handover(obs)[:, 0].tolist() == [0.5, 0.5], "the network flies after one guide step"
    assert handover.guide_action[:, 0].tolist() == [-0.5, -0.5] and guide.calls == 2
    unlabelled = Handover(Const(0.5), Const(-0.5), guide_steps=1)
    unlabelled(obs)
    unlabelled(obs)
    assert unlabelled.guide_action is None and unlabelled.guide.calls == 1, "no guide once the network flies"
