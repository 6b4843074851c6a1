"""Quality-of-service profiles, chosen once.

STATE: odometry, pose, IMU at the control rate, as published, and for subscribers that keep a
history (recorder, monitor, tests). Reliable with a short queue, so lockstep simulation does not
lose a step and best-effort subscribers (rviz, sensor_data) still match.
LATEST_STATE: what a controller subscribes its state with. Depth 1 (KEEP_LAST 1): a controller
that fell behind answers the newest state, not a queue of old ones in order (each answer would be
older than the last, and the command age would grow with the queue). Reliable, so lockstep, which
sends one state per step and waits for its answer, loses nothing.
COMMAND: motor commands. Reliable, short queue: the simulator ignores a command that answers an
older state than one it already has (stamped commands), so a late one costs nothing.
OBSERVER: what an observer that keeps every state subscribes with (the monitor): STATE with a deep
queue, so an observer on a busy machine falls behind instead of losing states.
LATCHED: goals and descriptions, transient-local so a late subscriber gets the last one.
MOCAP: what crazyflie_bridge subscribes motion-capture poses with: best effort (it matches reliable and
best-effort publishers alike; motion-capture nodes often publish best effort), newest only.
"""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

STATE = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
OBSERVER = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
LATEST_STATE = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
COMMAND = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
CLOCK = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
MOCAP = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                   durability=DurabilityPolicy.VOLATILE)
