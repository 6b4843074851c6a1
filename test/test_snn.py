"""The spiking actor: surrogate gradient, delayed soft reset, explicit state, numpy/torch agreement."""

import numpy as np
import pytest
import torch

from snn_controller.networks.files import actor_tensors
from snn_controller.networks.spiking import ActorArchitecture, LIFLayer, SpikingActor, spike
from snn_controller.networks.spiking_numpy import NumpySpikingActor

torch.set_num_threads(1)


@pytest.mark.parametrize("k", [1.0, 2.0, 10.0, 25.0, 100.0])
def test_surrogate_gradient_is_the_formula(k):
    x = torch.linspace(-2, 2, 401, dtype=torch.float64, requires_grad=True)
    s = spike(x, torch.tensor(k, dtype=torch.float64))
    assert torch.equal(s, (x > 0).double()), "forward must be the Heaviside step"
    (s * torch.arange(401, dtype=torch.float64)).sum().backward()  # weights check elementwise application
    expected = torch.arange(401, dtype=torch.float64) / (1 + k * x.detach().abs()) ** 2
    assert torch.allclose(x.grad, expected, rtol=1e-12, atol=0)
    assert x.grad[200] == pytest.approx(200.0)  # peak 1 at x = 0 (times the weight 200)


def test_surrogate_through_membrane_and_threshold():
    layer = LIFLayer(1, 3).double()
    with torch.no_grad():
        layer.linear.weight.fill_(1.0)
        layer.linear.bias.zero_()
        layer.beta.fill_(0.5)
        layer.theta.copy_(torch.tensor([0.2, 0.5, 0.9]))
    k = torch.tensor(4.0, dtype=torch.float64)
    x = torch.tensor([[0.6]], dtype=torch.float64, requires_grad=True)
    zero = (torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    s, (u, _) = layer.neuron(layer.linear(x), zero, k)
    s.sum().backward()
    d = u.detach() - layer.theta.detach()
    surrogate = 1 / (1 + 4.0 * d.abs()) ** 2
    assert torch.allclose(layer.theta.grad, -surrogate[0])  # dS/dtheta = -surrogate
    assert torch.allclose(x.grad, surrogate.sum().reshape(1, 1))  # dS/dU * dU/dx (w = 1)


def test_soft_reset_is_delayed_by_one_step():
    layer = LIFLayer(1, 1).double()
    with torch.no_grad():
        layer.linear.weight.fill_(1.0)
        layer.linear.bias.zero_()
        layer.beta.fill_(1.0)
        layer.theta.fill_(1.0)
    state = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    k = torch.tensor(2.0)
    us, ss = [], []
    for _ in range(5):
        s, state = layer.neuron(torch.full((1, 1), 0.6, dtype=torch.float64), state, k)
        us.append(state[0].item())
        ss.append(s.item())
    # U: 0.6, 1.2 (spike), 1.2 + 0.6 - 1 = 0.8 (reset applied one step after the spike), 1.4 (spike), 1.0
    assert us == pytest.approx([0.6, 1.2, 0.8, 1.4, 1.0])
    assert ss == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_reset_term_is_detached_from_the_spike():
    layer = LIFLayer(1, 1).double()
    with torch.no_grad():
        layer.linear.weight.fill_(1.0)
        layer.linear.bias.zero_()
        layer.beta.fill_(0.0)
        layer.theta.fill_(0.5)
    k = torch.tensor(2.0)
    u0 = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    s_prev = spike(u0 - 0.5, k)  # a spike with a surrogate path back to u0
    _, (u, _) = layer.neuron(torch.zeros(1, 1, dtype=torch.float64), (u0 * 0, s_prev), k)
    u.sum().backward()
    assert u0.grad.abs().item() == 0.0, "no gradient may flow through the reset's spike"


def test_slope_changes_gradients_not_outputs():
    torch.manual_seed(0)
    actor = SpikingActor(slope=2.0).double()
    obs = torch.randn(60, 8, 18, dtype=torch.float64)
    grads, outs = [], []
    for k in (2.0, 50.0):
        actor.set_slope(k)  # no rebuild: same parameters, same optimiser state
        actor.zero_grad()
        out = actor.unroll(obs)[0]
        out[30:].pow(2).mean().backward()
        outs.append(out.detach().clone())
        grads.append(actor.layers[0].linear.weight.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])
    assert actor.slope.item() == 50.0 and "slope" in actor.state_dict()
    with pytest.raises(ValueError, match="slope must be > 0"):
        actor.set_slope(0.0)


def test_unroll_equals_stepping_and_state_is_explicit():
    torch.manual_seed(1)
    actor = SpikingActor(ActorArchitecture(hidden=(32, 16))).double()
    obs = torch.randn(20, 3, 18, dtype=torch.float64)
    unrolled, final, rates = actor.unroll(obs)
    state = actor.zero_state(3, torch.float64)
    stepped = []
    for o in obs:
        a, state, _ = actor.step(state, o)
        stepped.append(a)
    assert torch.allclose(torch.stack(stepped), unrolled, atol=1e-12)
    assert all(torch.allclose(a[0], b[0], atol=1e-12) for a, b in zip(state, final))
    assert rates.shape == (2,) and (rates >= 0).all() and (rates <= 1).all()
    reset = actor.reset_state(final, torch.tensor([True, False, False]))
    assert reset[0][0][0].abs().sum() == 0 and torch.equal(reset[0][0][1], final[0][0][1])
    with pytest.raises(ValueError, match="state does not fit"):
        actor.step(actor.zero_state(2, torch.float64), obs[0])
    with pytest.raises(ValueError, match="observation has 17 values"):
        actor.step(state, obs[0, :, :17])


def test_numpy_path_matches_torch_over_1000_steps():
    torch.manual_seed(2)
    actor = SpikingActor().double()
    obs = torch.randn(1000, 1, 18, dtype=torch.float64) * 1.5
    with torch.no_grad():
        expected, _, _ = actor.unroll(obs)
    manifest = {"architecture": {"type": "lif_actor", "obs_dim": 18, "hidden": [256, 128], "action_dim": 4}}
    tensors = {k: v.astype(np.float64) for k, v in actor_tensors(actor).items()}
    net = NumpySpikingActor(tensors, manifest, batch=1)
    got = np.stack([net.step(o.numpy()) for o in obs])
    assert np.abs(got - expected.numpy()).max() < 1e-5
    assert net.spikes_per_step()[0] > 1, "the test must exercise spiking, not a silent network"
    net.reset()
    assert net.steps == 0 and all((u == 0).all() for u in net.u)


def test_numpy_path_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys\nimport snn_controller.networks.spiking_numpy, snn_controller.control.handover, snn_controller.control.pid, "
            "snn_controller.sim.rotations, snn_controller.sim.fleet, snn_controller.control.pilot, "
            "snn_controller.io.model_file\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
