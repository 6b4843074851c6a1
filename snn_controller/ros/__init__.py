"""ROS 2 shell around the core: nodes convert messages to arrays and call the core.

Importing this package sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless the caller set a
range: DDS discovery stays on this machine by default.
"""

import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

# Node executables: console_scripts name -> module with a main(). setup.py and the launch
# runner both read this table, so a launch file can only name nodes that are installed.
NODES = {
    "sim_bridge": "snn_controller.ros.sim_bridge",
    "pid_controller": "snn_controller.ros.pid_controller",
    "snn_policy": "snn_controller.ros.snn_policy",
    "flight_recorder": "snn_controller.ros.flight_recorder",
    "trainer": "snn_controller.ros.trainer",
    "mission_sequencer": "snn_controller.ros.mission_sequencer",
    "training_bridge": "snn_controller.ros.training_bridge",
    "crazyflie_bridge": "snn_controller.ros.crazyflie_bridge",
}
