"""Benchmarks (``snnctl bench``): throughput measured side by side in one run, never pass/fail."""

from __future__ import annotations

import time

import torch

from .drone import load_drone
from .engines import make_engine


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
