"""A ComfyUI server for the browser tests: its own process, 127.0.0.1, a free port, --cpu, a temporary
base directory whose custom_nodes/ holds symlinks to this repository and to the test-only nodes
(tests/browser/test_nodes), an in-memory database. Started by tests/browser/launch_comfyui.py.

    server = ComfyServer(comfyui_path, workdir).start()     # waits (bounded) until it answers
    server.url, server.get_json("/object_info"), server.log_tail()
    server.stop()
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PACK_DIR_NAME = "comfyui-rettention"        # the folder name ComfyUI serves the pack's web/ under
TEST_NODES_DIR_NAME = "rettention_test_nodes"
START_TIMEOUT_S = 180
# the user settings the page starts with: no first-run templates dialog, no minimap over the canvas
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
    "Comfy.NodeBadge.NodeIdBadgeMode": "None",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FRONTEND_PACKAGES = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")


def pinned_versions(comfyui_path: str) -> dict[str, str]:
    """The versions of the front-end packages the ComfyUI tree's requirements.txt pins (``==``)."""
    try:
        with open(os.path.join(comfyui_path, "requirements.txt"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    pins = {}
    for name in FRONTEND_PACKAGES:
        match = re.search(rf"^{re.escape(name)}==(\S+)", text, re.M)
        if match:
            pins[name] = match.group(1)
    return pins


def installed_version(name: str, site: str | None = None) -> str | None:
    """The version of ``name`` the server will import: from ``site`` (a folder put first on its
    sys.path) when that holds it, else the environment's."""
    wanted = name.replace("-", "_").lower()
    if site:
        try:
            for entry in os.listdir(site):
                match = re.match(r"(.+)-([^-]+)\.dist-info$", entry)
                if match and match.group(1).replace("-", "_").lower() == wanted:
                    return match.group(2)
        except OSError:
            pass
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def frontend_mismatches(comfyui_path: str, site: str | None = None) -> list[str]:
    """'name: ComfyUI pins X, the server would import Y' for each front-end package the server would
    import in another version than the ComfyUI tree pins. The front end itself must be there; the
    templates and the embedded docs may be missing (ComfyUI logs an error and serves none), but another
    version of them can keep ComfyUI from starting (0.3.64 with 0.33.0's comfyui-workflow-templates)."""
    out = []
    for name, pinned in pinned_versions(comfyui_path).items():
        have = installed_version(name, site)
        if have != pinned and (have is not None or name == "comfyui-frontend-package"):
            out.append(f"{name}: ComfyUI pins {pinned}, the server would import {have or 'none'}")
    return out


class ComfyServer:
    def __init__(self, comfyui_path: str, workdir: str, frontend_site: str | None = None):
        """``frontend_site``: a folder put first on the server's sys.path, holding the front-end packages
        (comfyui-frontend-package, -workflow-templates, -embedded-docs) that the ComfyUI tree pins when
        the environment has other versions (``pip install --no-deps --target DIR ...``)."""
        self.comfyui_path = os.path.abspath(comfyui_path)
        self.workdir = workdir
        self.frontend_site = os.path.abspath(frontend_site) if frontend_site else None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = os.path.join(workdir, "comfy_base")
        self.log_path = os.path.join(workdir, "comfyui_server.log")
        self.process: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        custom = os.path.join(self.base, "custom_nodes")
        os.makedirs(custom, exist_ok=True)
        for name, target in ((PACK_DIR_NAME, REPO), (TEST_NODES_DIR_NAME, os.path.join(HERE, "test_nodes"))):
            link = os.path.join(custom, name)
            if not os.path.lexists(link):
                os.symlink(target, link, target_is_directory=True)
        for sub in ("models", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        settings = os.path.join(self.base, "user", "default", "comfy.settings.json")
        os.makedirs(os.path.dirname(settings), exist_ok=True)
        with open(settings, "w", encoding="utf-8") as f:
            json.dump(SETTINGS, f, indent=1)

    def command(self) -> list[str]:
        cmd = [sys.executable, os.path.join(HERE, "launch_comfyui.py"), self.comfyui_path,
               "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", self.base,
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        return cmd

    def start(self) -> "ComfyServer":
        self._prepare()
        env = dict(os.environ)
        env["PYTHONDONTWRITEBYTECODE"] = "1"         # the ComfyUI tree may be read-only
        env["PYTHONUNBUFFERED"] = "1"
        env["RETTENTION_TORCH_PATH"] = "1"          # the pack's PyTorch path where the kernels cannot run (CPU)
        env.pop("COMFYUI_PATH", None)
        if self.frontend_site:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.frontend_site, env.get("PYTHONPATH")) if p)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:                                  # bounded: START_TIMEOUT_S, one request every 0.5 s
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                info = self.get_json("/object_info/RettentionSparsitySchedule", timeout=5)
                if "RettentionSparsitySchedule" in info:
                    return self
                raise RuntimeError(f"ComfyUI started without the pack's nodes:\n{self.log_tail()}")
            except (urllib.error.URLError, ConnectionError, socket.timeout, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    # --- helpers -----------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no server log)"

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""
