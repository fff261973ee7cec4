"""Re-ttention next to other things that touch attention, in a real ComfyUI: another override set
before or after the pack's (chained either way), ComfyUI 0.33's Model Attention Backend node, two
patched models in one graph, the same model patched twice.

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest -q tests/integration
"""
from __future__ import annotations

import logging

import pytest
import torch

from tiny_models import baseline, build, close, observe, patch, sample


def chaining_override(seen, inner=None):
    """An override as another pack would write one: it records the call and hands it on."""
    def override(func, *args, **kwargs):
        seen.append(args[0].shape)
        return inner(func, *args, **kwargs) if inner is not None else func(*args, **kwargs)
    return override


def counts(report, mode):
    return sum(step.get(mode, 0) for step in report["counts"].values())


def test_an_override_set_before_the_patch_gets_every_call_the_pack_leaves(comfy_env):
    seen = []
    model = build("wan")[0].clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = chaining_override(seen)
    patched = patch(comfy_env, model)
    reports = observe(comfy_env, patched)
    assert torch.isfinite(sample(patched, "wan")).all()
    (report,) = reports
    # ComfyUI's calls the pack does not take: the dense steps' self-attention and every cross-attention
    left = counts(report, "dense") + counts(report, "passthrough")
    assert counts(report, "sparse") > 0 and len(seen) == left


def test_an_override_set_after_the_patch_that_chains_still_reaches_the_pack(comfy_env):
    seen = []
    patched = patch(comfy_env, build("wan")[0])
    options = patched.model_options["transformer_options"]
    options["optimized_attention_override"] = chaining_override(seen, options["optimized_attention_override"])
    reports = observe(comfy_env, patched)
    out = sample(patched, "wan")
    (report,) = reports
    assert counts(report, "sparse") > 0 and counts(report, "capture") > 0
    all_calls = sum(sum(step.values()) for step in report["counts"].values())
    assert len(seen) == all_calls                                       # it saw every call, the pack's too
    assert close(out, sample(patch(comfy_env, build("wan")[0]), "wan"), 0)   # and changed nothing


def test_comfyuis_attention_backend_node_before_or_after_the_patch(comfy_env, caplog):
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS.get("ModelAttentionBackend")
    if node is None:
        assert comfy_env["version"].startswith("0.3."), "ModelAttentionBackend is in ComfyUI 0.33 and later"
        return
    backend = node().patch(build("wan")[0], "pytorch attention")[0]
    before = patch(comfy_env, backend)                                  # the pack chains to it
    reports = observe(comfy_env, before)
    assert torch.isfinite(sample(before, "wan")).all() and counts(reports[0], "sparse") > 0
    after = node().patch(patch(comfy_env, build("wan")[0]), "pytorch attention")[0]   # it replaces the pack's
    reports = observe(comfy_env, after)
    with caplog.at_level(logging.WARNING, logger="rettention"):
        out = sample(after, "wan")
    assert reports[0]["counts"] == {} and close(out, baseline("wan"), 1e-5)
    assert sum("was not patched" in r.getMessage() for r in caplog.records) == 1


def test_two_patched_models_in_one_graph_keep_their_own_stats(comfy_env):
    wan, flux = patch(comfy_env, build("wan")[0]), patch(comfy_env, build("flux")[0], density=0.5)
    alone = {"wan": sample(wan, "wan"), "flux": sample(flux, "flux")}
    reports = {name: observe(comfy_env, p) for name, p in (("wan", wan), ("flux", flux))}
    for _ in range(2):                                                  # interleaved runs
        assert torch.equal(sample(wan, "wan"), alone["wan"])
        assert torch.equal(sample(flux, "flux"), alone["flux"])
    assert [r["family"] for r in reports["wan"]] == ["wan"] * 2
    assert {m["requested_density"] for r in reports["flux"] for m in r["masks"]} == {0.5}
    assert all(r["bytes_held"] == 0 for rs in reports.values() for r in rs)


def test_the_same_model_patched_twice_runs_the_last_patch(comfy_env):
    twice = patch(comfy_env, patch(comfy_env, build("wan")[0], density=0.5), density=0.25)
    reports = observe(comfy_env, twice)
    out = sample(twice, "wan")
    assert {m["requested_density"] for m in reports[0]["masks"]} == {0.25}
    assert torch.equal(out, sample(patch(comfy_env, build("wan")[0], density=0.25), "wan"))


def test_attention_tensor_containers_reach_the_pack_as_tensors(comfy_env):
    """ComfyUI 0.33 may pass q, k, v as single-owner AttentionTensorContainers: an override without a
    container_function (the pack's) gets the tensors taken out of them, with no copy."""
    import comfy.ldm.modules.attention as attention

    if not hasattr(attention, "AttentionTensorContainer"):
        assert comfy_env["version"].startswith("0.3."), "AttentionTensorContainer is in ComfyUI 0.33 and later"
        return
    pack = comfy_env["pack"].__name__
    import importlib
    config, forward, run_state, override = (importlib.import_module(f"{pack}.nodes.{m}")
                                            for m in ("config", "forward", "run_state", "override"))
    families = importlib.import_module(f"{pack}.nodes.families")
    sampling = build("wan")[0].get_model_object("model_sampling")
    sigmas = torch.tensor([float(sampling.percent_to_sigma(i / 8)) for i in range(8)] + [0.0])
    run = run_state.RunState(config.PatchConfig(family=families.FAMILIES["WAN21"], density=0.25, torch_path=True),
                             sampling, sigmas)
    run.begin_evaluation(float(sigmas[2]))                               # the capture step
    context = forward.ForwardContext(run, [(1, 8, 8)], None, None, None)
    options = {config.CONFIG_KEY: run.config, config.FORWARD_KEY: context,
               "optimized_attention_override": override.attention_override}
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 128, generator=g) for _ in range(3))
    containers = [attention.AttentionTensorContainer(t) for t in (q, k, v)]
    out = attention.optimized_attention(*containers, 2, transformer_options=options)
    assert run.counts[2] == {"capture": 1} and all(c.tensor is None for c in containers)
    assert close(out, attention.attention_pytorch(q, k, v, 2), 1e-5)
