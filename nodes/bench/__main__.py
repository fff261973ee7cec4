"""``python nodes/bench [--comfyui PATH] ...``: boot ComfyUI (on the CPU when there is no CUDA GPU),
load the pack as ComfyUI loads custom nodes, and run its end-to-end benchmark (e2e.py).

Run as a script (the folder), so it is not the pack's ``nodes`` package: ComfyUI has a top-level
module of that name. ``comfy_boot`` is this folder's own module, next to this file.
"""
import os
import sys

import comfy_boot


def help_without_comfyui() -> str:
    """The benchmark's own description (e2e.py's docstring, read as text: importing it needs ComfyUI)."""
    import ast

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e.py"), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    return (f"{doc}\n\nGive the ComfyUI source tree (--comfyui PATH or $COMFYUI_PATH) to run it; with it, "
            "--help also lists every option.")


def main(argv: list[str]) -> None:
    comfyui_path, rest = comfy_boot.split_comfyui_path(argv)
    problem = comfy_boot.check_comfyui_path(comfyui_path)
    if problem and ("-h" in rest or "--help" in rest):
        print(help_without_comfyui())
        return
    if problem:
        sys.exit(f"python nodes/bench: {problem}")
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:             # --tiny on a CPU measures the pack's PyTorch path (it leaves attention dense there)
        os.environ.setdefault("RETTENTION_TORCH_PATH", "1")
    booted = comfy_boot.boot(comfyui_path, cpu=cpu)
    booted.pack_module("nodes.bench.e2e").main(rest)


main(sys.argv[1:])
