"""Model files in other formats: the spiking actor as a NIR graph (and back).

Imports only :mod:`snn_controller.io` (model files) and the layers below it.
"""
