"""``python nodes/bench [--comfyui PATH] ...``: boot ComfyUI (on the CPU when there is no CUDA GPU),
load the pack as ComfyUI loads custom nodes, and run its end-to-end benchmark (e2e.py).

Run as a script (the folder), so it is not the pack's ``nodes`` package: ComfyUI has a top-level
module of that name. ``comfy_boot`` is this folder's own module, next to this file.
"""
import sys

import comfy_boot


def main(argv: list[str]) -> None:
    comfyui_path, rest = comfy_boot.split_comfyui_path(argv)
    problem = comfy_boot.check_comfyui_path(comfyui_path)
    if problem:
        sys.exit(f"python nodes/bench: {problem}")
    import torch

    booted = comfy_boot.boot(comfyui_path, cpu=not torch.cuda.is_available())
    booted.pack_module("nodes.bench.e2e").main(rest)


main(sys.argv[1:])
