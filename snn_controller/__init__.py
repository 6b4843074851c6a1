"""snn_controller: spiking neural network flight control for Crazyflie quadrotors.

The parts, each importing only from those before it (docs/design.md):

    config  ->  sim  ->  task  ->  io  ->  networks  ->  control  ->  train  ->  cli, bench, ros

config: strict YAML loading; sim: drone models and the two engines; task: the flight task, its
observation and environments; io: model files and bags; networks: the spiking actor (torch and
numpy) and MLPs; control: the PID, the handover and the failsafe; train: TD3BC + JSRL; ros: the
nodes. Everything outside ``snn_controller.ros`` is the ROS-free core: it imports neither rclpy
nor message types, so it runs and is tested anywhere.
"""

__version__ = "0.1.0"
