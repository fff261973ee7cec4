"""The compiled Triton kernels on a CUDA GPU at real sizes, against the tests' reference attention in
fp32 (tests/reference.py: one query block at a time on the GPU, from the mask's block lists). Skipped without CUDA.
Outputs are poisoned with NaN before each run so unwritten elements show; repeat runs must be
bit-identical. No timing here (see ``python -m rettention.bench``).
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import kernels  # noqa: E402
from reference import dense_and_window, kernel_tolerance as tol, rel_l2 as rel  # noqa: E402
from rettention import RhoRampWeight, RhoWeight, SparseMask, TokenLayout, triton_path  # noqa: E402

DEV = torch.device("cuda")


def reference(q, k, v, mask):
    """fp32 (O, lse, O^S, lse^S) on the GPU, per query block (tests/reference.py)."""
    return dense_and_window(q, k, v, mask, dtype=torch.float32)


CASES = [  # (name, layout, kind, density, block, B, H, D, dtype, input layout)
    ("cogvideox", TokenLayout(grid=(13, 30, 45), text_before=226), "tube", 0.0625, 128, 1, 3, 64, torch.bfloat16, "bnhd"),
    ("pixart1024", TokenLayout(grid=(1, 64, 64)), "band", 0.03125, 128, 2, 2, 72, torch.float16, "bhnd"),
    ("flux", TokenLayout(grid=(1, 64, 64), text_before=512), "band", 0.03125, 128, 1, 3, 128, torch.bfloat16, "bnhd"),
    ("hunyuan-odd", TokenLayout(grid=(5, 27, 48), text_after=77), "local3d", 0.125, 128, 1, 2, 128, torch.bfloat16, "bhnd"),
    ("d88-odd", TokenLayout(grid=(3, 37, 41), text_before=13), "band", 0.0625, 64, 2, 2, 88, torch.bfloat16, "bnhd"),
    ("d80-odd", TokenLayout(grid=(2, 45, 61)), "local3d", 0.0625, 128, 1, 3, 80, torch.float16, "bhnd"),
    ("d96-b32", TokenLayout(grid=(1, 50, 50), text_after=11), "band", 0.125, 32, 1, 2, 96, torch.bfloat16, "bnhd"),
]


def make(case, seed):
    name, layout, kind, density, block, b, h, d, dtype, order = case
    mask = SparseMask(layout, density, kind, block_size=block)
    n = mask.n_tokens
    g = torch.Generator(device=DEV).manual_seed(seed)
    shape = (b, h, n, d) if order == "bhnd" else (b, n, h, d)
    ts = [torch.randn(shape, generator=g, device=DEV).to(dtype) for _ in range(3)]
    if order == "bnhd":
        ts = [t.transpose(1, 2) for t in ts]
    return mask, ts


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_window_kernel(case):
    mask, (q, k, v) = make(case, 0)
    counts, indices = mask.block_lists(DEV)
    out = torch.full_like(q, float("nan"))
    _, lse = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, return_lse=True, out=out)
    _, _, ref_w, ref_lse_w = reference(q, k, v, mask)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel(out, ref_w) < tol(q.dtype)
    assert float((lse - ref_lse_w).abs().max()) < 1e-2
    out2 = torch.full_like(q, float("nan"))     # the same call again (return_lse is part of the tuning key)
    _, lse2 = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, return_lse=True, out=out2)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("design", ["split", "fused", None], ids=["split", "fused", "timed"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_capture_and_sparse_step(case, design):
    mask, (q, k, v) = make(case, 1)
    ref, ref_lse, ref_w, ref_lse_w = reference(q, k, v, mask)
    rho_ref = torch.exp(ref_lse_w - ref_lse)
    torch.cuda.synchronize()
    # poison the allocator's free blocks so that unwritten outputs show as NaN
    junk = torch.full((4 * q.numel(),), float("nan"), device=DEV, dtype=torch.float32)
    del junk
    out, stats = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype, design=design)
    for t in (out, stats.rho, stats.residual):
        assert torch.isfinite(t).all()
    assert rel(out, ref) < tol(q.dtype)
    assert float((stats.rho - rho_ref).abs().max()) < 1e-2
    r_ref = ref - rho_ref[..., None] * ref_w
    assert float((stats.residual.float() - r_ref).norm() / ref.norm()) < tol(q.dtype)
    # the same inputs through a sparse step give dense attention back
    again = triton_path.sparse_with_stats(q, k, v, stats, 0)
    assert rel(again, ref) < tol(q.dtype)
    # fresh inputs: w * O^S + R with the kernel's stats, against the fp32 window reference
    _, (q2, k2, v2) = make(case, 2)
    _, _, ref_w2, _ = reference(q2, k2, v2, mask)
    junk = torch.full((4 * q.numel(),), float("nan"), device=DEV, dtype=torch.float32)
    del junk
    step = triton_path.sparse_with_stats(q2, k2, v2, stats, 1)
    assert torch.isfinite(step).all()
    expect = stats.rho[..., None] * ref_w2 + stats.residual.float()
    assert rel(step, expect) < tol(q.dtype)
    assert torch.equal(step, triton_path.sparse_with_stats(q2, k2, v2, stats, 1))


def test_ramp_rule_and_cudnn_lse_layout():
    mask, (q, k, v) = make(CASES[2], 3)
    out, lse = triton_path.dense_with_lse(q, k, v, mask)
    ref, ref_lse, _, _ = reference(q, k, v, mask)
    assert rel(out, ref) < tol(q.dtype)
    assert float((lse.reshape(ref_lse.shape) - ref_lse).abs().max()) < 1e-2
    rule = RhoRampWeight(0.04)
    _, stats = triton_path.full_with_stats(q, k, v, mask, rule, q.dtype)
    _, (q2, k2, v2) = make(CASES[2], 4)
    _, _, ref_w2, _ = reference(q2, k2, v2, mask)
    step = triton_path.sparse_with_stats(q2, k2, v2, stats, 3)
    w = (stats.rho + 0.12).clamp(max=1.0)
    assert rel(step, w[..., None] * ref_w2 + stats.residual.float()) < tol(q.dtype)


def test_dispatcher_routes_cuda_to_triton():
    import rettention
    mask, (q, k, v) = make(CASES[1], 5)
    assert triton_path.available(DEV)
    out, stats = rettention.attend_full(q, k, v, mask)
    step = rettention.attend_sparse(q, k, v, mask, stats)
    ref, _, _, _ = reference(q, k, v, mask)
    assert rel(out, ref) < tol(q.dtype) and rel(step, ref) < tol(q.dtype)


def test_packed_projection_past_32bit_row_offsets():
    """q, k, v sliced from one packed projection as a HunyuanVideo single block passes them (stride
    21504 along N): token x stride passes 2^31 (row offsets overflowed 32 bits before the descriptors)."""
    mask = SparseMask(TokenLayout(grid=(33, 45, 80), text_after=256), 0.0625, "local3d")
    n, h, d, width = mask.n_tokens, 2, 128, 21504
    g = torch.Generator(device=DEV).manual_seed(11)
    packed = torch.randn(1, n, width, generator=g, device=DEV, dtype=torch.bfloat16)
    q, k, v = packed[..., :3 * h * d].view(1, n, 3, h, d).permute(2, 0, 3, 1, 4)
    assert (n + 128) * v.stride(2) >= 2 ** 31
    out, stats = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype)
    step = triton_path.sparse_with_stats(q, k, v, stats, 0)
    torch.cuda.synchronize()
    rows = slice(n - 700, n)                   # the last image rows, the ragged tail and the text rows
    logits = (q[:, :, rows].float() @ k.float().transpose(-1, -2)) * d ** -0.5
    ref = torch.softmax(logits, -1) @ v.float()
    assert rel(out[:, :, rows], ref) < tol(q.dtype) and rel(step[:, :, rows], ref) < tol(q.dtype)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=["d64", "d72", "d128"])
def test_every_candidate_config(case, monkeypatch):
    """Each launch configuration tuning may pick (plain and hand-pipelined loops, both BLOCK_N, the
    warp-specialised kernel on Hopper), forced in turn, on the sparse-step epilogue."""
    import importlib
    from kernels import _tuning, sparse_attention_ws
    sparse = importlib.import_module("kernels.sparse_attention")
    mask, (q, k, v) = make(case, 6)
    counts, indices = mask.block_lists(DEV)
    g = torch.Generator(device=DEV).manual_seed(9)
    w = torch.rand(q.shape[:3], generator=g, device=DEV) + 0.5
    r = (torch.randn(q.shape, generator=g, device=DEV) * 0.1).to(q.dtype)
    _, _, ref_w, _ = reference(q, k, v, mask)
    expect = w[..., None] * ref_w + r.float()
    gluon = sparse_attention_ws.supported(q, mask.block_size)     # the launcher's candidates, off Hopper too
    for config in _tuning.candidates(q.shape[-1], mask.block_size, warp_specialized=gluon):
        monkeypatch.setattr(sparse, "candidates", lambda *a, **kw: [config])
        monkeypatch.setattr(_tuning, "_CACHE", {})
        out = torch.full_like(q, float("nan"))
        kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, weight=w, residual=r, out=out)
        assert torch.isfinite(out).all(), config
        assert rel(out, expect) < tol(q.dtype), config


WS_CASES = [c for c in CASES if c[4] == 128]


@pytest.mark.parametrize("case", WS_CASES, ids=[c[0] for c in WS_CASES])
def test_warp_specialized_kernel(case):
    """The Gluon kernel's config, forced through the launcher on each
    128-block case (odd N, text rows first, both input layouts, head dims 64-128): the plain epilogue
    with lse and the sparse step, against the fp32 reference; repeat runs bit-identical."""
    import importlib
    from kernels import _tuning, sparse_attention_ws
    sparse = importlib.import_module("kernels.sparse_attention")
    mask, (q, k, v) = make(case, 12)
    if not sparse_attention_ws.supported(q, mask.block_size):
        pytest.skip("the warp-specialised kernel needs Hopper (sm_90)")
    counts, indices = mask.block_lists(DEV)
    plan = triton_path._plan(mask, DEV)
    g = torch.Generator(device=DEV).manual_seed(13)
    w = torch.rand(q.shape[:3], generator=g, device=DEV) + 0.5
    r = (torch.randn(q.shape, generator=g, device=DEV) * 0.1).to(q.dtype)
    _, _, ref_w, ref_lse_w = reference(q, k, v, mask)
    configs = [c for c in _tuning.candidates(q.shape[-1], mask.block_size, warp_specialized=True)
               if c.warp_specialized]
    assert configs
    with pytest.MonkeyPatch.context() as mp:
        for config in configs:
            mp.setattr(sparse, "candidates", lambda *a, **kw: [config])
            mp.setattr(_tuning, "_CACHE", {})
            outs = []
            for _ in range(2):
                out = torch.full_like(q, float("nan"))
                _, lse = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, order=plan.order,
                                                  return_lse=True, out=out)
                step = torch.full_like(q, float("nan"))
                kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, order=plan.order, weight=w,
                                         residual=r, out=step)
                outs.append((out, lse, step))
            assert set(_tuning.cached_choices().values()) == {config}
            assert torch.isfinite(out).all() and torch.isfinite(lse).all() and torch.isfinite(step).all()
            assert rel(out, ref_w) < tol(q.dtype), config
            assert float((lse - ref_lse_w).abs().max()) < 1e-2, config
            assert rel(step, w[..., None] * ref_w + r.float()) < tol(q.dtype), config
            assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1])), config


@pytest.mark.parametrize("case", WS_CASES, ids=[c[0] for c in WS_CASES])
def test_warp_specialized_capture(case):
    """The Gluon capture kernel's config, forced through the launcher: out, rho, lse and R for each
    w0 rule (rho, per head, raw O^S) against the fp32 reference; outputs poisoned; repeat runs
    bit-identical."""
    import importlib
    from kernels import _tuning, sparse_attention_ws
    capture = importlib.import_module("kernels.capture_attention")
    mask, (q, k, v) = make(case, 14)
    if not sparse_attention_ws.supported(q, mask.block_size):
        pytest.skip("the warp-specialised kernel needs Hopper (sm_90)")
    counts, indices = mask.block_lists(DEV)
    b, h, n, _ = q.shape
    ref, ref_lse, ref_w, ref_lse_w = reference(q, k, v, mask)
    rho_ref = torch.exp(ref_lse_w - ref_lse)
    per_head = torch.rand(h, generator=torch.Generator(device=DEV).manual_seed(15), device=DEV) + 0.5
    config = next(c for c in _tuning.candidates(q.shape[-1], mask.block_size, dense_loop=True, warp_specialized=True)
                  if c.warp_specialized)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capture, "candidates", lambda *a, **kw: [config])
        mp.setattr(_tuning, "_CACHE", {})
        for w0, r_ref in ((None, ref - rho_ref[..., None] * ref_w), (per_head, ref - per_head[:, None, None] * ref_w),
                          ("raw", ref_w)):
            runs = []
            for _ in range(2):
                out = torch.full_like(q, float("nan"))
                residual = torch.full(q.shape, float("nan"), device=DEV, dtype=q.dtype)
                rho = torch.full((b, h, n), float("nan"), device=DEV)
                runs.append(kernels.capture_attention(q, k, v, counts, indices, mask.block_size, w0=w0, out=out,
                                                      residual=residual, rho=rho, return_lse=True))
            out, rho, residual, lse, lse_w = runs[0]
            assert set(_tuning.cached_choices().values()) == {config}
            assert all(torch.isfinite(t).all() for t in runs[0])
            assert rel(out, ref) < tol(q.dtype)
            assert float((rho - rho_ref).abs().max()) < 1e-2
            assert float((lse - ref_lse).abs().max()) < 1e-2 and float((lse_w - ref_lse_w).abs().max()) < 1e-2
            assert float((residual.float() - r_ref).norm() / ref.norm()) < tol(q.dtype), w0
            assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
