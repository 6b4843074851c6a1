"""A load for recorder tests: N drones' odometry at R Hz each, /<prefix><k>/odom, until stopped.

Message i of every drone is stamped i x 10 ms (header.stamp), so a reader can tell a gap or a
repeat. Usage: python load_publisher.py DRONES RATE_HZ [PREFIX]
"""

import signal
import sys

import rclpy
from nav_msgs.msg import Odometry
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE)


class Load(Node):
    def __init__(self, drones: int, rate: float, prefix: str):
        super().__init__("load_publisher")
        self.pubs = [self.create_publisher(Odometry, f"/{prefix}{k}/odom", QOS) for k in range(drones)]
        self.i = 0
        self.create_timer(1.0 / rate, self.tick)

    def tick(self):
        msg = Odometry()
        msg.header.frame_id = "world"
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self.i * 10_000_000, 10**9)
        for pub in self.pubs:
            pub.publish(msg)
        self.i += 1


def main():
    drones, rate = int(sys.argv[1]), float(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "d"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGINT and SIGTERM: KeyboardInterrupt
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = Load(drones, rate, prefix)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        print(f"load_publisher: published {node.i} per drone", flush=True)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
