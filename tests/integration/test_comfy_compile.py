"""The patched model still samples, with the same result, when ComfyUI's TorchCompileModel node
compiles it (the attention override opts out of compilation; Dynamo must not break around it)."""
from __future__ import annotations

import torch

from tiny_models import build, observe, patch, sample


def test_torch_compile_model_node_on_a_patched_model(comfy_env):
    torch._dynamo.reset()
    patched = patch(comfy_env, build("wan")[0])
    eager_reports = observe(comfy_env, patched)
    eager = sample(patched, "wan")

    compile_node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["TorchCompileModel"]
    compiled = compile_node.execute(patched, backend="inductor").args[0]
    compiled_reports = observe(comfy_env, compiled)
    out = sample(compiled, "wan")

    assert torch.isfinite(out).all()
    assert float((out - eager).abs().max()) <= 1e-4 * max(1.0, float(eager.abs().max()))
    (eager_report,), (compiled_report,) = eager_reports, compiled_reports
    assert compiled_report["plan"] == eager_report["plan"] == "DDCSSSSD"
    assert compiled_report["counts"] == eager_report["counts"]      # every site still went through Re-ttention
