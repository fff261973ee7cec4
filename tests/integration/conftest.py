"""Integration tests inside a real ComfyUI (tiny random-weight models, ComfyUI's own samplers).

Run them with a ComfyUI source tree (v0.3.60 or later) whose requirements are installed:

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests

Without COMFYUI_PATH every test here is skipped (with the reason printed by ``pytest -rs``).
ComfyUI runs on the CPU (``--cpu``). PyPI's torchvision is a CUDA build that cannot import next to
CPU-only torch; the ``torchvision::nms`` / ``qnms`` schemas are then defined so ComfyUI starts.
The pack is loaded the way ComfyUI loads custom nodes (``nodes.load_custom_node``), so the tests
use the same module objects ComfyUI does. Both are done by nodes/bench/comfy_boot.py, which the
end-to-end benchmark uses too. The helpers the tests share are in tiny_models.py.
"""
from __future__ import annotations

import os

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
# ComfyUI runs on the CPU here, where the pack leaves attention dense; the tests run its PyTorch path.
os.environ["RETTENTION_TORCH_PATH"] = "1"
SKIP_REASON = None
if not COMFYUI_PATH:
    SKIP_REASON = "COMFYUI_PATH is not set: integration tests need a real ComfyUI source tree"
elif not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "model_patcher.py")):
    SKIP_REASON = f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI source tree"


def pytest_collection_modifyitems(config, items):
    if SKIP_REASON is None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(marker)


def pytest_report_header(config):
    return f"Re-ttention integration: {SKIP_REASON or 'ComfyUI at ' + COMFYUI_PATH}"


def boot_comfy():
    """ComfyUI (CPU, with its extra nodes) and this pack, booted once by nodes/bench/comfy_boot.py;
    returns (ComfyUI's nodes module, the pack)."""
    from rettention_pack.nodes.bench import comfy_boot

    booted = comfy_boot.boot(COMFYUI_PATH, cpu=True, extra_nodes=True)
    return booted.nodes, booted.pack


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    nodes, pack = boot_comfy()
    import folder_paths

    stats_dir = str(tmp_path_factory.mktemp("rettention_models"))
    folder_paths.folder_names_and_paths["rettention"] = ([stats_dir], {".safetensors"})
    import comfyui_version

    return {"nodes": nodes, "pack": pack, "stats_dir": stats_dir, "version": comfyui_version.__version__}
