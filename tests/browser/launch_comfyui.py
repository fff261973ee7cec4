"""Start ComfyUI's server (its main.py) in this process, for the browser tests.

    python tests/browser/launch_comfyui.py COMFYUI_PATH [ComfyUI's own arguments ...]

Before main.py runs, the environment gaps that nodes/bench/comfy_boot.py bridges for the in-process
integration tests are bridged the same way (a CUDA torchvision next to CPU torch, a torchaudio whose
library does not load, PyAV missing), so ComfyUI starts on a CPU-only venv. Test code only.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _comfy_boot():
    path = os.path.join(REPO, "nodes", "bench", "comfy_boot.py")
    spec = importlib.util.spec_from_file_location("_rettention_browser_comfy_boot", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up there
    spec.loader.exec_module(module)      # imports only the standard library and torch
    return module


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    comfyui = os.path.abspath(argv[0])
    boot = _comfy_boot()
    boot._bridge_torchvision()
    boot._bridge_pyav()
    boot._bridge_torchaudio()
    sys.path.insert(0, comfyui)
    sys.argv = [os.path.join(comfyui, "main.py"), *argv[1:]]
    runpy.run_path(os.path.join(comfyui, "main.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
