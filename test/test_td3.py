"""Training pieces: sequence buffer, TD3BC actor loss, target updates, resume, a tiny run that learns."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from snn_controller.config import ConfigError
from snn_controller.task import spec as T
from snn_controller.train.buffer import SequenceBuffer
from snn_controller.train.algorithm import n_step_targets
from snn_controller.train.config import TrainConfig, load_train_config, quick_config
from snn_controller.train.run import Trainer, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_drones=8, iterations=4, updates_per_iteration=3, batch_size=4, eval_every=2, eval_episodes=4,
            checkpoint_every=1, buffer_steps=20_000, actor_hidden=(32, 16), critic_hidden=(32, 32))


def test_buffer_windows_stay_inside_episodes():
    buf = SequenceBuffer(capacity_steps=2000, segment_steps=10, fields={"x": (), "v": (2,)}, window=4, stride=2)
    starts = np.zeros((10, 2), bool)
    starts[0] = True
    starts[5, 0] = True  # drone 0: episodes [0, 5) and [5, 10); drone 1: one episode
    x = np.tile(np.arange(10, dtype=np.float32)[:, None], (1, 2))
    x[5:, 0] += 100  # mark drone 0's second episode
    buf.add({"x": x, "v": np.zeros((10, 2, 2), np.float32)}, starts)
    # drone 0: 0 (0..3) and 1 (1..4: ends at the crash), 5 and 6; drone 1: 0, 2, 4, 6 (6 ends at 9)
    assert sorted(map(tuple, buf._index[:, :2].tolist())) == [(0, 0), (0, 1), (0, 5), (0, 6), (1, 0), (1, 2),
                                                              (1, 4), (1, 6)]
    batch = buf.sample(200, np.random.default_rng(0))
    assert batch["x"].shape == (4, 200) and batch["v"].shape == (4, 200, 2) and (batch["mask"] == 1).all()
    steps = np.diff(batch["x"], axis=0)
    assert (steps == 1).all(), "a window never jumps across an episode boundary"
    with pytest.raises(ValueError, match="rollout has 9 steps"):
        buf.add({"x": x[:9], "v": np.zeros((9, 2, 2), np.float32)}, starts[:9])


def test_buffer_keeps_every_step_of_crashed_episodes_past_min_steps():
    """The steps before a crash are the ones a controller must learn; windows must not drop them."""
    steps, window = 60, 20
    starts = np.zeros((steps, 4), bool)
    starts[0] = True
    starts[[33, 47], 0] = True  # drone 0: crashes at steps 32 and 46 (an episode of 14 steps)
    starts[[6, 18], 1] = True  # drone 1: crashes at step 5 (shorter than min_steps) and at 17 (12 steps)
    starts[50, 2] = True  # drone 2: a last episode of 10 steps, cut off by the rollout's end, no crash
    buf = SequenceBuffer(10_000, steps, {"t": ()}, window=window, stride=7, min_steps=8)
    t = np.tile(np.arange(steps, dtype=np.float32)[:, None], (1, 4))
    buf.add({"t": t}, starts)
    covered = np.zeros((steps, 4), bool)
    for segment, start, valid in buf._index:
        assert valid == window or start + window <= steps
        covered[start:start + valid, segment] = True
    expected = np.ones((steps, 4), bool)
    expected[:6, 1] = False  # 6 steps: shorter than min_steps
    expected[47:, 0] = expected[50:, 2] = False  # shorter than a window, and the rollout ends before one fits
    assert (covered == expected).all()
    batch = buf.sample(500, np.random.default_rng(0))
    # padded windows: the mask ends at the crash, and the masked part never counts
    short = batch["mask"].sum(0) < window
    assert short.any() and set(batch["mask"].sum(0)[short].tolist()) <= {12.0, 14.0}
    inside = batch["mask"] == 1
    assert (np.diff(batch["t"], axis=0)[inside[1:]] == 1).all()


def test_buffer_ring_overwrites_oldest_segments():
    buf = SequenceBuffer(capacity_steps=30, segment_steps=10, fields={"x": ()}, window=5, stride=5)
    for k in range(4):  # 4 rollouts of 1 drone, room for 3 segments
        buf.add({"x": np.full((10, 1), k, np.float32)}, np.eye(10, 1, dtype=bool))
    assert len(buf) == 30 and sorted(set(buf.data["x"][:, 0].tolist())) == [1.0, 2.0, 3.0]


def test_buffer_loads_checkpoints_from_before_masked_windows():
    """Older checkpoints stored window start times only (every window full): a resumed run keeps them."""
    buf = SequenceBuffer(capacity_steps=100, segment_steps=10, fields={"x": ()}, window=4, stride=2)
    buf.add({"x": np.zeros((10, 1), np.float32)}, np.eye(10, 1, dtype=bool))
    state = buf.state_dict()
    state["windows"] = [w[:, 0] for w in state["windows"]]
    old = SequenceBuffer(capacity_steps=100, segment_steps=10, fields={"x": ()}, window=4, stride=2)
    old.load_state_dict(state)
    assert (old._index == buf._index).all()


@pytest.fixture
def trainer(tmp_path):
    config = quick_config(**TINY)
    return Trainer(config, tmp_path)


def _batch(trainer, length=None):
    c = trainer.config
    length = length or c.window
    g = torch.Generator().manual_seed(0)
    b = 3
    return {"obs": torch.randn(length, b, 18, generator=g), "critic_obs": torch.randn(length, b, 146, generator=g),
            "action": torch.rand(length, b, 4, generator=g) * 2 - 1, "reward": torch.randn(length, b, generator=g),
            "terminated": torch.zeros(length, b), "next_obs": torch.randn(length, b, 18, generator=g),
            "next_critic_obs": torch.randn(length, b, 146, generator=g), "mask": torch.ones(length, b)}


def test_actor_loss_ignores_the_warmup_and_uses_the_actors_actions(trainer):
    batch = _batch(trainer)
    trainer.td3.config = replace(trainer.td3.config, q_weight=0.0)
    with torch.no_grad():
        own = trainer.actor.unroll(batch["obs"])[0]
    batch["action"] = own.clone()
    batch["action"][:50] = 5.0  # garbage during the warm-up must not matter
    loss, _ = trainer.td3.actor_loss(batch, lambda_bc=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    batch["action"][60] += 0.5
    assert trainer.td3.actor_loss(batch, lambda_bc=1.0)[0].item() > 0


def test_q_term_is_at_the_actors_actions_and_reaches_the_actor(trainer):
    trainer.td3.config = replace(trainer.td3.config, bc_weight=0.0)
    batch = _batch(trainer)
    loss, _ = trainer.td3.actor_loss(batch, lambda_bc=0.0)
    trainer.actor.zero_grad()
    loss.backward()
    grads = [p.grad for p in trainer.actor.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    other = dict(batch, action=-batch["action"])  # the buffer action must not enter the Q term
    assert trainer.td3.actor_loss(other, lambda_bc=0.0)[0].item() == pytest.approx(loss.item())


def test_losses_ignore_the_masked_steps_after_a_crash(trainer):
    batch = _batch(trainer)
    batch["mask"][70:, 0] = 0.0  # window 0: the episode crashed at step 69
    batch["terminated"][69, 0] = 1.0
    trainer.td3.config = replace(trainer.td3.config, bc_target="executed")
    actor_loss = trainer.td3.actor_loss(batch, lambda_bc=1.0)[0].item()
    other = {k: v.clone() for k, v in batch.items()}
    for key in ("action", "reward", "critic_obs", "next_critic_obs", "obs"):
        other[key][70:, 0] = 1e3  # the next episode's data in the padding
    torch.manual_seed(0)
    a = trainer.td3.critic_loss(batch).item()
    torch.manual_seed(0)
    b = trainer.td3.critic_loss(other).item()
    assert a == pytest.approx(b, rel=1e-6)
    assert trainer.td3.actor_loss(other, lambda_bc=1.0)[0].item() == pytest.approx(actor_loss, rel=1e-6)
    other["action"][60, 0] += 0.5  # a step before the crash still counts
    assert trainer.td3.actor_loss(other, lambda_bc=1.0)[0].item() != pytest.approx(actor_loss, rel=1e-6)


def test_target_networks_move_by_tau(trainer):
    tau = trainer.td3.config.tau
    before = [p.clone() for p in trainer.td3.critics_target.parameters()]
    actor_before = [p.clone() for p in trainer.td3.actor_target.parameters()]
    with torch.no_grad():
        for p in list(trainer.td3.critics.parameters()) + list(trainer.actor.parameters()):
            p.add_(1.0)
    trainer.td3.soft_update()
    for b, p, t in zip(before, trainer.td3.critics.parameters(), trainer.td3.critics_target.parameters()):
        assert torch.allclose(t, (1 - tau) * b + tau * p, atol=1e-7)
    for b, p, t in zip(actor_before, trainer.actor.parameters(), trainer.td3.actor_target.parameters()):
        assert torch.allclose(t, (1 - tau) * b + tau * p, atol=1e-7)


def test_critic_target_uses_the_next_step_of_the_target_actor(trainer):
    batch = _batch(trainer, length=60)
    batch["terminated"][:] = 1.0  # terminal everywhere: y = r exactly, whatever the target actor says
    expected = sum(((q(batch["critic_obs"], batch["action"]) - batch["reward"]) ** 2).mean()
                   for q in trainer.td3.critics)
    for n_step in (1, 3):
        trainer.td3.config = replace(trainer.td3.config, critic_after_warmup=False, n_step=n_step)  # every step
        assert trainer.td3.critic_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    batch["terminated"][:] = 0.0  # now the targets differ: n_step reaches critic_loss
    losses = []
    for n_step in (1, 3):
        trainer.td3.config = replace(trainer.td3.config, n_step=n_step)
        torch.manual_seed(0)
        losses.append(trainer.td3.critic_loss(batch).item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_n_step_targets_stop_at_crashes_and_at_the_window_end():
    reward = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    crashed = torch.tensor([[0.0], [0.0], [1.0], [0.0]])  # step 2 ends the episode
    q_next = torch.full((4, 1), 8.0)
    def targets(n):
        return n_step_targets(reward, crashed, q_next, gamma=0.5, n=n)[:, 0].tolist()
    assert targets(1) == [5.0, 6.0, 3.0, 8.0]  # r + gamma (1 - crashed) Q'
    assert targets(2) == [1 + 0.5 * 2 + 0.25 * 8, 2 + 0.5 * 3, 3.0, 4 + 0.5 * 8]
    assert targets(10) == [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 4 + 0.5 * 8]


def test_config_validation(tmp_path):
    f = tmp_path / "c.yaml"
    for text, error in (("name: x\nlearning_rate: 0.1\n", r"unknown key\(s\) \['learning_rate'\]"),
                        ("q_weight: 0.0\nbc_weight: 0.0\n", "learn nothing"),
                        ("slope: {kind: steep}\n", "slope: kind"),
                        ("guide: none\n", "method td3bc_jsrl: jump_start needs a guide"),
                        ("method: bc\nguide: none\n", "method bc: learns from guide rollouts"),
                        ("jump_start: false\n", "'jump_start' is now method"),
                        ("starts: moderate\n", r"'starts' is now task: \{start"),
                        ("bc_target: labels\n", "bc_target: 'labels' is not one of"),
                        ("select_starts: everywhere\n", "select_starts must be one of"),
                        ("n_step: 0\n", "n_step must be >= 1")):
        f.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_train_config(f)
    for path in sorted((ROOT / "config" / "train").glob("*.yaml")):
        assert isinstance(load_train_config(path), TrainConfig), path


def test_progress_log_after_a_resume_holds_each_iteration_once(tmp_path):
    """Killed after an iteration was logged but before its checkpoint: the resumed run repeats that
    iteration, and the CSV must not list it twice."""
    import csv

    config = quick_config(**{**TINY, "iterations": 4, "checkpoint_every": 2, "eval_every": 4})

    def killed_after_third(row):
        if row["iteration"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path, progress_bar=False, log=lambda *a: None, on_iteration=killed_after_third)
    logged = lambda: [int(r["iteration"]) for r in csv.DictReader(open(tmp_path / "progress.csv"))]  # noqa: E731
    assert logged() == [1, 2, 3] and torch.load(tmp_path / "checkpoint.pt", weights_only=True)["iteration"] == 2
    train(config, tmp_path, resume=True, progress_bar=False, log=lambda *a: None)
    assert logged() == [1, 2, 3, 4]


def test_a_checkpoint_that_cannot_be_written_says_so_and_keeps_the_previous_one(trainer, monkeypatch):
    trainer.save_checkpoint()
    before = (trainer.out_dir / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(state, path):
        real_save(state, path)  # a partial file is left behind, as torch leaves it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 75138048 vs 75137936")

    monkeypatch.setattr(torch, "save", full_disk)
    trainer.iteration = 1
    with pytest.raises(OSError, match="could not write the checkpoint .*previous checkpoint is intact.*--resume"):
        trainer.save_checkpoint()
    assert (trainer.out_dir / "checkpoint.pt").read_bytes() == before
    assert not (trainer.out_dir / "checkpoint.pt.tmp").exists()


def _final_weights(out_dir):
    state = torch.load(Path(out_dir) / "checkpoint.pt", weights_only=True)
    return state["actor"], state["critics"], state["history"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    import json

    config_file = tmp_path / "tiny.yaml"
    import yaml

    # the method's own settings: guide labels in the buffer (and checkpoint), best picked on paper starts
    config_file.write_text(yaml.safe_dump({**TINY, "actor_hidden": [32, 16], "critic_hidden": [32, 32],
                                           "bc_target": "guide", "select_starts": "paper"}))
    cmd = [sys.executable, "-m", "snn_controller.cli", "train", "--config", str(config_file), "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=env, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # the same run, killed (SIGKILL) once its second checkpoint exists, then resumed
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ck = run / "checkpoint.pt"
        if ck.exists():
            try:
                if torch.load(ck, weights_only=True)["iteration"] >= 2:
                    break
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "checkpoint.pt", weights_only=True)["iteration"]
    assert 2 <= done <= 4
    res = subprocess.run(cmd + ["--out", str(run), "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a_actor, a_critics, a_hist = _final_weights(tmp_path / "ref")
    b_actor, b_critics, b_hist = _final_weights(run)
    for k in a_actor:
        assert torch.equal(a_actor[k], b_actor[k]), f"actor {k} differs after resume"
    for k in a_critics:
        assert torch.equal(a_critics[k], b_critics[k]), f"critic {k} differs after resume"
    assert [h["iteration"] for h in b_hist] == [1, 2, 3, 4], "no iteration lost or repeated"
    assert json.loads(res.stdout.strip().splitlines()[-1])["iterations"] == 4
    again = subprocess.run(cmd + ["--out", str(run)], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 2 and "--resume" in again.stdout


def test_a_tiny_training_run_improves_a_fresh_network(tmp_path):
    """Easy setting: moderate starts, the method's config at a tiny budget (the BC term dominates early)."""
    config = quick_config(num_drones=32, iterations=3, updates_per_iteration=60, batch_size=16, eval_every=3,
                          eval_episodes=16, task=T.TaskConfig(start="moderate"), eval_starts="moderate", checkpoint_every=3,
                          buffer_steps=100_000)
    trainer = Trainer(config, tmp_path)
    before = trainer.evaluate(episodes=32, starts="moderate")
    trainer.run(progress_bar=False)
    after = trainer.evaluate(episodes=32, starts="moderate")
    # paired comparison: the same evaluation starts and noise before and after
    assert after["return_mean"] > before["return_mean"] + 25, (before, after)


