"""The topic names, written once: every node, the monitor, the recorder and the bag reader use this
table (plain names: the bag reader imports no ROS).

A drone <name> of the fleet file has its topics under its namespace: /<name>/odom, ... A node
that flies the one drone of its own namespace uses the bare names (relative topics).
"""

ODOM = "odom"  # nav_msgs/Odometry, sim_bridge -> controllers
POSE = "pose"  # geometry_msgs/PoseStamped, sim_bridge
IMU = "imu"  # sensor_msgs/Imu, sim_bridge
MOTOR_STATE = "motor_state"  # sensor_msgs/JointState, sim_bridge: the rotor speeds and the commands it flew
CMD_MOTORS_STAMPED = "cmd_motors_stamped"  # sensor_msgs/JointState, controllers -> sim_bridge
CMD_MOTORS = "cmd_motors"  # std_msgs/Float32MultiArray, unstamped, your controller -> sim_bridge
# sensor_msgs/JointState, CTBR controllers -> sim_bridge / crazyflie_bridge: collective thrust and body
# rates (conversions.ctbr_command_msg), the setpoint of the firmware's rate mode (docs/ctbr.md)
CMD_CTBR_STAMPED = "cmd_ctbr_stamped"
GOAL_POSE = "goal_pose"  # geometry_msgs/PoseStamped, mission_sequencer or you -> controllers
# crazyflie_bridge (real drones): the battery (sensor_msgs/BatteryState, pm.vbat and pm.state), the link
# quality (std_msgs/Float32, percent), and a motion-capture pose forwarded to the drone's estimator
BATTERY = "battery"
LINK_QUALITY = "link_quality"
MOCAP_POSE = "mocap_pose"  # geometry_msgs/PoseStamped, world frame, your motion capture -> crazyflie_bridge

# diagnostic_msgs/DiagnosticArray: sim_bridge's, crazyflie_bridge's and snn_policy's status per drone
DIAGNOSTICS = "/diagnostics"
MISSION_STATUS = "/mission/status"  # std_msgs/String (JSON), mission_sequencer

DRONE_TOPICS = (ODOM, POSE, IMU, MOTOR_STATE, CMD_MOTORS_STAMPED, CMD_MOTORS, CMD_CTBR_STAMPED, GOAL_POSE)
# What the simulated launch files record of each drone: the flight, without pose and imu (they
# repeat odom), which halves the recorder's load on a 2-core machine; motor_state makes it replayable.
FLIGHT_TOPICS = (ODOM, MOTOR_STATE, CMD_MOTORS_STAMPED, CMD_MOTORS, CMD_CTBR_STAMPED, GOAL_POSE)


def drone_topic(name: str, topic: str) -> str:
    """The absolute name of a drone's topic: /<name>/<topic>."""
    return f"/{name}/{topic}"
