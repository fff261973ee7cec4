"""The parts of nodes/ that need no ComfyUI, as they ship (``rettention_pack``, see conftest.py): the
family table, progress from sigmas, the run plan, and one forward's dispatch from an attention call
through the override to the core, on the CPU (PyTorch path) against dense attention and the core."""
import math

import pytest
import torch
import torch.nn.functional as F

from reference import rel_l2
from rettention_pack.nodes import families, forward, override, run_state
from rettention_pack.nodes.config import CONFIG_KEY, FORWARD_KEY, PatchConfig
from rettention_pack.rettention import (CAPTURE, DENSE, SPARSE, Schedule, TokenLayout, UnitWeight, attend_sparse)


class FlowSampling:
    """percent_to_sigma of a flow model with a shift, as ComfyUI's ModelSamplingDiscreteFlow."""

    def __init__(self, shift=3.0):
        self.shift = shift

    def percent_to_sigma(self, percent):
        t = 1.0 - percent
        return self.shift * t / (1 + (self.shift - 1) * t)


def model_class(name):
    return type(name, (), {"__module__": "comfy.model_base"})


def test_families_are_found_through_base_classes():
    wan22 = type("WAN22", (model_class("WAN21"),), {"__module__": "comfy.model_base"})
    assert families.family_of(wan22()).name == "wan"
    assert families.family_of(type("WAN21", (), {"__module__": "elsewhere"})()) is None
    assert families.family_of(model_class("SDXL")()) is None


def test_latent_grids_and_self_attention_layouts():
    wan, flux, hunyuan = (families.FAMILIES[n] for n in ("WAN21", "Flux", "HunyuanVideo"))
    assert families.latent_grids(wan, (1, 16, 21, 61, 104)) == [(21, 31, 52), (21, 30, 52)]
    assert families.latent_grids(flux, (2, 16, 128, 128)) == [(1, 64, 64)]
    grids = [(1, 8, 8)]
    assert families.self_attention_layout(flux, grids, 64 + 12, 12) == TokenLayout((1, 8, 8), 12, 0)
    assert families.self_attention_layout(flux, grids, 12, 12) is None             # a text-only call
    assert families.self_attention_layout(hunyuan, grids, 64 + 7, None) == TokenLayout((1, 8, 8), 0, 7)
    assert families.self_attention_layout(wan, grids, 65, None) is None
    assert families.default_mask_kind(wan, (21, 30, 52)) == "local3d"
    assert families.default_mask_kind(families.FAMILIES["PixArt"], (1, 64, 64)) == "band"


@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_progress_inverts_percent_to_sigma(shift):
    sampling = FlowSampling(shift)
    for p in (0.0, 0.1, 0.25, 0.5, 0.9):
        assert run_state.progress_of(sampling, sampling.percent_to_sigma(p)) == pytest.approx(p, abs=1e-6)
    assert run_state.progress_of(sampling, 10.0) == 0.0 and run_state.progress_of(sampling, 0.0) == 1.0


def make_run(steps=8, shift=1.0, **config):
    sampling = FlowSampling(shift)
    sigmas = torch.tensor([sampling.percent_to_sigma(i / steps) for i in range(steps)] + [0.0])
    family = config.pop("family", families.FAMILIES["WAN21"])
    config.setdefault("torch_path", True)           # on the CPU: the PyTorch path, not dense attention
    return run_state.RunState(PatchConfig(family=family, **config), sampling, sigmas), sigmas


def test_run_plan_follows_progress_and_each_evaluation_finds_its_step():
    run, sigmas = make_run(steps=8, density=0.25)
    assert run.plan.summary() == "DDCSSSSD"
    for step, sigma in enumerate(sigmas[:-1].tolist()):
        run.begin_evaluation(sigma)
        assert run.step == step and run.mode == {"D": DENSE, "C": CAPTURE, "S": SPARSE}[run.plan.summary()[step]]
    assert run.close()["finished"] is False


def qkv(batch, n, heads, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads * dim, generator=g) for _ in range(3)]


def sdpa(q, k, v, heads):
    qh, kh, vh = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def call(context, q, k, v, heads, **kwargs):
    """An attention call as ComfyUI makes it: through the override, with the forward's options."""
    calls = []

    def comfy_attention(q, k, v, heads, mask=None, **rest):
        calls.append("comfy")
        return sdpa(q, k, v, heads)

    options = {CONFIG_KEY: context.run.config, FORWARD_KEY: context}
    out = override.attention_override(comfy_attention, q, k, v, heads, transformer_options=options, **kwargs)
    return out, calls


