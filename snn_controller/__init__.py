"""snn_controller: spiking neural network flight control for Crazyflie quadrotors.

The package root and everything outside ``snn_controller.ros`` is the ROS-free core:
it imports neither rclpy nor message types, so it runs and is tested anywhere.
"""

__version__ = "0.1.0"
