"""Training (docs/training.md): TD3BC + JSRL on sequences with a spiking actor, and its baselines.

Imports everything below it (sim, task, networks, control, io); nothing imports it but the CLI
and the trainer node.
"""
