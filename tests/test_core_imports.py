"""The layers' import rules, read from the code itself:

- the core (rettention/) and the kernels (kernels/) never import ComfyUI or the pack's nodes, and load
  nothing by a name or path built at run time (no importlib, no __import__);
- the kernels import neither the core nor the nodes (they know tensors, strides and block lists);
- nothing shipped imports the measuring code (rettention/bench, rettention/testbed, nodes/bench);
- a fresh interpreter imports the core, its benchmarks and its testbed with ComfyUI made unimportable.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server", "execution")
MEASURING = ("rettention/bench", "rettention/testbed", "nodes/bench")
LOADERS = ("import_module", "__import__", "spec_from_file_location", "module_from_spec", "exec_module")


def python_files(folder):
    for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(base, name), ROOT).replace(os.sep, "/")


def imported(path):
    """(absolute module name, or the package-relative target as '.' * level + name) of each import."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read(), path)
    package = os.path.dirname(path).split("/")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module
                continue
            base = package[: len(package) - node.level + 1]      # the folder the dots lead to
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                yield "/".join(base + name.split("."))


def loaders(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in LOADERS:
                yield f"{path}:{node.lineno} {name}"


CORE = [p for folder in ("rettention", "kernels") for p in python_files(folder)]
SHIPPED = ["__init__.py"] + [p for folder in ("nodes", "rettention", "kernels") for p in python_files(folder)
                             if not p.startswith(MEASURING)]


@pytest.mark.parametrize("path", CORE)
def test_core_and_kernels_name_no_host(path):
    bad = [name for name in imported(path) if name.split(".")[0].split("/")[-1] in HOST or "nodes/" in name]
    assert not bad, f"{path} imports {bad}"
    assert not list(loaders(path)), f"{path} loads modules by name: {list(loaders(path))}"


@pytest.mark.parametrize("path", list(python_files("kernels")))
def test_kernels_import_neither_core_nor_nodes(path):
    bad = [name for name in imported(path) if name.split("/")[0] in ("rettention", "nodes")
           or name.split(".")[0] in ("rettention", "nodes")]
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_code_imports_no_measuring_code(path):
    bad = [name for name in imported(path) if name.replace(".", "/").startswith(MEASURING)]
    assert not bad, f"{path} imports measuring code {bad}"


def test_a_fresh_interpreter_imports_the_core_with_comfy_unimportable():
    code = ("import sys\n"
            "class NoHost:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {HOST!r}: raise ImportError('host module ' + name)\n"
            "sys.meta_path.insert(0, NoHost())\n"
            "import rettention, rettention.calibration, rettention.torch_path, rettention.bench.report\n"
            "import rettention.testbed.evaluate, rettention.testbed.train\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HOST!r})\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