def test_no_window_past_the_warmup_means_no_update_not_a_crash(tmp_path):
    """TD3 from scratch crashes early: while no episode outlasts the warm-up there is nothing to learn
    on (the paper's warm-up problem), and the run goes on without updates instead of failing."""
    config = quick_config(**{**TINY, "iterations": 1, "method": "td3",
                             "eval_every": 1, "window": 450, "warmup_steps": 449})
    trainer = Trainer(config, tmp_path)
    row = trainer.run_iteration()  # a fresh network flies no episode for 450 steps
    assert row["windows"] == 0 and trainer.td3.updates == 0 and "critic_loss" not in row
    assert "eval_return" in row


def test_critic_after_warmup_skips_the_cold_steps(trainer):
    batch = _batch(trainer, length=60)
    batch["terminated"][:] = 1.0  # y = r
    trainer.td3.config = replace(trainer.td3.config, critic_after_warmup=True, warmup_steps=50)
    loss = trainer.td3.critic_loss(batch)
    expected = sum(((q(batch["critic_obs"][50:], batch["action"][50:]) - batch["reward"][50:]) ** 2).mean()
                   for q in trainer.td3.critics)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def _record_flight(trainer, guide_net=None):
    """Wrap the trainer's guide and env: what the guide answered (or ``guide_net`` on the guide's
    privileged input) and what was flown, per step."""
    guide, env_step = trainer.guide, trainer.env.step
    answered, executed = [], []

    class Recorder:
        def reset(self, mask=None):
            guide.reset(mask)

        def __call__(self, obs):
            action = guide(obs)
            with torch.no_grad():
                answered.append(torch.as_tensor(action, dtype=torch.float32) if guide_net is None
                                else guide_net(torch.as_tensor(obs.privileged).float()))
            return action

    trainer.guide = Recorder()
    # what the float32 environment flies
    trainer.env.step = lambda action: executed.append(torch.as_tensor(action, dtype=torch.float32)) or env_step(action)
    return answered, executed


