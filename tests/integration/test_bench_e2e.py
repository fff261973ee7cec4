"""Smoke test of the end-to-end benchmark: ``e2e --tiny`` on two tiny families, in this process's
ComfyUI (CPU), then the table it printed and the JSON it wrote; and the ``python nodes/bench``
command line up to the benchmark's own help (its own process boots ComfyUI).

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests/integration/test_bench_e2e.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rettention

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ["wan14b_480p", "hunyuan_720p"]
# self-attention layers of the tiny models; HunyuanVideo adds its text refiner's 2 (text-only, left dense)
LAYERS = {"wan14b_480p": 2, "hunyuan_720p": 2}
SELF_CALLS = {"wan14b_480p": 2, "hunyuan_720p": 4}
MODE = {"D": "dense", "C": "capture", "S": "sparse"}
MEASURE_STEPS = 4


@pytest.fixture(scope="module")
def bench(comfy_env, tmp_path_factory):
    import io
    from contextlib import redirect_stdout

    from rettention_pack.nodes.bench import comfy_boot

    path = str(tmp_path_factory.mktemp("e2e") / "e2e.json")
    bench_e2e = comfy_boot.booted().pack_module("nodes.bench.e2e")
    printed = io.StringIO()
    with redirect_stdout(printed):
        bench_e2e.main(["--tiny", "--models", ",".join(MODELS), "--measure-steps", str(MEASURE_STEPS), "--json", path])
    with open(path) as f:
        return printed.getvalue(), json.load(f)


def test_table_lists_every_model_and_step_count(bench):
    stdout, data = bench
    assert "reduction" in stdout and "Whole-run seconds are computed" in stdout
    rows = [parts for parts in map(str.split, stdout.splitlines())
            if len(parts) > 1 and parts[0] in MODELS and parts[1].isdigit()]
    assert [(r[0], int(r[1])) for r in rows] == [("wan14b_480p", 50), ("wan14b_480p", 20), ("hunyuan_720p", 50)]
    assert all(r[-1] == "yes" for r in rows)                 # finite latents
    assert [r["model"] for r in data["results"]] == MODELS
    assert data["args"]["tiny"] and data["environment"]["comfyui"]


@pytest.mark.parametrize("model", MODELS)
def test_both_runs_ran_with_the_planned_modes(bench, model):
    _, data = bench
    (r,) = [r for r in data["results"] if r["model"] == model]
    assert "error" not in r, r.get("error")
    assert r["finite"] and r["size"] == "tiny"
    unpatched, patched = r["unpatched"], r["patched"]
    assert unpatched["modes"] == "D" * MEASURE_STEPS and unpatched["finite"]
    assert patched["plan"] == patched["modes"] == "DCSS" and patched["finite"]
    assert r["self_attention_layers"] == LAYERS[model]
    for step, mode in enumerate(patched["plan"]):
        assert patched["calls"][str(step)].get(MODE[mode]) == LAYERS[model], (step, patched["calls"])
    for run in (unpatched, patched):                          # batched CFG (or cfg 1): one forward a step
        assert all(a["self_calls"] == SELF_CALLS[model] for a in run["attention_seconds"])
    assert 0 < r["latent_rel_diff"] < 1                       # the patch changed the result, modestly
    assert r["stats_peak_bytes"] > 0 and patched["stats_peak_bytes"] == r["stats_peak_bytes"]
    assert r["peak_gpu_bytes"] == {"unpatched": None, "patched": None}     # CPU: no GPU memory to report
    for key in ("unpatched", "dense", "capture", "sparse"):
        assert r["step_seconds"][key] > 0 and 0 < r["attention_share"][key] <= 1


@pytest.mark.parametrize("model", MODELS)
def test_whole_runs_are_the_default_plan_times_the_measured_medians(bench, model):
    _, data = bench
    (r,) = [r for r in data["results"] if r["model"] == model]
    step = r["step_seconds"]
    assert [run["steps"] for run in r["runs"]] == {"wan14b_480p": [50, 20], "hunyuan_720p": [50]}[model]
    for run in r["runs"]:
        n = run["steps"]
        assert run["plan"] == rettention.Schedule().plan(rettention.run_progress(n), 0.0625).summary()
        unpatched = n * step["unpatched"] + r["unpatched"]["overhead_seconds"]
        patched = sum(step[MODE[c]] for c in run["plan"]) + r["patched"]["overhead_seconds"]
        assert run["unpatched_seconds"] == pytest.approx(unpatched)
        assert run["patched_seconds"] == pytest.approx(patched)
        assert run["reduction"] == pytest.approx(1 - patched / unpatched)


def test_command_line_boots_comfyui_and_reaches_the_benchmark():
    result = subprocess.run([sys.executable, os.path.join("nodes", "bench"), "--help"], cwd=REPO,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage: python nodes/bench" in result.stdout and "--measure-steps" in result.stdout
