"""Re-ttention inside a real ComfyUI: each family's tiny model sampled with ComfyUI's own sampler.

    COMFYUI_PATH=/work/comfyui python -m pytest -q tests
"""
from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from tiny_models import STEPS, baseline, build, close, observe, patch, release, sample

FAMILIES = ["wan", "flux", "sd3", "hunyuan_video", "qwen_image", "pixart", "hunyuan_dit",
            "chroma", "auraflow", "ltxv", "hidream", "lumina2", "cosmos_predict2", "mochi", "cosmos",
            "flux_kontext", "qwen_image_edit"]
# self-attention calls per forward, other attention calls per forward (cross-attention, text refiners)
LAYERS = {"wan": (2, 2), "flux": (2, 0), "sd3": (2, 0), "hunyuan_video": (2, 2), "qwen_image": (2, 0),
          "pixart": (2, 0), "hunyuan_dit": (4, 0), "chroma": (2, 0), "auraflow": (2, 0), "ltxv": (2, 2),
          "hidream": (2, 0), "lumina2": (3, 1), "cosmos_predict2": (2, 2), "mochi": (2, 0), "cosmos": (2, 2),
          "flux_kontext": (2, 0), "qwen_image_edit": (2, 0)}
# The plan comes from each step's progress (warmup 0.25). With these families' sigma schedules
# (AuraFlow: discrete flow, shift 1.73; LTXV: shift 2.37; Lumina 2 and Mochi: shift 6) step 2 starts just
# below 25% progress, so it stays dense and the capture moves to step 3.
PLANS = {"auraflow": "DDDCSSSS", "ltxv": "DDDCSSSS", "lumina2": "DDDCSSSS", "mochi": "DDDCSSSS"}
# Forwards per model evaluation: ComfyUI cannot batch cond and uncond when their conditioning differs in
# kind (Mochi: prompts of different lengths, num_tokens; Kontext: a reference latent on the positive only)
# and runs one forward each.
FORWARDS = {"mochi": 2, "flux_kontext": 2}


def masked_calls(name):
    """Self-attention calls per forward that carry an attention mask and so stay dense by design:
    up to ComfyUI 0.3.x Lumina 2's noise refiner always passes its (padding) image mask (0.33 passes
    none); its main layers get none when the text mask is all ones, and go sparse. (Its text-only
    context refiner is passed through.)"""
    import comfyui_version

    return 1 if name == "lumina2" and comfyui_version.__version__.startswith("0.3.") else 0
@pytest.mark.parametrize("name", FAMILIES)
def test_calls_per_step_and_finite(comfy_env, name):
    patcher = build(name)[0]
    patched = patch(comfy_env, patcher)
    assert "rettention" not in patcher.model_options.get("transformer_options", {}), "input model was modified"
    reports = observe(comfy_env, patched)
    out = sample(patched, name)
    assert torch.isfinite(out).all()
    (report,) = reports
    assert report["finished"] and report["plan"] == PLANS.get(name, "DDCSSSSD")
    layers, others = LAYERS[name]
    masked = masked_calls(name)
    assert report["layers_per_forward"] == layers
    forwards = FORWARDS.get(name, 1)
    layers, others, masked = layers * forwards, others * forwards, masked * forwards
    for step, mode in enumerate(report["plan"]):
        counts = report["counts"][step]
        expected = {"D": "dense", "C": "capture", "S": "sparse"}[mode]
        if mode == "D":
            assert counts.get("dense") == layers, (step, counts)       # batched CFG: one call per layer
        else:
            assert counts.get(expected) == layers - masked, (step, counts)
            assert counts.get("dense", 0) == masked, (step, counts)
        assert sum(v for k, v in counts.items() if k not in (expected, "dense", "passthrough")) == 0, counts
        assert counts.get("passthrough", 0) == others, counts          # cross-attention left alone
    assert report["peak_bytes"] > 0
    assert report["bytes_held"] == 0 and report["stats_entries"] == 0  # freed at the end of the run
    assert not close(out, baseline(name), 1e-6), "sparse steps changed nothing"


@pytest.mark.parametrize("name", FAMILIES)
def test_density_one_equals_unpatched(comfy_env, name):
    base = baseline(name)
    assert close(sample(patch(comfy_env, build(name)[0], density=1.0), name), base)
    schedule_node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["RettentionSparsitySchedule"]
    schedule = schedule_node.execute(start_percent=0.1, end_percent=0.9, capture_every=3, density_steps="0.5:1.0",
                                     weight="rho_ramp", ramp=0.04).args[0]
    patched = patch(comfy_env, build(name)[0], density=1.0, schedule=schedule)
    reports = observe(comfy_env, patched)
    assert close(sample(patched, name), base)
    assert "S" in reports[0]["plan"]