def test_a_trained_guide_ann_file_flies_the_jump_start(tmp_path):
    """The guide ANN (privileged, feed-forward, warm-up 0) trains with the same code, and its model
    file then flies the first G steps of the method's rollouts."""
    from snn_controller.networks.files import load_actor

    guide_config = quick_config(**{**TINY, "iterations": 2, "eval_every": 2, "actor": "ann", "actor_hidden": (16, 16),
                                   "privileged_actor": True, "warmup_steps": 0})
    Trainer(guide_config, tmp_path / "guide").run(progress_bar=False)
    guide_file = tmp_path / "guide" / "best.safetensors"
    trainer = Trainer(quick_config(**{**TINY, "guide": str(guide_file)}), tmp_path / "snn")
    expected, executed = _record_flight(trainer, guide_net=load_actor(guide_file)[0])
    trainer.collect(guide_steps_now=500, stage=0, seed=0)  # G = 500: the guide flies everything
    assert len(executed) == 500
    assert all(torch.allclose(a, e.to(a.dtype), atol=1e-6) for a, e in zip(executed, expected))

    # ... and the run evaluates with its own guide flying the warm-up: the guide ANN, then the actor
    from snn_controller.task import spec as T
    from snn_controller.task.envs import FlightEnv
    from snn_controller.control.controllers import TorchNetwork, flight_policy

    n, guide_net, actor = 4, load_actor(guide_file)[0], TorchNetwork(trainer.actor, 4)
    policy = flight_policy(TorchNetwork(trainer.actor, n), T.TaskConfig(), n, False, 50, str(guide_file))
    env = FlightEnv(T.TaskConfig(), n, seed=0, autoreset=False, dtype=torch.float32)
    obs, _ = env.reset()
    policy.reset()
    for t in range(60):
        action = policy(obs.numpy())
        network = actor.step(obs.actor.numpy())
        with torch.no_grad():
            expected = network if t >= 50 else guide_net(obs.privileged.float()).numpy()
        assert np.allclose(action, expected, atol=1e-6), t
        obs, *_ = env.step(action)