def test_capture_then_sparse_steps_through_the_override_on_the_cpu():
    grid, heads, dim = (2, 6, 6), 2, 64
    n = math.prod(grid)
    run, sigmas = make_run(steps=8, density=0.25, mask_kind="band", schedule=Schedule(weight=UnitWeight()))
    plan = run.plan.summary()
    q, k, v = qkv(2, n, heads, dim, seed=1)
    text = qkv(2, 5, heads, dim, seed=2)[0]             # a text sequence for cross-attention
    for step, sigma in enumerate(sigmas[:-1].tolist()):
        run.begin_evaluation(sigma)
        context = forward.ForwardContext(run, [grid], None, ["cond", "uncond"], [0, 1])
        drift = 0.02 * step
        qs, ks, vs = (t + drift for t in (q, k, v))
        out, calls = call(context, qs, ks, vs, heads)
        cross, cross_calls = call(context, qs, text, text, heads)          # cross-attention: ComfyUI's
        assert cross_calls == ["comfy"] and torch.equal(cross, sdpa(qs, text, text, heads))
        if plan[step] == "D":
            assert calls == ["comfy"]
            continue
        assert calls == []
        if plan[step] == "C":
            assert rel_l2(out, sdpa(qs, ks, vs, heads)) < 1e-5               # a capture is dense attention
            continue
        qh, kh, vh = (t.view(2, n, heads, dim).transpose(1, 2) for t in (qs, ks, vs))
        stats = run.store.get(0, ("cond", "uncond"), qh, run.mask_for(TokenLayout(grid), run.density, "band"))
        expected = attend_sparse(qh, kh, vh, stats.mask, stats, weight=stats.weight).transpose(1, 2).reshape(2, n, -1)
        assert torch.equal(out, expected)                                    # one call for the whole batch
    report = run.close()
    assert {c.get(SPARSE, 0) for s, c in report["counts"].items() if plan[s] == "S"} == {1}
    assert report["bytes_held"] == 0 and report["peak_bytes"] > 0


def test_what_the_core_cannot_take_goes_to_comfyui_with_one_note(caplog):
    grid, heads = (1, 8, 8), 2
    run, sigmas = make_run(steps=8, density=0.25)
    run.begin_evaluation(sigmas[2].item())                                 # the capture step
    assert run.mode == CAPTURE
    context = forward.ForwardContext(run, [grid], None, None, None)
    q, k, v = qkv(1, 64, heads, 40, seed=3)                                 # head dim 40: not supported
    for _ in range(2):
        out, calls = call(context, q, k, v, heads)
        assert calls == ["comfy"] and torch.equal(out, sdpa(q, k, v, heads))
    q, k, v = qkv(1, 64, heads, 64, seed=4)
    out, calls = call(context, q, k, v, heads, mask=torch.zeros(64, 64))    # a mask: dense by design
    assert calls == ["comfy"]
    notes = [r.getMessage() for r in caplog.records if "Re-ttention" in r.getMessage()]
    assert sum("head dim 40" in m for m in notes) == 1 and sum("attention mask" in m for m in notes) == 1
    assert run.counts[2] == {DENSE: 3}


def test_the_override_chains_and_leaves_calls_outside_a_forward_alone():
    seen = []

    def previous(func, *args, **kwargs):
        seen.append("previous")
        return func(*args, **kwargs)

    run, _ = make_run(chained_override=previous)

    def comfy_attention(*args, **kwargs):
        seen.append("comfy")
        return "out"

    options = {CONFIG_KEY: run.config}                                      # no forward in flight
    assert override.attention_override(comfy_attention, 1, 2, 3, 4, transformer_options=options) == "out"
    assert override.attention_override(comfy_attention, 1, 2, 3, 4) == "out"
    assert seen == ["previous", "comfy", "comfy"]


def steps_of(run, sigmas, grid, heads, dim, calls_per_step, seed=5):
    """Run every step of ``run``'s plan with ``calls_per_step`` self-attention layers; returns the
    outputs per (step, layer) and the ComfyUI calls per step."""
    n = math.prod(grid)
    q, k, v = qkv(1, n, heads, dim, seed)
    outs, comfy = {}, {}
    for step, sigma in enumerate(sigmas[:-1].tolist()):
        run.begin_evaluation(sigma)
        context = forward.ForwardContext(run, [grid], None, None, None)
        for layer in range(calls_per_step):
            drift = 0.02 * step + 0.1 * layer
            outs[step, layer], calls = call(context, q + drift, k + drift, v + drift, heads)
            comfy[step] = comfy.get(step, 0) + len(calls)
    return outs, comfy


def test_a_failed_capture_leaves_that_layer_dense_for_the_rest_of_the_run(monkeypatch, caplog):
    run, sigmas = make_run(steps=8, density=0.25, mask_kind="band")
    plan = run.plan.summary()                                               # DDCSSSSD
    real = forward.attend_full
    captures = []

    def capture_out_of_memory(q, k, v, mask, **kw):
        captures.append(1)
        if len(captures) == 2:                                              # layer 1 at the capture step
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(q, k, v, mask, **kw)

    monkeypatch.setattr(forward, "attend_full", capture_out_of_memory)
    outs, comfy = steps_of(run, sigmas, (2, 6, 6), 2, 64, calls_per_step=2)
    report = run.close()
    capture = plan.index("C")
    assert report["failed_layers"] == [1] and len(report["failures"]) == 1
    assert "OutOfMemoryError" in report["failures"][0] and f"step {capture}" in report["failures"][0]
    for step, mode in enumerate(plan):                                      # layer 0 as planned, layer 1 dense
        expected = {"D": {DENSE: 2}, "C": {CAPTURE: 1, DENSE: 1}, "S": {SPARSE: 1, DENSE: 1}}[mode]
        assert report["counts"][step] == expected, (step, report["counts"][step])
        assert comfy[step] == (2 if mode == "D" else 1)
    assert sum("a capture failed" in r.getMessage() for r in caplog.records) == 1


