"""Controllers: the cascaded PID (guide and failsafe), the guide -> network handover with its
failsafe, and the controllers built from model files and PID gains files.

Imports :mod:`snn_controller.sim`, :mod:`snn_controller.task`, :mod:`snn_controller.networks`,
:mod:`snn_controller.io`. The PID and the handover are numpy only.
"""