def test_a_pid_gains_file_guides_training_and_its_evaluations(tmp_path, monkeypatch):
    import snn_controller.train.run as run
    from snn_controller.control.pid import load_pid_gains

    weak = "config/controllers/pid_weak.yaml"
    trainer = Trainer(quick_config(**{**TINY, "guide": weak}), tmp_path / "weak")
    assert trainer.guide.gains == load_pid_gains(weak) != load_pid_gains()
    # the run's evaluations hand over from the same PID
    policies = []
    original = run.flight_policy
    monkeypatch.setattr(run, "flight_policy", lambda *a: policies.append(original(*a)) or policies[-1])
    trainer.evaluate(episodes=2)
    assert policies[0].guide.gains == load_pid_gains(weak)
    (tmp_path / "gains.yaml").write_text("kp_xy: 1.0\n")  # the other gains missing
    with pytest.raises(ConfigError, match="gains.yaml: missing key"):
        Trainer(quick_config(**{**TINY, "guide": str(tmp_path / "gains.yaml")}), tmp_path / "bad")


def test_guide_demonstrations_fly_whole_episodes(trainer):
    """guide_demo_share: the guide flies the first drones for whole episodes, the actor the others."""
    trainer.config = replace(trainer.config, guide_demo_share=0.25)  # 2 of 8 drones
    answered, executed = _record_flight(trainer)
    trainer.collect(guide_steps_now=0, stage=0, seed=0)  # no jump start: only the demonstrations
    flown, guide = torch.stack(executed), torch.stack(answered).to(executed[0].dtype)
    assert torch.equal(flown[:, :2], guide[:, :2])
    assert (flown[:, 2:] != guide[:, 2:]).any(-1).all(), "the actor flies the other drones at every step"


