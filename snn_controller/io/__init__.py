"""File formats: model files (safetensors weights + JSON manifest) and rosbag2 MCAP bags.

Imports nothing else of the package, so every layer can read and write files.
"""
