"""The simulator: drone models, the rigid-body state, rotations, the two engines (batched torch
and pybullet), the fleet behind the sim_bridge node, command replay and the crash supervisor.

Imports only :mod:`snn_controller.config`. Importing this package loads nothing heavy (no torch):
the deployment path reads drone models from here.
"""