def test_bc_target_guide_labels_every_step_and_the_bc_term_uses_the_labels(tmp_path):
    """bc_target: guide: the guide answers on the actor's drones too (its action is stored, not
    flown) and the BC term pulls towards that label instead of the executed action."""
    trainer = Trainer(quick_config(**TINY, guide_demo_share=0.0, bc_target="guide"), tmp_path)
    answered, executed = _record_flight(trainer)
    trainer.collect(guide_steps_now=10, stage=0, seed=0)
    flown, guide = torch.stack(executed), torch.stack(answered).to(executed[0].dtype)
    assert len(answered) == len(executed), "the guide answers on every step, also after the handover"
    actor_flew = (flown != guide).any(-1)  # (crashed drones restart with 10 guide steps)
    assert torch.equal(flown[:10], guide[:10]) and actor_flew[10:].float().mean() > 0.5
    stored = trainer.buffer.data["guide_action"][:8].transpose(1, 0, 2)  # (steps, drones, 4)
    assert np.array_equal(stored, guide.numpy()), "the label of every step is the guide's answer"
    assert np.array_equal(trainer.buffer.data["action"][:8].transpose(1, 0, 2), flown.numpy())

    batch = _batch(trainer)
    trainer.td3.config = replace(trainer.td3.config, q_weight=0.0)
    with torch.no_grad():
        own = trainer.actor.unroll(batch["obs"])[0]
    batch["guide_action"] = own.clone()
    batch["action"] = -own  # the executed action no longer enters the BC term
    assert trainer.td3.actor_loss(batch, lambda_bc=1.0)[0].item() == pytest.approx(0.0, abs=1e-10)
    batch["guide_action"][70] += 0.5
    assert trainer.td3.actor_loss(batch, lambda_bc=1.0)[0].item() > 0


