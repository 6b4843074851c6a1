"""Sim-in-the-loop training over ROS 2: the trainer's side of the ``training_bridge`` nodes.

:class:`BridgePool` is an engine factory for :class:`~snn_controller.task.envs.FlightEnv`: the
trainer keeps every line of task logic and its random draws, and each bridge process runs the
physics of its share of the drones (sim/engine_server.py). So a run with ``collector: ros`` flies
exactly what the same run flies in process, one lockstep request per bridge and control step.

Wire format, one message per bridge and request (batched: a bridge's drones travel together):

- ``/<bridge>/sil/info`` (std_msgs/String, transient local): ``{"drones": capacity, "session": a
  random id of the bridge process}``; a bridge is alive while this topic has its publisher, and
  one dropped for silence is used again only when a new process (a new session) takes its name.
- ``/<bridge>/sil/request`` (sensor_msgs/JointState): ``header.frame_id`` = ``<kind>:<id>``;
  configure: ``name`` = [the engine spec JSON]; reset and scale: ``velocity`` = drone indices,
  ``position`` = their states (k x 17) or scales (k x 4); step: ``position`` = actions (n x 4).
- ``/<bridge>/sil/reply`` (sensor_msgs/JointState): the request's ``frame_id`` again,
  ``position`` = the states (n x 17) after it, ``velocity`` = [seconds the bridge spent on it];
  ``frame_id`` ``error:<id>`` and ``name`` = [why] when the bridge refused it.

A request without a reply after ``resend`` seconds is sent again (the bridge answers a repeated id
without executing it twice); a bridge silent for ``timeout`` seconds is dropped: its drones are
marked ``lost`` for the rest of the rollout (the rollout discards their episodes) and the next
iteration flies on the bridges alive then, including any that joined.
"""

from __future__ import annotations

import array
import json
import time

import numpy as np
import torch
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from ..sim.engine_server import STATE_SIZE, engine_spec, pack_states, unpack_states
from . import qos

INFO, REQUEST, REPLY = "sil/info", "sil/request", "sil/reply"


def doubles(values) -> array.array:
    """float64 values as the array rclpy takes for a float64 sequence without checking each element."""
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return out


