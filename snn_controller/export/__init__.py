"""Exports of trained models for use outside this package (``snnctl export``).

Imports only the layers before it (model files, drone models, the observation layout); no torch.
"""
