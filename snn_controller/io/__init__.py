"""File formats: model files (safetensors weights + JSON manifest) and rosbag2 MCAP bags.

Imports only the task's observation layout (the layout model files record), so every layer above the task
can read and write files.
"""