def test_best_checkpoint_is_picked_on_the_select_starts(tmp_path):
    """select_starts: the slope still reads the eval_starts evaluation; best.safetensors is the
    checkpoint with the best return on the selection starts, and says which evaluation picked it."""
    from snn_controller.io.model_file import load_model

    config = quick_config(**{**TINY, "iterations": 2, "eval_every": 1, "checkpoint_every": 2,
                             "eval_starts": "moderate", "select_starts": "paper"})
    trainer = Trainer(config, tmp_path)
    seen = []
    real = trainer.evaluate
    trainer.evaluate = lambda **kw: seen.append(kw) or real(**kw)
    trainer.run(progress_bar=False)
    assert [kw.get("starts") for kw in seen] == [None, "paper"] * 2
    rows = trainer.history
    assert trainer.slope.scores == [r["eval_return"] for r in rows], "the slope reads the moderate evaluation"
    best_row = max(rows, key=lambda r: r["select_return"])
    picked = load_model(tmp_path / "best.safetensors")[1]["provenance"]
    assert picked["iteration"] == best_row["iteration"]
    assert picked["evaluation"]["return_mean"] == pytest.approx(best_row["select_return"])


def test_a_guide_that_knows_the_delay_is_told_each_episodes_delay(tmp_path):
    """guide_knows_delay: the PID guide predicts across the true action delay of every episode,
    also of the episodes that start after a crash."""
    from snn_controller.task.spec import Latency

    config = quick_config(**{**TINY, "task": T.TaskConfig(latency=Latency(action_delay=(0, 4))), "guide_knows_delay": True})
    trainer = Trainer(config, tmp_path)
    trainer.collect(guide_steps_now=100, stage=0, seed=3)
    delays = trainer.env.action_delay.numpy()
    assert len(set(delays.tolist())) > 1  # the drones fly different delays
    np.testing.assert_array_equal(trainer.guide.delay_steps, delays)
    with pytest.raises(ConfigError, match="guide_knows_delay needs a PID guide"):
        quick_config(guide="models/guide_cf21.safetensors", guide_knows_delay=True)