class BridgePool:
    """The training bridges of the ROS domain, as an engine factory (``make_engine``'s arguments).

    ``wait`` [s]: how long :meth:`available` waits for a first bridge before giving up; ``settle``
    [s]: how long it then waits for bridges still starting (a launch starts them with the trainer).
    """

    def __init__(self, context=None, resend: float = 0.5, timeout: float = 5.0, wait: float = 60.0,
                 settle: float = 5.0, log=print):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node("trainer_sil", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.resend, self.timeout, self.wait, self.settle, self.log = resend, timeout, wait, settle, log
        self.info: dict[str, dict] = {}  # bridge -> its info (capacity, session)
        self.dropped: dict[str, str] = {}  # bridge -> the session that stopped answering
        self._info_subs = {}

    # --- which bridges are there
    def bridges(self) -> dict[str, int]:
        """The live bridges and their capacity, in name order."""
        for topic, _ in self.node.get_topic_names_and_types():
            if topic.endswith("/" + INFO) and topic not in self._info_subs:
                bridge = topic[: -len(INFO) - 1]
                self._info_subs[topic] = self.node.create_subscription(
                    String, topic, lambda msg, b=bridge: self.info.__setitem__(b, json.loads(msg.data)), qos.LATCHED)
        self._spin(0.2)  # the latched infos arrive
        # (a killed process stays listed until its DDS lease runs out: the dropped session is skipped)
        return {b: info["drones"] for b, info in sorted(self.info.items())
                if self.node.count_publishers(f"{b}/{INFO}") > 0 and self.dropped.get(b) != info["session"]}

    def drop(self, bridge: str) -> None:
        """Stop using this process of ``bridge`` (it stopped answering)."""
        self.dropped[bridge] = self.info[bridge]["session"]

    def available(self, requested: int) -> int:
        """How many of ``requested`` drones the live bridges can fly (waits for a first bridge, then
        briefly for enough of them)."""
        deadline = time.monotonic() + self.wait
        while not (live := self.bridges()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no training_bridge answered within {self.wait:.0f} s: start some (snnctl launch "
                                   "sil_train.launch.yaml, or ros2 run snn_controller training_bridge) in this ROS "
                                   "domain")
            time.sleep(0.5)
        settled = time.monotonic() + self.settle
        while sum(live.values()) < requested and time.monotonic() < settled:
            live = self.bridges()
        return min(requested, sum(live.values()))

    def __call__(self, kind: str, model, n: int, dt: float, dtype: torch.dtype = torch.float32, **options):
        """A :class:`RosEngine` of ``n`` drones on the live bridges, in name order."""
        shares, left = {}, n
        for bridge, capacity in self.bridges().items():
            if left > 0:
                shares[bridge] = min(capacity, left)
                left -= shares[bridge]
        if left > 0:
            raise RuntimeError(f"the training bridges serve {n - left} drones, {n} asked for")
        return RosEngine(self, shares, kind, model, dt, dtype, options)

    def _spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=max(end - time.monotonic(), 0.0))

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()


class RosEngine:
    """The engine interface (``reset``, ``step``, ``scale_dynamics``, ``state``, ``close``) over
    training bridges: drone i lives on the bridge whose share holds it."""

    def __init__(self, pool: BridgePool, shares: dict[str, int], kind: str, model, dt: float, dtype, options: dict):
        self.pool, self.kind, self.dtype, self.dt = pool, kind, dtype, dt
        self.n = sum(shares.values())
        node = pool.node
        self.slices, start = {}, 0
        for bridge, count in shares.items():
            self.slices[bridge] = slice(start, start + count)
            start += count
        self.pubs = {b: node.create_publisher(JointState, f"{b}/{REQUEST}", qos.COMMAND) for b in shares}
        self.replies: dict[tuple[str, str], JointState] = {}
        self.subs = [node.create_subscription(JointState, f"{b}/{REPLY}",
                                              lambda msg, b=b: self.replies.__setitem__((b, msg.header.frame_id), msg),
                                              qos.COMMAND) for b in shares]
        self.lost = np.zeros(self.n, dtype=bool)  # drones whose bridge stopped answering
        self.alive = set(shares)
        self._states = np.zeros((self.n, STATE_SIZE))
        self._state = None  # self._states as a DroneState
        self._id = 0
        # where a request's time goes: waiting for the replies, of which the slowest bridge's own work
        self.timing = {"requests": 0, "wait_s": 0.0, "bridge_s": 0.0}
        dtype_name = str(dtype).removeprefix("torch.")
        self._request("configure", {b: {"name": [engine_spec(kind, model, s.stop - s.start, dt, dtype_name, options)]}
                                    for b, s in self.slices.items()}, wait_for_match=True)

    @property
    def state(self):
        if self._state is None:  # unpacked once per reply, however often the environment reads it
            self._state = unpack_states(self._states, self.dtype)
        return self._state

    def reset(self, state, index=None):
        self._per_bridge("reset", self._rows(index), pack_states(state))
        return self.state

    def scale_dynamics(self, mass, inertia, thrust, motor_time_constant, index=None) -> None:
        rows = self._rows(index)
        scales = np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), rows.shape)
                           for v in (mass, inertia, thrust, motor_time_constant)], -1)
        self._per_bridge("scale", rows, scales)

    def step(self, action):
        actions = np.asarray(torch.as_tensor(action).double())
        self._request("step", {b: {"position": doubles(actions[s])} for b, s in self.slices.items()})
        return self.state

    def _rows(self, index) -> np.ndarray:
        """The drone indices an engine ``index`` (None, a mask or indices) selects."""
        return np.arange(self.n) if index is None else np.arange(self.n)[np.asarray(index)]

    def _per_bridge(self, kind: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Send each bridge the rows it holds (as its own drone indices)."""
        payloads = {}
        for b, s in self.slices.items():
            mine = (rows >= s.start) & (rows < s.stop)
            if mine.any():
                payloads[b] = {"velocity": doubles(rows[mine] - s.start), "position": doubles(values[mine])}
        self._request(kind, payloads)

    def _request(self, kind: str, payloads: dict[str, dict], wait_for_match: bool = False) -> None:
        """Send one request to each live bridge in ``payloads`` and wait for every reply (resend,
        then drop a bridge that stays silent)."""
        self._id += 1
        frame = f"{kind}:{self._id}"
        msgs = {}
        for b, fields in payloads.items():
            if b not in self.alive:
                continue
            msg = JointState()
            msg.header.frame_id = frame
            for key, value in fields.items():
                setattr(msg, key, value)
            msgs[b] = msg
        start = time.monotonic()
        if wait_for_match:  # a request right after the publishers were made: let them match first
            self._wait_for_subscribers(msgs, start)
        for b, msg in msgs.items():
            self.pubs[b].publish(msg)
        pending, last_send, bridge_s = set(msgs), start, 0.0
        while pending:
            self.pool.executor.spin_once(timeout_sec=0.05)
            for b in list(pending):
                reply = self.replies.pop((b, frame), None)
                if reply is None:
                    reply = self.replies.pop((b, "error:" + frame), None)
                if reply is None:
                    continue
                if reply.header.frame_id.startswith("error:"):
                    raise RuntimeError(f"training bridge {b} refused {kind}: {reply.name[0] if reply.name else '?'}")
                self._states[self.slices[b]] = np.frombuffer(reply.position, dtype=np.float64).reshape(-1, STATE_SIZE)
                self._state = None
                bridge_s = max(bridge_s, reply.velocity[0] if len(reply.velocity) else 0.0)
                pending.discard(b)
            now = time.monotonic()
            if pending and now - start > self.pool.timeout:
                for b in pending:
                    self._drop(b, f"no reply to {kind} within {self.pool.timeout:.1f} s")
                break
            if pending and now - last_send > self.pool.resend:
                for b in pending:
                    self.pubs[b].publish(msgs[b])
                last_send = now
        self.timing["requests"] += 1
        self.timing["wait_s"] += time.monotonic() - start
        self.timing["bridge_s"] += bridge_s

    def _wait_for_subscribers(self, msgs: dict, start: float) -> None:
        while any(self.pubs[b].get_subscription_count() == 0 for b in msgs) and \
                time.monotonic() - start < self.pool.timeout:
            self.pool.executor.spin_once(timeout_sec=0.05)

    def _drop(self, bridge: str, why: str) -> None:
        self.alive.discard(bridge)
        self.lost[self.slices[bridge]] = True
        self.pool.drop(bridge)
        self.pool.log(f"training bridge {bridge} dropped ({why}): its drones' episodes of this rollout are "
                      "discarded")

    def close(self) -> None:
        node = self.pool.node
        for pub in self.pubs.values():
            node.destroy_publisher(pub)
        for sub in self.subs:
            node.destroy_subscription(sub)
