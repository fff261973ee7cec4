"""Calibrate Stats -> stats file -> Patch Model, node errors, and the example workflows, in a real ComfyUI.

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests
"""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tiny_models import baseline, build, close, observe, patch, sample

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def node(env, name):
    return env["nodes"].NODE_CLASS_MAPPINGS[name]


def calibrate(env, name, file_name):
    patched = node(env, "RettentionCalibrateStats").execute(build(name)[0], file_name, 0.25, "auto", 0.04).args[0]
    reports = observe(env, patched)
    out = sample(patched, name)
    return out, reports[0]


def test_calibrate_then_patch(comfy_env):
    out, report = calibrate(comfy_env, "flux", "tiny_flux")
    path = os.path.join(comfy_env["stats_dir"], "tiny_flux.safetensors")
    assert report["calibration_written"] == path and os.path.isfile(path)
    assert torch.isfinite(out).all()
    assert report["bytes_held"] == 0
    # calibration runs dense attention: the output is the unpatched model's
    assert close(out, baseline("flux"))
    calibration = sys.modules[comfy_env["pack"].__name__ + ".rettention.calibration"]
    data = calibration.load_stats_file(path)
    assert data.metadata["family"] == "flux" and data.layers == 2 and data.heads == 2
    assert data.w_sigma.shape == (2, 2, 8) and torch.isfinite(torch.from_numpy(data.error)).all()
    # the file is listed and used
    options = node(comfy_env, "RettentionPatchModel").GET_SCHEMA().inputs
    listed = next(i for i in options if i.id == "stats_file").options
    assert "tiny_flux.safetensors" in listed
    patched = patch(comfy_env, build("flux")[0], stats_file="tiny_flux.safetensors", error_threshold=10.0)
    config = patched.model_options["transformer_options"]["rettention"]
    assert config.schedule.weight.name == "calibrated" and config.calibration is not None
    reports = observe(comfy_env, patched)
    result = sample(patched, "flux")
    assert torch.isfinite(result).all() and reports[0]["counts"][3]["sparse"] == 2
    # a threshold below every recorded error keeps every layer dense
    patched = patch(comfy_env, build("flux")[0], stats_file="tiny_flux.safetensors", error_threshold=0.0)
    reports = observe(comfy_env, patched)
    sample(patched, "flux")
    assert all("sparse" not in c for c in reports[0]["counts"].values())
    # Load Stats gives the same thing through the RETTENTION_STATS socket
    stats = node(comfy_env, "RettentionLoadStats").execute("tiny_flux.safetensors").args[0]
    assert node(comfy_env, "RettentionPatchModel").execute(
        build("flux")[0], 0.25, "auto", "auto", False, "none", 10.0, stats=stats).args[0] is not None


def test_stats_file_errors(comfy_env):
    stats_dir = comfy_env["stats_dir"]
    with open(os.path.join(stats_dir, "corrupt.safetensors"), "wb") as f:
        f.write(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="stats_file"):
        patch(comfy_env, build("flux")[0], stats_file="corrupt.safetensors")
    with pytest.raises(ValueError, match="stats_file"):
        patch(comfy_env, build("flux")[0], stats_file="missing.safetensors")
    if not os.path.isfile(os.path.join(stats_dir, "tiny_flux.safetensors")):
        calibrate(comfy_env, "flux", "tiny_flux")
    with pytest.raises(ValueError, match="recorded on a 'flux' model"):
        patch(comfy_env, build("qwen_image")[0], stats_file="tiny_flux.safetensors")
    schedule = node(comfy_env, "RettentionSparsitySchedule").execute(0.25, 1.0, 5, "", "calibrated", 0.04).args[0]
    with pytest.raises(ValueError, match="stats file"):
        patch(comfy_env, build("flux")[0], schedule=schedule)


