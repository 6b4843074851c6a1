"""Benchmarks (``snnctl bench``): throughput measured side by side in one run, never pass/fail."""

from __future__ import annotations

import time

import numpy as np
import torch

from .sim.drone import load_drone
from .sim.engines import make_engine


def _rate(engine, n: int, min_seconds: float) -> float:
    action = torch.full((n, 4), engine.model.hover_action, dtype=torch.float64)
    engine.step(action)  # warm-up (and compilation)
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            engine.step(action)
        steps += 10
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n * steps / elapsed


def bench_sim(drone: str = "cf21", sizes=(1, 64, 1024, 4096), min_seconds: float = 1.0,
              compile: bool = True) -> dict:
    """Drone-steps/s of the pybullet engine (1 drone) and the batched engine (RK4, float32) at each N."""
    torch.set_num_threads(1)
    model = load_drone(drone)
    result = {"drone": drone, "threads": torch.get_num_threads(), "dt": 0.01}
    pb = make_engine("pybullet", model, 1, ground=False)
    result["pybullet_steps_per_s"] = _rate(pb, 1, min_seconds)
    result["pybullet_substeps"] = pb.substeps
    pb.close()
    variants = {"eager": False, "compiled": True} if compile else {"eager": False}
    for label, flag in variants.items():
        rates = {}
        for n in sizes:
            eng = make_engine("batched", model, n, dtype=torch.float32, integrator="rk4", compile=flag)
            rates[str(n)] = _rate(eng, n, min_seconds)
        result[f"batched_{label}_drone_steps_per_s"] = rates
    best = max(result[f"batched_{label}_drone_steps_per_s"][str(max(sizes))] for label in variants)
    result["ratio_batched_at_max_n_to_pybullet"] = best / result["pybullet_steps_per_s"]
    return result


def _latency(fn, repeats: int) -> dict:
    for _ in range(min(200, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    us = np.array(times) * 1e6
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99))}


def bench_policy(model_path=None, repeats: int = 5000) -> dict:
    """Single-step latency of the paper's network (18 -> 256 -> 128 -> 4), batch 1: the numpy
    deployment path, the torch path, snnTorch's equivalent network when it is installed, and the
    exported C module (``snnctl export --format c``) compiled here when gcc is."""
    from .networks.files import actor_tensors
    from .networks.spiking import SpikingActor
    from .networks.spiking_numpy import NumpySpikingActor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    actor = SpikingActor()
    if model_path:
        from .networks.files import load_actor

        actor, _ = load_actor(model_path)
    manifest = {"architecture": {"type": "lif_actor", "obs_dim": 18, "hidden": list(actor.arch.hidden),
                                 "action_dim": 4}}
    obs = np.random.default_rng(0).standard_normal(18)
    result = {"network": f"18 -> {' -> '.join(map(str, actor.arch.hidden))} -> 4", "batch": 1, "threads": 1}
    for dtype in (np.float32, np.float64):
        net = NumpySpikingActor(actor_tensors(actor), manifest, dtype=dtype)
        result[f"numpy_{np.dtype(dtype).name}"] = _latency(lambda: net.step(obs), repeats)
    state = [actor.zero_state(1)]
    x = torch.as_tensor(obs, dtype=torch.float32)[None]

    def torch_step():
        with torch.no_grad():
            _, state[0], _ = actor.step(state[0], x)

    result["torch"] = _latency(torch_step, repeats)
    try:
        import snntorch
    except ImportError:
        result["snntorch"] = None
        result["snntorch_note"] = "snntorch not installed (pip install snntorch) - not measured"
    else:
        result["snntorch"] = _latency(_snntorch_step(snntorch, actor, x), repeats)
        result["snntorch_version"] = snntorch.__version__
        result["speedup_numpy_vs_snntorch"] = result["snntorch"]["p50_us"] / result["numpy_float32"]["p50_us"]
    result["speedup_numpy_vs_torch"] = result["torch"]["p50_us"] / result["numpy_float32"]["p50_us"]
    result.update(_c_module_latency(actor, model_path, obs, repeats))
    return result


def _c_module_latency(actor, model_path, obs, repeats: int) -> dict:
    """The exported C step through ctypes, and the same call of a C step that does nothing: the
    first includes the second (ctypes, argument copies), so the step's own time is their difference."""
    import tempfile

    from .export.host import CompiledPolicy, find_compiler, noop_policy

    if find_compiler() is None:
        return {"c_ctypes": None, "c_note": "gcc not found - the exported C module was not measured"}
    with tempfile.TemporaryDirectory() as build_dir:
        if not model_path:  # the fresh network, as a model file the exporter can read
            from .networks.files import save_actor

            model_path = f"{build_dir}/fresh.safetensors"
            save_actor(actor, model_path, drone="cf21", dt=0.01, provenance={"method": "untrained (bench)"})
        compiled = CompiledPolicy.from_model(model_path, build_dir)
        noop = noop_policy(build_dir, compiled.hidden)
        result = {"c_ctypes": _latency(lambda: compiled.step(obs), repeats),
                  "ctypes_noop": _latency(lambda: noop.step(obs), repeats)}
    result["c_step_without_ctypes_p50_us"] = result["c_ctypes"]["p50_us"] - result["ctypes_noop"]["p50_us"]
    return result


def _snntorch_step(snntorch, actor, x):
    """The same network in snnTorch (Leaky neurons, subtract reset with delay, learnable beta/threshold)."""
    from torch import nn

    lin = [layer.linear for layer in actor.layers]
    leaky = [snntorch.Leaky(beta=layer.beta.detach().clamp(0, 1), threshold=layer.theta.detach(), learn_beta=True,
                            learn_threshold=True, reset_mechanism="subtract", init_hidden=False)
             for layer in actor.layers]
    mems = [lk.init_leaky() for lk in leaky]
    readout: nn.Linear = actor.readout

    def step():
        with torch.no_grad():
            h = x
            for i, (ln, lk) in enumerate(zip(lin, leaky)):
                h, mems[i] = lk(ln(h), mems[i])
            torch.tanh(readout(h))

    return step


def bench_train(num_drones: int = 64, updates: int = 10, batch_size: int = 32) -> dict:
    """Training throughput, in one run: rollout env-steps/s with the spiking actor (and the PID
    guide for half of each episode) in the loop, and sequence updates per second."""
    import tempfile

    from .train.config import quick_config
    from .train.run import Trainer

    config = quick_config(num_drones=num_drones, batch_size=batch_size, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, tmp)
        start = time.perf_counter()
        trainer.collect(guide_steps_now=250, stage=0, seed=0)
        rollout_s = time.perf_counter() - start
        steps = num_drones * config.task.episode_steps
        rng = np.random.default_rng(0)
        trainer.td3.update(trainer.buffer.sample(batch_size, rng), 0.2)  # warm-up
        start = time.perf_counter()
        for _ in range(updates):
            trainer.td3.update(trainer.buffer.sample(batch_size, rng), 0.2)
        update_s = (time.perf_counter() - start) / updates
    return {"num_drones": num_drones, "rollout_env_steps_per_s": steps / rollout_s,
            "updates_per_s": 1 / update_s, "batch_windows": batch_size, "window": config.window,
            "sequence_steps_per_s": batch_size * config.window / update_s,
            "note": "an update = critic step on batch x L steps; the actor (BPTT over L) every policy_delay updates"}
