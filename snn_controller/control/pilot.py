"""The controllers' side of the stamp protocol (the sim_bridge's is :class:`~snn_controller.sim.fleet.FleetSimulator`)."""

from __future__ import annotations

import math

import numpy as np

from ..sim.rotations import quat_to_matrix
from ..sim.supervisor import idles_on_ground
from ..task.ctbr import CtbrScaling
from ..task.observation import OBS_DIM, Observation, assemble


class StampedPilot:
    """A controller's side of the stamp protocol, for one drone.

    ``controller`` (a controller of one drone, control/handover.py) flies it: the pilot hands it the
    observation of each new state and takes a non-finite answer for a refusal. :meth:`admit` decides whether a state is new: a state with the stamp last answered is a
    copy (lockstep re-sends a state whose answer it misses) and is not computed again: the node
    sends ``last_action`` again, since the first answer may have been lost (a command sent before
    the simulator's subscription matched). An older stamp means the simulation was reset (time
    went back): the controller is reset and the state answered. Until a goal arrives the pilot
    holds ``takeoff_height`` above the first finite position, which it takes for the ground: while
    the drone and its goal are both on the ground (:func:`~snn_controller.sim.supervisor.idles_on_ground`)
    the motors stay off (every motor -1, or for a controller of CTBR setpoints, ``ctbr``, thrust 0 and
    no rates), and the controller is reset for the next take-off.
    """

    def __init__(self, controller, takeoff_height: float = 0.5, ctbr: CtbrScaling | None = None):
        self.controller, self.takeoff_height = controller, takeoff_height
        self.idle_action = np.array((-1.0,) * 4 if ctbr is None else CtbrScaling.IDLE)
        self.goal, self.goal_yaw = None, 0.0
        self.last_stamp = None
        self.last_action = None  # the answer to the state of last_stamp (None: refused)
        self.duplicates = self.time_jumps = 0
        self.ground_z, self.idle = None, False

    def set_goal(self, goal, yaw: float) -> bool:
        """Take a goal; False (and the old goal kept) if it is not finite."""
        goal = np.asarray(goal, dtype=np.float64)
        if not (np.isfinite(goal).all() and math.isfinite(yaw)):
            return False
        self.goal, self.goal_yaw = goal, float(yaw)
        return True

    def admit(self, stamp_ns: int) -> bool:
        """True if the state with this stamp is new (to be computed with :meth:`act`)."""
        if stamp_ns == self.last_stamp:
            self.duplicates += 1
            return False
        if self.last_stamp is not None and stamp_ns < self.last_stamp:
            self.time_jumps += 1
            self.controller.reset()
        self.last_stamp = stamp_ns
        return True

    def act(self, state: dict[str, np.ndarray]):
        """The action for a state (odometry arrays: position, quaternion, velocity_world,
        angular_velocity_body), or None where the controller refuses it."""
        if self.ground_z is None and np.isfinite(state["position"]).all():
            # the first state is the ground, also when the first goal came before it (a mission's
            # goal on the ground, sent while the simulator was still starting)
            self.ground_z = state["position"][2]
            if self.goal is None:
                self.goal = state["position"] + np.array([0.0, 0.0, self.takeoff_height])
        target = self.goal if self.goal is not None else state["position"]
        if self.ground_z is not None:
            idle = bool(idles_on_ground(target[2] - self.ground_z, state["position"][2] - self.ground_z))
            if idle and not self.idle:
                self.controller.reset()
            self.idle = idle
            if idle:
                self.last_action = self.idle_action.copy()
                return self.last_action
        actor = assemble(np.empty((1, OBS_DIM)), state["position"] - target, quat_to_matrix(state["quaternion"]),
                         state["velocity_world"], state["angular_velocity_body"])
        action = self.controller(Observation(actor=actor, target_yaw=np.array([self.goal_yaw])))[0]
        self.last_action = action if np.isfinite(action).all() else None
        return self.last_action
