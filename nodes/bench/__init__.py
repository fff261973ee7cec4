"""Measuring code that runs inside ComfyUI (not part of a sampling run; nothing shipped imports it):
the end-to-end benchmark (e2e.py), random-weight models of ComfyUI's own classes (model_zoo.py) and
the helper that starts ComfyUI in-process and loads the pack (comfy_boot.py).

    python nodes/bench --comfyui /path/to/ComfyUI --models wan14b_720p      # see --help
"""
