"""Exports of trained models for use outside this package (``snnctl export``): the spiking actor
as a C99 module for on-board flight, and as a NIR graph (and back).

Imports only the layers before it (model files, drone models, the observation layout); no torch.
"""
