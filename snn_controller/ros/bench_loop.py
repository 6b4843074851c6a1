"""End-to-end ROS latency through snn_policy: odometry published -> the command answering it
(cmd_motors_stamped, matched by stamp) received."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np


def bench_loop(model: str | None = None, rates=(100.0, 500.0), seconds: float = 3.0) -> dict:
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from ..io import topics
    from . import qos
    from .conversions import stamp_ns, time_from_ns

    cmd = [sys.executable, "-m", "snn_controller.ros.snn_policy", "--ros-args", "-r", "__ns:=/bench"]
    if model:
        cmd += ["-p", f"model:={model}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("bench_loop_driver", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    # Each odometry carries a new stamp; an answer is matched to the odometry of its stamp, so a
    # state the node skipped (it answers the newest one) counts as unanswered, never shifts the matching.
    sent: dict[int, float] = {}  # stamp [ns] -> send time
    latencies: list[float] = []

    def on_cmd(msg):
        sent_at = sent.pop(stamp_ns(msg.header.stamp), None)
        if sent_at is not None:
            latencies.append(time.perf_counter() - sent_at)

    odom, cmd = topics.drone_topic("bench", topics.ODOM), topics.drone_topic("bench", topics.CMD_MOTORS_STAMPED)
    pub = node.create_publisher(Odometry, odom, qos.STATE)
    node.create_subscription(JointState, cmd, on_cmd, qos.COMMAND)
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "world", "bench"
    msg.pose.pose.position.z = 1.0
    msg.pose.pose.orientation.w = 1.0
    result = {"model": model or "shipped", "seconds_per_rate": seconds}
    try:
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 or node.count_publishers(cmd) == 0:
            executor.spin_once(timeout_sec=0.05)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("snn_policy did not come up: " + (proc.stderr.read() if proc.poll() else "timeout"))
        stamp = 0
        for rate in [rates[0], *rates]:  # the first pass (discarded) lets discovery settle
            sent.clear()
            latencies.clear()
            period, t_next = 1.0 / rate, time.perf_counter()
            end = t_next + seconds
            n_sent = 0
            while time.perf_counter() < end:
                now = time.perf_counter()
                if now >= t_next:
                    stamp += 1_000_000  # a new state each time: the node answers each stamp once
                    msg.header.stamp = time_from_ns(stamp)
                    sent[stamp] = time.perf_counter()
                    pub.publish(msg)
                    n_sent += 1
                    t_next += period
                executor.spin_once(timeout_sec=max(0.0, min(t_next - time.perf_counter(), 0.001)))
            drain = time.perf_counter() + 0.5
            while len(latencies) < n_sent and time.perf_counter() < drain:
                executor.spin_once(timeout_sec=0.01)
            us = np.array(latencies) * 1e6
            if n_sent and "warm_up" not in result:
                result["warm_up"] = {"sent": n_sent, "answered": len(latencies)}
                continue
            result[f"{int(rate)}Hz"] = {"sent": n_sent, "answered": len(latencies),
                                        "p50_us": float(np.percentile(us, 50)) if len(us) else None,
                                        "p99_us": float(np.percentile(us, 99)) if len(us) else None}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return result
