"""Shared by every test: the import roots.

- The repository root is on sys.path, so ``rettention`` (the core) and ``kernels`` import as top-level
  packages, as the benchmarks use them.
- The repository is also loaded as one package, ``rettention_pack``, from its folder, the way ComfyUI
  loads a custom node. Outside ComfyUI its entry point registers nothing, and the parts of nodes/ that
  need no ComfyUI (``rettention_pack.nodes.families``, ``.run_state``, ``.forward``, ...) can be tested
  as they ship, relative imports and all.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = "rettention_pack"
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _load_pack():
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    return pack


_load_pack()
