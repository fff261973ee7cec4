"""The end-to-end benchmark's command line (``python nodes/bench``) without a GPU or ComfyUI: its
ComfyUI path handling."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_comfyui_path_is_taken_out_of_the_arguments(monkeypatch):
    from rettention_pack.nodes.bench import comfy_boot as boot

    monkeypatch.setenv("COMFYUI_PATH", "/from/env")
    assert boot.split_comfyui_path(["--models", "a,b"]) == ("/from/env", ["--models", "a,b"])
    assert boot.split_comfyui_path(["--comfyui", "/x", "--tiny"]) == ("/x", ["--tiny"])
    assert boot.split_comfyui_path(["--tiny", "--comfyui=/y"]) == ("/y", ["--tiny"])
    monkeypatch.delenv("COMFYUI_PATH")
    assert boot.split_comfyui_path([]) == (None, [])
    assert "no ComfyUI source tree" in boot.check_comfyui_path(None)
    assert "not a ComfyUI source tree" in boot.check_comfyui_path(ROOT)


def test_e2e_without_comfyui_says_what_is_missing():
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    result = subprocess.run([sys.executable, os.path.join("nodes", "bench"), "--tiny"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no ComfyUI source tree given (--comfyui PATH or COMFYUI_PATH)" in result.stderr
    assert not any(name in result.stderr for name in ("Traceback", "comfy.model_management"))


def test_help_without_comfyui_is_help():
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    result = subprocess.run([sys.executable, os.path.join("nodes", "bench"), "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "End-to-end benchmark" in result.stdout and "--measure-steps" in result.stdout
    assert "--comfyui PATH" in result.stdout and "Traceback" not in result.stderr
