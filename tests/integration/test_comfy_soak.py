"""Soak in one ComfyUI process: 30 runs alternating models, resolutions, CFG batched / split / off,
cancelled runs and a run with an injected error in a late layer. After every run no stats survive
(nothing the store held is alive: checked through weak references), the report says so, and the same
run gives the same output every time.

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/integration
"""
from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch

from tiny_models import STEPS, build, observe, patch

RUNS = 30


def run_once(env, name, shape, cfg, cancel_at=None, split=False):
    """One sampling run; returns (output or None when cancelled, report, weak refs to its stats)."""
    import comfy.model_management
    import comfy.sample

    patcher, _, pos, neg = build(name)
    patched = patch(env, patcher)
    reports = observe(env, patched)
    stats_store = sys.modules[env["pack"].__name__ + ".rettention.stats"]
    held = []
    real_put = stats_store.StatsStore.put

    def tracked_put(self, layer, chunks, stats):
        held.append(weakref.ref(stats.residual))
        return real_put(self, layer, chunks, stats)

    def callback(step, x0, x, total):
        if step == cancel_at:
            raise comfy.model_management.InterruptProcessingException()

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    base_model = patched.model
    stats_store.StatsStore.put = tracked_put
    if split:
        base_model.memory_required = lambda *a, **k: float("inf")     # one forward per cond
    try:
        out = comfy.sample.sample(patched, noise, STEPS, cfg, "euler", "simple", pos, neg, torch.zeros(shape),
                                  seed=0, disable_pbar=True, callback=callback)
    except comfy.model_management.InterruptProcessingException:
        out = None
    finally:
        stats_store.StatsStore.put = real_put
        if split:
            del base_model.memory_required
    return out, reports[0], held


def test_thirty_runs_in_one_process(comfy_env, monkeypatch):
    forward = sys.modules[comfy_env["pack"].__name__ + ".nodes.forward"]
    wan_shape = build("wan")[1]
    plans = [("wan", wan_shape, 3.0), ("flux", build("flux")[1], 3.0),
             ("wan", wan_shape[:3] + (wan_shape[3] + 4, wan_shape[4] - 4), 3.0),     # another resolution
             ("flux", build("flux")[1], 1.0)]                                       # no uncond
    outputs, seen = {}, []
    real_attend_full = forward.attend_full
    for i in range(RUNS):
        name, shape, cfg = plans[i % len(plans)]
        cancel_at = 4 if i % 7 == 3 else None
        split = i % 5 == 1 and cfg > 1
        inject = i % 11 == 6
        if inject:                       # the last layer's capture fails: that layer runs dense
            def failing(q, k, v, mask, **kw):
                if forward_layer[0] == 1:
                    raise RuntimeError("injected failure")
                return real_attend_full(q, k, v, mask, **kw)
            forward_layer = [0]
            real_capture = forward.ForwardContext._capture

            def capture(self, layer, *args):
                forward_layer[0] = layer
                return real_capture(self, layer, *args)
            monkeypatch.setattr(forward, "attend_full", failing)
            monkeypatch.setattr(forward.ForwardContext, "_capture", capture)
        out, report, held = run_once(comfy_env, name, shape, cfg, cancel_at, split)
        if inject:
            monkeypatch.setattr(forward, "attend_full", real_attend_full)
            monkeypatch.setattr(forward.ForwardContext, "_capture", real_capture)
        gc.collect()
        assert report["bytes_held"] == 0 and report["stats_entries"] == 0, i
        assert held and all(ref() is None for ref in held), f"run {i}: stats outlived the run"
        assert report["finished"] == (cancel_at is None), i
        if inject:
            assert report["failed_layers"] == [1] and (out is not None or cancel_at is not None)
        key = (name, shape, cfg, split, inject)
        if out is not None:
            assert torch.isfinite(out).all(), i
            if key in outputs:
                assert torch.equal(out, outputs[key]), f"run {i}: not deterministic"
            outputs[key] = out
        seen.append((key, cancel_at))
    assert sum(c is not None for _, c in seen) >= 4 and sum(k[4] for k, _ in seen) >= 2
    assert sum(1 for k in outputs if not k[3] and not k[4]) == len(plans)     # every plan repeated and compared