# What the adapter sees per model evaluation: {(N_q, N_k, mask set, layout or None): calls}, layout as
# (grid, text_before, text_after). Joint families put their text (and reference latents) around the image.
CALLS = {
    # Mochi: [image, text cropped to num_tokens] per block, no mask: 3x4x4 image tokens + 10 (cond) / 4 (uncond)
    "mochi": {(58, 58, False, ((3, 4, 4), 0, 10)): 2, (52, 52, False, ((3, 4, 4), 0, 4)): 2},
    # Cosmos 1: image-only self-attention over 3x8x8 tokens, then cross-attention to the 10 text tokens
    "cosmos": {(192, 192, False, ((3, 8, 8), 0, 0)): 2, (192, 10, False, None): 2},
    # Flux Kontext: [12 text, 16x16 target, 12x20 reference] in double and single blocks (the grid is the
    # target's); the uncond forward has no reference: [12 text, 16x16 target]
    "flux_kontext": {(508, 508, False, ((1, 16, 16), 12, 240)): 2, (268, 268, False, ((1, 16, 16), 12, 0)): 2},
    # Qwen-Image-Edit: [10 text, 16x16 target, 16x16 reference]
    "qwen_image_edit": {(522, 522, False, ((1, 16, 16), 10, 256)): 2},
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_joint_and_reference_layouts(comfy_env, monkeypatch, name):
    forward = sys.modules[comfy_env["pack"].__name__ + ".nodes.forward"]
    seen = []
    attend = forward.ForwardContext.attend

    def spy(self, q, k, v, heads, mask, skip_reshape, skip_output_reshape, delegate, extra=None):
        n_q, n_k = (q.shape[2], k.shape[2]) if skip_reshape else (q.shape[1], k.shape[1])
        layout = self.layout(n_q) if n_q == n_k else None
        seen.append((n_q, n_k, mask is not None,
                     None if layout is None else (layout.grid, layout.text_before, layout.text_after)))
        return attend(self, q, k, v, heads, mask, skip_reshape, skip_output_reshape, delegate, extra)

    monkeypatch.setattr(forward.ForwardContext, "attend", spy)
    patched = patch(comfy_env, build(name)[0])
    reports = observe(comfy_env, patched)
    assert torch.isfinite(sample(patched, name)).all()
    per_step = {call: count / STEPS for call, count in Counter(seen).items()}
    assert per_step == CALLS[name]
    assert "C" in reports[0]["plan"] and "S" in reports[0]["plan"]


@pytest.mark.parametrize("name", ["wan", "flux", "pixart"])
def test_split_cfg_second_run_and_cfg1(comfy_env, name):
    patcher = build(name)[0]
    patched = patch(comfy_env, patcher)
    reports = observe(comfy_env, patched)
    first = sample(patched, name)
    second = sample(patched, name)
    assert torch.equal(first, second)                   # a second run starts fresh
    base_model = patched.model
    base_model.memory_required = lambda *a, **k: float("inf")   # forces one forward per cond
    try:
        split = sample(patched, name)
    finally:
        del base_model.memory_required
    assert close(split, first, 1e-4)
    layers = LAYERS[name][0]
    assert reports[2]["counts"][3]["sparse"] == 2 * layers    # two forwards (cond, uncond) per step
    single = sample(patched, name, cfg=1.0)            # no uncond
    assert torch.isfinite(single).all()
    assert reports[3]["counts"][3]["sparse"] == layers
    assert all(r["bytes_held"] == 0 for r in reports)


def test_resolution_change_between_runs(comfy_env):
    import comfy.sample

    patcher, shape, pos, neg = build("flux")
    patched = patch(comfy_env, patcher)
    reports = observe(comfy_env, patched)
    for size in (32, 24):
        small = (1, 16, size, size)
        noise = torch.randn(small, generator=torch.Generator().manual_seed(0))
        out = comfy.sample.sample(patched, noise, STEPS, 3.0, "euler", "simple", pos, neg, torch.zeros(small),
                                  seed=0, disable_pbar=True)
        assert out.shape == small and torch.isfinite(out).all()
    assert [r["counts"][3]["sparse"] for r in reports] == [2, 2]


def test_batch_of_latents(comfy_env):
    import comfy.sample

    patcher, shape, pos, neg = build("qwen_image")
    patched = patch(comfy_env, patcher)
    reports = observe(comfy_env, patched)
    two = (2,) + shape[1:]
    noise = torch.randn(two, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(patched, noise, STEPS, 3.0, "euler", "simple", pos, neg, torch.zeros(two),
                              seed=0, disable_pbar=True)
    assert torch.isfinite(out).all() and reports[0]["counts"][3]["sparse"] == 2


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    release()


def test_wan22_two_experts_each_pass_starts_from_a_capture(comfy_env):
    """Wan 2.2: a high-noise expert samples steps 0-3, a low-noise expert steps 4-7 (two
    KSamplerAdvanced passes), each patched on its own; each pass plans from its own progress."""
    import comfy.sample

    def two_passes(high, low):
        _, shape, pos, neg = build("wan")
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        common = dict(seed=0, disable_pbar=True)
        first = comfy.sample.sample(high, noise, STEPS, 3.0, "euler", "simple", pos, neg, torch.zeros(shape),
                                    start_step=0, last_step=4, force_full_denoise=False, **common)
        return comfy.sample.sample(low, noise, STEPS, 3.0, "euler", "simple", pos, neg, first, disable_noise=True,
                                   start_step=4, last_step=STEPS, force_full_denoise=True, **common)

    expert = build("wan")[0]
    reference = two_passes(expert, expert)
    high, low = patch(comfy_env, expert), patch(comfy_env, expert.clone())
    high_reports, low_reports = observe(comfy_env, high), observe(comfy_env, low)
    out = two_passes(high, low)
    assert torch.isfinite(out).all()
    assert high_reports[0]["plan"] == "DDCS" and low_reports[0]["plan"] == "CSSS"
    assert not close(out, reference)                                  # the sparse steps did something

    exact_high, exact_low = patch(comfy_env, expert, density=1.0), patch(comfy_env, expert.clone(), density=1.0)
    assert close(two_passes(exact_high, exact_low), reference)