def test_bad_inputs_name_the_input(comfy_env):
    with pytest.raises(ValueError, match="density"):
        patch(comfy_env, build("flux")[0], density=0.0)
    with pytest.raises(ValueError, match="mask"):
        patch(comfy_env, build("flux")[0], mask="diagonal")
    schedule = node(comfy_env, "RettentionSparsitySchedule")
    with pytest.raises(ValueError, match="density_steps"):
        schedule.execute(0.25, 1.0, 5, "half:0.1", "rho", 0.04)
    with pytest.raises(ValueError, match="end_percent"):
        schedule.execute(0.5, 0.2, 5, "", "rho", 0.04)
    with pytest.raises(ValueError, match="name"):
        node(comfy_env, "RettentionCalibrateStats").execute(build("flux")[0], "../x", 0.25, "auto", 0.04)


def test_unsupported_head_dim_goes_dense(comfy_env):
    import tiny_models

    patcher = tiny_models.from_config("Flux", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32,
                                                   context_in_dim=64, hidden_size=96, mlp_ratio=2.0, num_heads=3,
                                                   depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
                                                   patch_size=2, qkv_bias=True, guidance_embed=False))
    _, shape, pos, neg = build("flux")
    import comfy.sample
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    base = comfy.sample.sample(patcher, noise, 8, 3.0, "euler", "simple", pos, neg, torch.zeros(shape), seed=0,
                               disable_pbar=True)
    patched = patch(comfy_env, patcher)
    reports = observe(comfy_env, patched)
    out = comfy.sample.sample(patched, noise, 8, 3.0, "euler", "simple", pos, neg, torch.zeros(shape), seed=0,
                              disable_pbar=True)
    assert torch.equal(out, base)                        # head dim 32: dense everywhere, same result
    assert all("sparse" not in c and "capture" not in c for c in reports[0]["counts"].values())


def test_where_the_kernels_cannot_run_attention_stays_dense_and_says_why(comfy_env, monkeypatch, caplog):
    import logging

    monkeypatch.delenv("RETTENTION_TORCH_PATH")                # ComfyUI on the CPU, as a user would run it
    patched = patch(comfy_env, build("wan")[0])
    reports = observe(comfy_env, patched)
    with caplog.at_level(logging.INFO, logger="rettention"):
        out = sample(patched, "wan")
    assert torch.equal(out, baseline("wan"))
    summary = reports[0]["summary"]
    assert summary["status"] == "finished" and summary["calls"]["capture"] == summary["calls"]["sparse"] == 0
    assert any("cannot run on cpu" in reason for reason in summary["dense_reasons"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("cannot run on cpu" in m for m in warnings) == 1                  # one line when it happens
    assert any("all attention dense (" in r.getMessage() and "cannot run on cpu" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)            # and the run's summary says why


def test_the_run_summary_and_log_say_when_a_run_was_cancelled(comfy_env, caplog):
    import logging

    import comfy.model_management
    import comfy.sample

    patched = patch(comfy_env, build("wan")[0])
    reports = observe(comfy_env, patched)
    _, shape, pos, neg = build("wan")

    def cancel(step, x0, x, total):
        if step == 4:
            raise comfy.model_management.InterruptProcessingException()

    with caplog.at_level(logging.INFO, logger="rettention"), \
            pytest.raises(comfy.model_management.InterruptProcessingException):
        comfy.sample.sample(patched, torch.randn(shape), 8, 3.0, "euler", "simple", pos, neg, torch.zeros(shape),
                            seed=0, disable_pbar=True, callback=cancel)
    summary = reports[0]["summary"]
    assert summary["status"] == "cancelled" and summary["calls"]["sparse"] > 0 and summary["stats_peak_mb"] > 0
    assert summary["saved_seconds"] is not None and summary["density"] > 0
    assert any("cancelled at step" in r.getMessage() for r in caplog.records)
    finished = patch(comfy_env, build("wan")[0])
    reports = observe(comfy_env, finished)
    sample(finished, "wan")
    assert reports[0]["summary"]["status"] == "finished" and reports[0]["summary"]["steps_run"] == 8