def test_the_baselines_are_the_method_with_only_their_own_keys_changed():
    """Same harness, same budget, enforced: a baseline names the method's file as its base and the
    resolved configs differ in nothing else than what makes it another method."""
    import yaml

    method = load_train_config(ROOT / "config" / "train" / "td3bc_jsrl.yaml")
    for name in ("baseline_bc", "baseline_td3bc", "baseline_td3", "ann_actor"):
        path = ROOT / "config" / "train" / f"{name}.yaml"
        own = yaml.safe_load(path.read_text())
        assert own.pop("base") == "td3bc_jsrl.yaml", path
        resolved = load_train_config(path)
        assert resolved == replace(method, **own), path
    assert load_train_config(ROOT / "config" / "train" / "baseline_td3.yaml").rollout_guide == "none"
    assert not load_train_config(ROOT / "config" / "train" / "baseline_bc.yaml").online


def test_base_files_are_checked_and_their_errors_name_them(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nwindow: 10\n")  # window <= warmup_steps
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: window \(10\) must be longer"):
        load_train_config(tmp_path / "child.yaml")
    (tmp_path / "base.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="base: chain loops"):
        load_train_config(tmp_path / "child.yaml")
    (tmp_path / "base.yaml").write_text("name: base\ntask: {start: moderate, latency: {jitter: 0.5}}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntask: {latency: {action_delay: [1, 2]}}\n")
    task = load_train_config(tmp_path / "child.yaml").task  # a section lists only what it changes
    assert (task.start, task.latency.jitter, task.latency.action_delay) == ("moderate", 0.5, (1, 2))


def test_the_algorithm_docstring_states_the_defaults():
    """The module docstring lists hyperparameters as ``name`` = value: each must be the default."""
    import re

    import snn_controller.train.algorithm as algorithm

    stated = re.findall(r"``(\w+)`` = ([-\d.e]+)", algorithm.__doc__)
    assert len(stated) >= 10
    defaults = TrainConfig()
    for name, value in stated:
        assert getattr(defaults, name) == pytest.approx(float(value)), name


def test_each_purpose_of_a_run_has_its_own_seed():
    config = quick_config(seed=3)
    seeds = [config.derived_seed(p) for p in ("networks", "environment", "evaluation", "selection")]
    seeds += [config.derived_seed("iteration", i) for i in range(3)] + [config.derived_seed("rollout", 0, r)
                                                                        for r in range(3)]
    assert len(set(seeds)) == len(seeds)
    assert config.derived_seed("rollout", 2, 1) == quick_config(seed=3).derived_seed("rollout", 2, 1)
    assert config.derived_seed("networks") != quick_config(seed=4).derived_seed("networks")


def test_a_checkpoint_from_before_method_and_task_resumes(tmp_path):
    """Checkpoints written before ``method:`` and ``task:`` kept the drone, starts and conditions at
    the top and the method as flags: their config is read in today's keys."""
    from snn_controller.config import to_dict
    from snn_controller.train.run import _upgrade

    for method, flags in (("td3bc_jsrl", (True, True)), ("td3", (True, False)), ("bc", (False, False))):
        config = quick_config(method=method, q_weight=0.0 if method == "bc" else 2.0,
                              task=T.TaskConfig(start="moderate", latency=T.Latency(action_delay=(0, 2))))
        old = to_dict(config)
        task = old.pop("task")
        old.pop("method")
        old.update(drone=task["drone"], starts=task["start"], latency=task["latency"],
                   randomization=task["randomization"], online=flags[0], jump_start=flags[1])
        assert _upgrade(old) == to_dict(config), method
