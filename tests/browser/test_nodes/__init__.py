"""Test-only nodes for the browser tests (tests/browser/): a tiny random-weight Wan 2.1 model and its
conditioning, so that a workflow built in the page can be queued and sampled on the CPU in seconds.

Loaded by ComfyUI as a custom node (the tests put a symlink to this folder in custom_nodes/). The
models come from the pack's own table (nodes/bench/model_zoo.py, size ``tiny``), as the integration
tests build them (tests/integration/tiny_models.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def _model_zoo():
    """The pack's nodes/bench/model_zoo.py: as a submodule of the pack ComfyUI loaded when there is one,
    else straight from its file (it imports only the standard library and torch)."""
    init = os.path.join(REPO, "__init__.py")
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == init and getattr(module, "__path__", None):
            return importlib.import_module(f"{name}.nodes.bench.model_zoo")
    path = os.path.join(REPO, "nodes", "bench", "model_zoo.py")
    spec = importlib.util.spec_from_file_location("_rettention_test_model_zoo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class RettentionTestTinyWan:
    """The tiny random-weight Wan 2.1 of the pack's model table (latent (1, 16, 3, 16, 16):
    EmptyHunyuanLatentVideo 128 x 128, length 9)."""

    CATEGORY = "rettention_test"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def build(self):
        return (_model_zoo().build_patcher("wan", "tiny", torch.float32, torch.device("cpu")),)


class RettentionTestTinyWanConditioning:
    """Random text conditioning of the tiny Wan's shapes (model_zoo.conditioning("wan", "tiny", seed=1))."""

    CATEGORY = "rettention_test"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def build(self):
        return _model_zoo().conditioning("wan", "tiny", seed=1)


NODE_CLASS_MAPPINGS = {
    "RettentionTestTinyWan": RettentionTestTinyWan,
    "RettentionTestTinyWanConditioning": RettentionTestTinyWanConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RettentionTestTinyWan": "Re-ttention test: tiny Wan 2.1",
    "RettentionTestTinyWanConditioning": "Re-ttention test: tiny Wan conditioning",
}