def test_a_failed_sparse_call_is_dense_and_the_next_one_sparse_again(monkeypatch):
    run, sigmas = make_run(steps=8, density=0.25, mask_kind="band")
    plan = run.plan.summary()
    real = forward.attend_sparse
    first_sparse = plan.index("S")

    def flaky(*args, **kw):
        if run.step == first_sparse:
            raise RuntimeError("an illegal memory access was encountered")
        return real(*args, **kw)

    monkeypatch.setattr(forward, "attend_sparse", flaky)
    steps_of(run, sigmas, (2, 6, 6), 2, 64, calls_per_step=1)
    report = run.close()
    assert report["counts"][first_sparse] == {DENSE: 1} and report["failed_layers"] == []
    assert all(report["counts"][s] == {SPARSE: 1} for s, m in enumerate(plan) if m == "S" and s != first_sparse)


@pytest.mark.parametrize("keywords, heads_kv, handled", [
    ({"scale": 64 ** -0.5}, 2, True),                       # the default scale, said out loud
    ({"scale": 0.2}, 2, False),                             # another scale: ComfyUI's attention
    ({"enable_gqa": True}, 2, True),                        # GQA with equal head counts changes nothing
    ({"enable_gqa": True}, 1, False),                       # fewer k/v heads: ComfyUI's attention
    ({"low_precision_attention": False, "attn_precision": torch.float32}, 2, True),   # backend hints
    ({"a_new_keyword": 1}, 2, False),                       # unknown: ComfyUI's attention
])
def test_every_keyword_is_honoured_or_the_call_passed_through(keywords, heads_kv, handled):
    run, sigmas = make_run(steps=8, density=0.25)
    run.begin_evaluation(sigmas[2].item())
    context = forward.ForwardContext(run, [(1, 8, 8)], None, None, None)
    q = qkv(1, 64, 2, 64, seed=6)[0]
    k, v = (t[..., : 64 * heads_kv] for t in qkv(1, 64, 2, 64, seed=7)[1:])
    seen = []

    def comfy_attention(q, k, v, heads, **rest):
        seen.append(rest)
        return torch.zeros_like(q)

    options = {CONFIG_KEY: run.config, FORWARD_KEY: context}
    out = override.attention_override(comfy_attention, q, k, v, 2, transformer_options=options, **keywords)
    assert (seen == []) == handled
    if handled:
        assert rel_l2(out, sdpa(q, k, v, 2)) < 1e-5 and run.counts[2] == {CAPTURE: 1}
    else:
        assert all(seen[0][name] is value for name, value in keywords.items()) and run.counts[2] == {DENSE: 1}


def test_without_the_kernels_or_the_torch_path_attention_stays_dense():
    run, sigmas = make_run(steps=8, density=0.25, torch_path=False)
    run.begin_evaluation(sigmas[2].item())
    context = forward.ForwardContext(run, [(1, 8, 8)], None, None, None)
    q, k, v = qkv(1, 64, 2, 64, seed=8)
    out, calls = call(context, q, k, v, 2)
    assert calls == ["comfy"] and run.counts[2] == {DENSE: 1}
    assert any("cannot run on cpu" in reason for reason in run.summary()["dense_reasons"])


def test_the_plan_route_is_the_planner_for_the_widget_values():
    from rettention_pack.nodes.web_api import plan_for

    plan = plan_for({"steps": "20", "start_percent": "0.25", "end_percent": "1.0", "capture_every": "5",
                     "density_steps": "0.5:0.03", "weight": "one", "ramp": "0.04", "density": "0.0625"})
    assert plan["summary"] == "DDDDDCSSSSCSSSSCSSSS" and plan["full_cost_steps"] == 8 and plan["sparse_steps"] == 12
    assert plan["densities"][5] == 0.0625 and plan["densities"][10] == 0.03 and plan["densities"][0] is None
    assert plan_for({"steps": "2"})["note"].startswith("2 step(s) leave no sparse step")
    for bad, name in (({"start_percent": "2"}, "start_percent"), ({"steps": "0"}, "steps"),
                      ({"weight": "w"}, "weight"), ({"density_steps": "x"}, "density_steps"),
                      ({"capture_every": "1"}, "capture_every"), ({"density": "0"}, "density")):
        with pytest.raises(ValueError, match=name):
            plan_for(bad)
