"""Sim-in-the-loop throughput: one training rollout in process and through 1, 2, 4 training bridges,
in one run, with where the time of the ROS path goes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time


def _start_bridges(count: int, drones: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "snn_controller.ros.training_bridge", "--ros-args",
                              "-r", f"__node:=bench_sil_{count}_{k}", "-p", f"drones:={drones}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
            for k in range(count)]


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rollout(trainer) -> float:
    start = time.perf_counter()
    trainer.collect(guide_steps_now=250, stage=5, seed=1)  # the guide flies half of each episode
    return time.perf_counter() - start


def bench_sil(bridges=(1, 2, 4), drones: int = 64) -> dict:
    """Env steps per second of one rollout of ``drones`` drones (the method's actor, guide and
    conditions), in process and with each number of bridges."""
    import rclpy

    from ..train.config import load_train_config
    from ..train.run import Trainer
    from ..config import package_root
    from dataclasses import replace
    from .sil import BridgePool

    method = load_train_config(package_root() / "config" / "train" / "td3bc_jsrl.yaml")
    config = replace(method, num_drones=drones, buffer_steps=drones * 500)
    steps = drones * config.task.episode_steps
    result = {"drones": drones, "steps_per_rollout": steps, "threads": config.threads}
    with tempfile.TemporaryDirectory() as tmp:
        local = Trainer(config, tmp)
        _rollout(local)  # warm-up: first-call costs
        seconds = _rollout(local)
        result["inprocess"] = {"env_steps_per_s": steps / seconds, "rollout_s": seconds}
        context = rclpy.Context()
        rclpy.init(context=context)
        pool = BridgePool(context=context, log=lambda *a: None)
        try:
            for count in bridges:
                procs = _start_bridges(count, math.ceil(drones / count))
                try:
                    deadline = time.monotonic() + 60
                    while len([b for b in pool.bridges() if b.startswith(f"/bench_sil_{count}_")]) < count:
                        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                            raise RuntimeError(f"{count} training bridges did not come up")
                    remote = Trainer(replace(config, collector="ros"), tmp + f"/ros{count}", engine_factory=pool)
                    _rollout(remote)
                    timing = remote.env.engine.timing
                    before = dict(timing)
                    seconds = _rollout(remote)
                    wait = timing["wait_s"] - before["wait_s"]
                    physics = timing["bridge_s"] - before["bridge_s"]
                    result[f"{count}_bridges"] = {
                        "env_steps_per_s": steps / seconds, "rollout_s": seconds,
                        "ratio_to_inprocess": result["inprocess"]["rollout_s"] / seconds,
                        "share_trainer": (seconds - wait) / seconds,  # actor, guide, task logic
                        "share_bridge_physics": physics / seconds,  # the slowest bridge's own work
                        "share_transport": (wait - physics) / seconds,  # serialisation, DDS, scheduling
                        "requests": timing["requests"] - before["requests"]}
                    remote.env.close()
                finally:
                    _stop(procs)
        finally:
            pool.close()
            rclpy.shutdown(context=context)
    return result
