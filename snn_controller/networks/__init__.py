"""Networks: the spiking actor in torch (training) and in numpy (deployment), MLP actors and critics.

Imports only :mod:`snn_controller.io` (model files). The numpy path imports no torch.
"""
