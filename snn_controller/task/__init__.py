"""The flight task (docs/task.md): its specification (reward, curriculum, starts, targets, latency,
randomisation), the observation layout, the environments on either engine and the missions.

Imports :mod:`snn_controller.sim`, :mod:`snn_controller.config`.
"""
