"""crazyflie_bridge from a terminal without the ros2 CLI (a pip-only install): ``snnctl crazyflie``.

``call(request, drone)`` calls one of the bridge's services (arm, disarm: /<drone>/arm or, without a
drone, the fleet's /crazyflie_bridge/arm with SetBool; takeoff, land, go_to, emergency_stop: Trigger)
and returns its (success, message). ``status()`` waits for one /diagnostics message with the bridge's
statuses and returns them per drone.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

REQUESTS = ("arm", "disarm", "takeoff", "land", "go_to", "emergency_stop")
BRIDGE = "crazyflie_bridge"


def service_name(request: str, drone: str | None) -> str:
    base = "arm" if request == "disarm" else request
    return f"/{drone}/{base}" if drone else f"/{BRIDGE}/{base}"


def call(request: str, drone: str | None = None, timeout: float = 10.0) -> tuple[bool, str]:
    """Call the bridge's service for ``request`` (REQUESTS) on one drone, or on the fleet."""
    if request not in REQUESTS:
        raise ValueError(f"request must be one of {REQUESTS}, got {request!r}")
    import rclpy
    from std_srvs.srv import SetBool, Trigger

    name = service_name(request, drone)
    rclpy.init()
    node = rclpy.create_node("snnctl_crazyflie")
    try:
        if request in ("arm", "disarm"):
            client, msg = node.create_client(SetBool, name), SetBool.Request(data=request == "arm")
        else:
            client, msg = node.create_client(Trigger, name), Trigger.Request()
        if not client.wait_for_service(timeout_sec=timeout):
            return False, f"no service {name} within {timeout} s: is crazyflie_bridge running (same ROS_DOMAIN_ID)?"
        future = client.call_async(msg)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if not future.done():
            return False, f"{name} did not answer within {timeout} s"
        return future.result().success, future.result().message
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def status(timeout: float = 5.0) -> dict[str, dict[str, str]]:
    """The bridge's latest status per drone (its /diagnostics values, plus ``level`` and ``message``)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from . import qos

    rclpy.init()
    node = rclpy.create_node("snnctl_crazyflie_status")
    found = {}

    def on_diagnostics(msg):
        for s in msg.status:
            if s.name.startswith(f"{BRIDGE}: "):
                found[s.hardware_id] = {"level": str(int.from_bytes(s.level, "little") if isinstance(s.level, bytes)
                                                     else s.level), "message": s.message,
                                        **{kv.key: kv.value for kv in s.values}}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.STATE)
    try:
        end = time.monotonic() + timeout
        while not found and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        return found
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
