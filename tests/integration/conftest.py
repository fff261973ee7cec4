"""Integration tests inside a real ComfyUI (tiny random-weight models, ComfyUI's own samplers).

Run them with a ComfyUI source tree (v0.3.60 or later) whose requirements are installed:

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests

Without COMFYUI_PATH every test here is skipped (with the reason printed by ``pytest -rs``).
ComfyUI runs on the CPU (``--cpu``). PyPI's torchvision is a CUDA build that cannot import next to
CPU-only torch; the ``torchvision::nms`` / ``qnms`` schemas are defined first so ComfyUI starts.
The pack is loaded the way ComfyUI loads custom nodes (``nodes.load_custom_node``), so the tests
use the same module objects ComfyUI does.
"""
from __future__ import annotations

import asyncio
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
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


_COMFY = {}


def _define_torchvision_ops():
    import torch

    if "torchvision_lib" in _COMFY:
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:     # already defined (a working torchvision was imported first)
        return
    _COMFY["torchvision_lib"] = lib


def boot_comfy():
    """Import ComfyUI (CPU) once and load this pack as a custom node; returns (nodes module, pack)."""
    if "pack" in _COMFY:
        return _COMFY["nodes"], _COMFY["pack"]
    _define_torchvision_ops()
    if COMFYUI_PATH not in sys.path:
        sys.path.insert(0, COMFYUI_PATH)
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu)
    finally:
        sys.argv = argv
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import nodes

    asyncio.run(nodes.init_builtin_extra_nodes())      # comfy_extras (ModelSamplingSD3, FluxGuidance, ...)
    ok = asyncio.run(nodes.load_custom_node(REPO, module_parent="custom_nodes"))
    assert ok, "ComfyUI could not load the pack"
    pack = sys.modules[REPO.replace(".", "_x_")]
    _COMFY.update(nodes=nodes, pack=pack)
    return nodes, pack


@pytest.fixture(scope="session")
def comfy_env(tmp_path_factory):
    nodes, pack = boot_comfy()
    import folder_paths

    stats_dir = str(tmp_path_factory.mktemp("rettention_models"))
    folder_paths.folder_names_and_paths["rettention"] = ([stats_dir], {".safetensors"})
    return {"nodes": nodes, "pack": pack, "stats_dir": stats_dir}
