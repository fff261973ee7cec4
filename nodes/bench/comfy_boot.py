"""Start ComfyUI inside this Python process and load this pack the way ComfyUI loads custom nodes.

Measuring and test code, not part of the pack: used by the end-to-end benchmark's command
(``python nodes/bench``, nodes/bench/__main__.py) and by the integration tests
(tests/integration/conftest.py). It imports only the standard library and torch, and nothing from
ComfyUI until :func:`boot` runs; the pack's own modules exist only once ComfyUI has loaded the pack
(its folder name is the package name ComfyUI gives it), so they are reached through the result.

    booted = boot("/path/to/ComfyUI", cpu=True)     # idempotent: a second call returns the first result
    booted.nodes                                    # ComfyUI's nodes module (NODE_CLASS_MAPPINGS, ...)
    booted.pack_module("nodes.run_state")           # a module of the pack, as ComfyUI loaded it

Two gaps of the environments we run in are bridged, each only when it is there:

- PyPI's torchvision next to CPU-only torch fails at import (``torchvision::nms does not exist``):
  the ``torchvision::nms`` / ``qnms`` schemas are defined, then ComfyUI imports torchvision again.
- PyAV (``av``, ~40 MB of FFmpeg) missing, or PyPI's torchaudio next to CPU-only torch failing to load
  its library (ComfyUI 0.33 imports it at module level for its audio models): ComfyUI uses them only
  for audio and video files and audio models, which nothing here does. A stub package stands in for
  each (submodules included); anything that reaches for one gets an ImportError that says so.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BOOTED: dict = {}
_KEEP: list = []          # torch.library.Library objects must stay alive for their definitions to hold


@dataclass(frozen=True)
class Booted:
    comfyui_path: str
    cpu: bool
    nodes: types.ModuleType          # ComfyUI's nodes module
    pack: types.ModuleType           # this pack, as loaded by nodes.load_custom_node

    def pack_module(self, name: str) -> types.ModuleType:
        """``pack_module("nodes.run_state")``: that module of the loaded pack (imported if needed)."""
        return importlib.import_module(f"{self.pack.__name__}.{name}")


def split_comfyui_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--comfyui PATH`` (or ``--comfyui=PATH``) taken out of ``argv``; default ``$COMFYUI_PATH``."""
    rest, path, i = [], os.environ.get("COMFYUI_PATH"), 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--comfyui" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--comfyui="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def check_comfyui_path(path: str | None) -> str | None:
    """Why ``path`` is not a ComfyUI source tree, or None when it is."""
    if not path:
        return "no ComfyUI source tree given (--comfyui PATH or COMFYUI_PATH)"
    if not os.path.isfile(os.path.join(path, "comfy", "model_patcher.py")):
        return f"{path} is not a ComfyUI source tree (no comfy/model_patcher.py)"
    return None


def boot(comfyui_path: str, cpu: bool = False, extra_nodes: bool = False) -> Booted:
    """Import ComfyUI from ``comfyui_path`` (``--cpu`` when ``cpu``), optionally its built-in extra
    nodes (comfy_extras: ModelSamplingSD3, FluxGuidance, ...), and load this pack as a custom node.
    Once per process: later calls return the first result (ComfyUI's modules are process-global)."""
    if "booted" in _BOOTED:
        booted = _BOOTED["booted"]
        if extra_nodes and not _BOOTED.get("extra_nodes"):
            _load_extra_nodes(booted.nodes)
        return booted
    problem = check_comfyui_path(comfyui_path)
    if problem:
        raise RuntimeError(problem)
    comfyui_path = os.path.abspath(comfyui_path)
    _bridge_torchvision()
    _bridge_pyav()
    _bridge_torchaudio()
    if comfyui_path not in sys.path:
        sys.path.insert(0, comfyui_path)
    _parse_comfy_args(["--cpu"] if cpu else [])
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import nodes

    if extra_nodes:
        _load_extra_nodes(nodes)
    ok = asyncio.run(nodes.load_custom_node(PACK_ROOT, module_parent="custom_nodes"))
    if not ok:
        raise RuntimeError(f"ComfyUI could not load the pack at {PACK_ROOT} (see the log above)")
    pack = sys.modules[PACK_ROOT.replace(".", "_x_")]
    booted = Booted(comfyui_path, cpu, nodes, pack)
    _BOOTED["booted"] = booted
    return booted


def booted() -> Booted:
    """The result of the :func:`boot` that already ran in this process."""
    if "booted" not in _BOOTED:
        raise RuntimeError("ComfyUI has not been booted in this process (comfy_boot.boot)")
    return _BOOTED["booted"]


def _load_extra_nodes(nodes) -> None:
    asyncio.run(nodes.init_builtin_extra_nodes())
    _BOOTED["extra_nodes"] = True


def _parse_comfy_args(flags: list[str]) -> None:
    argv = sys.argv
    sys.argv = [argv[0], *flags]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses the flags)
    finally:
        sys.argv = argv


def _bridge_torchvision() -> None:
    """Define torchvision's nms/qnms schemas when its compiled ops cannot load (CPU torch next to a
    CUDA torchvision); a working torchvision is left alone."""
    import torch

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:     # already defined
        return
    _KEEP.append(lib)


class _Missing(types.ModuleType):
    """Stands in for a package that cannot be imported here: any name is a class that refuses to be used."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise ImportError(f"{self.__name__.split('.')[0]} cannot be imported here: "
                              f"{self.__name__}.{name} is unavailable")
        return type(name, (), {"__new__": refuse, "__module__": self.__name__})


class _StubFinder:
    """Imports of ``root`` and its submodules get :class:`_Missing` packages."""

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, name, path=None, target=None):
        if name == self.root or name.startswith(self.root + "."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Missing(spec.name)

    def exec_module(self, module):
        pass


def _stub(root: str) -> None:
    for name in [m for m in sys.modules if m == root or m.startswith(root + ".")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _StubFinder(root))


def _bridge_pyav() -> None:
    if "av" not in sys.modules and importlib.util.find_spec("av") is None:
        _stub("av")


def _bridge_torchaudio() -> None:
    if importlib.util.find_spec("torchaudio") is None:
        return
    try:
        import torchaudio  # noqa: F401
    except (OSError, ImportError, RuntimeError):    # its compiled library does not load beside this torch
        _stub("torchaudio")
