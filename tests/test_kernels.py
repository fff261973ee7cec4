"""The Triton kernels on the CPU under TRITON_INTERPRET=1, at small sizes, against the independent
fp64 reference of tests/reference.py and against the PyTorch oracle (rettention.torch_path).

On a machine with CUDA this module is skipped: tests/test_kernels_gpu.py runs the same checks
compiled, at real sizes (the interpreter must not leak into that process).
"""
import os

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("CUDA present: the compiled kernels are tested in test_kernels_gpu.py", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"        # before the kernels are imported
pytest.importorskip("triton")

import kernels  # noqa: E402
from reference import dense_and_window as reference, kernel_tolerance as tol, rel_l2 as rel  # noqa: E402
from rettention import (CalibratedWeight, RhoRampWeight, RhoWeight, SparseMask, TokenLayout,  # noqa: E402
                        UnitWeight, torch_path, triton_path)

if not kernels.sparse_attention.__module__ or not kernels._tuning.INTERPRET:
    pytest.skip("kernels were imported before TRITON_INTERPRET was set", allow_module_level=True)


def make_qkv(b, h, n, d, dtype, layout="bhnd", seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = []
    for _ in range(3):
        if layout == "bhnd":
            ts.append(torch.randn(b, h, n, d, generator=g).to(dtype))
        else:                                   # (B, N, H, D) storage, viewed as (B, H, N, D)
            ts.append(torch.randn(b, n, h, d, generator=g).to(dtype).transpose(1, 2))
    return ts


CASES = [  # (grid, text_before, text_after, kind, density, block, B, H, D, dtype, layout)
    ((1, 5, 9), 7, 0, "band", 0.2, 16, 1, 2, 72, torch.bfloat16, "bhnd"),
    ((1, 6, 7), 0, 5, "local3d", 0.25, 16, 2, 1, 88, torch.float16, "bnhd"),
    ((3, 3, 5), 3, 0, "tube", 0.3, 16, 1, 2, 64, torch.bfloat16, "bnhd"),
    ((1, 9, 13), 0, 0, "band", 0.3, 64, 1, 1, 128, torch.float16, "bhnd"),
    ((1, 7, 7), 0, 0, "band", 0.3, 16, 1, 1, 80, torch.bfloat16, "bhnd"),
    ((1, 5, 8), 0, 0, "band", 0.3, 32, 1, 1, 96, torch.float16, "bnhd"),
]


def _setup(case, seed=0):
    grid, tb, ta, kind, density, block, b, h, d, dtype, layout = case
    mask = SparseMask(TokenLayout(grid=grid, text_before=tb, text_after=ta), density, kind, block_size=block)
    q, k, v = make_qkv(b, h, mask.n_tokens, d, dtype, layout, seed)
    return mask, q, k, v


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[3]}-N{c[0]}-t{c[1]}/{c[2]}-b{c[5]}-D{c[8]}-{c[10]}")
def test_window_kernel_matches_fp64(case):
    mask, q, k, v = _setup(case)
    counts, indices = mask.block_lists("cpu")
    out, lse = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, return_lse=True)
    _, _, ref_w, ref_lse_w = reference(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert rel(out, ref_w) < tol(q.dtype)
    assert float((lse.double() - ref_lse_w).abs().max()) < 1e-3
    assert out.stride() == q.stride()          # written in the input's layout


@pytest.mark.parametrize("design", ["split", "fused"])
@pytest.mark.parametrize("case", CASES[:3] + CASES[4:5], ids=lambda c: f"{c[3]}-D{c[8]}-{c[10]}")
def test_capture_matches_fp64_and_oracle(case, design):
    mask, q, k, v = _setup(case, seed=1)
    out, stats = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype, design=design)
    ref, ref_lse, ref_w, ref_lse_w = reference(q, k, v, mask)
    rho_ref = torch.exp(ref_lse_w - ref_lse)
    assert rel(out, ref) < tol(q.dtype)
    assert float((stats.rho.double() - rho_ref).abs().max()) < 1e-3
    r_ref = ref - rho_ref[..., None] * ref_w
    assert float((stats.residual.double() - r_ref).norm() / ref.norm()) < tol(q.dtype)
    o_out, o_stats = torch_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype)
    assert rel(stats.rho, o_stats.rho) < 1e-3
    # a sparse step on the capture's own inputs reproduces dense attention
    again = triton_path.sparse_with_stats(q, k, v, stats, 0)
    assert rel(again, ref) < tol(q.dtype)


def test_capture_design_is_timed_per_shape_unless_forced(monkeypatch):
    """Without RETTENTION_CAPTURE the first capture of a shape asks the tuner to pick between the
    designs (timing each); the environment variable forces one."""
    mask, q, k, v = _setup(CASES[0], seed=4)
    asked = []

    def choose(key, cands, launch):
        asked.append((key, tuple(cands)))
        return "fused"

    monkeypatch.delenv("RETTENTION_CAPTURE", raising=False)
    monkeypatch.setattr(kernels, "choose", choose)
    tuned, _ = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype)
    assert [cands for _, cands in asked] == [("split", "fused")] and tuple(q.shape) in asked[0][0]
    fused, _ = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype, design="fused")
    assert torch.equal(tuned, fused)
    monkeypatch.setenv("RETTENTION_CAPTURE", "split")
    triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype)
    assert len(asked) == 1


class _HalfRho:
    """A rule the kernels do not know: w = rho / 2 + 0.1 * steps (the 'raw' capture path)."""

    name = "half"

    def weight(self, rho, steps_since_capture, heads=slice(None)):
        return rho * 0.5 + 0.1 * steps_since_capture


@pytest.mark.parametrize("rule", [RhoWeight(), RhoRampWeight(0.04), UnitWeight(),
                                  CalibratedWeight(torch.tensor([0.3, 0.8])), _HalfRho()],
                         ids=["rho", "ramp", "one", "calibrated", "custom"])
def test_weight_rules_match_oracle(rule):
    mask, q, k, v = _setup(CASES[0], seed=2)
    _, stats = triton_path.full_with_stats(q, k, v, mask, rule, torch.float32, design="split")
    o_out, o_stats = torch_path.full_with_stats(q, k, v, mask, rule, torch.float32)
    # R = O - w0 O^S is built from the bf16 dense output: its error is measured against |O|
    assert float((stats.residual - o_stats.residual).norm() / o_out.float().norm()) < tol(q.dtype)
    q2, k2, v2 = make_qkv(*q.shape, q.dtype, seed=3)
    out = triton_path.sparse_with_stats(q2, k2, v2, stats, 2)
    oracle = torch_path.sparse_with_stats(q2, k2, v2, o_stats, 2)
    assert rel(out, oracle) < tol(q.dtype)
    # and against the fp64 reference of the reshape, fed the kernel's own stats
    _, _, ref_w, _ = reference(q2, k2, v2, mask)
    w = rule.weight(stats.rho.double(), 2)
    assert rel(out, w[..., None] * ref_w + stats.residual.double()) < tol(q.dtype)


def test_sparse_step_reshape_and_outputs_written():
    mask, q, k, v = _setup(CASES[1], seed=4)
    counts, indices = mask.block_lists("cpu")
    g = torch.Generator().manual_seed(5)
    w = torch.rand(q.shape[:3], generator=g) + 0.1
    r = torch.randn(q.shape, generator=g).to(q.dtype)
    poisoned = torch.full_like(q, float("nan"))
    out = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, weight=w, residual=r, out=poisoned)
    assert torch.isfinite(out).all()
    _, _, ref_w, _ = reference(q, k, v, mask)
    assert rel(out, w.double()[..., None] * ref_w + r.double()) < tol(q.dtype)
    again = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, weight=w, residual=r)
    assert torch.equal(out, again)


def test_inputs_are_checked():
    mask, q, k, v = _setup(CASES[0])
    counts, indices = mask.block_lists("cpu")
    with pytest.raises(ValueError):
        kernels.sparse_attention(q.float(), k.float(), v.float(), counts, indices, mask.block_size)
    with pytest.raises(ValueError):
        kernels.sparse_attention(q, k, v, counts, indices, 32)
    with pytest.raises(ValueError):
        kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, weight=counts)


def test_head_dim_split():
    assert [kernels.split_head_dim(d) for d in (64, 72, 80, 88, 96, 128)] == \
        [(64, 0), (64, 16), (64, 16), (64, 32), (64, 32), (128, 0)]


@pytest.mark.parametrize("design", ["split", "fused"])
@pytest.mark.parametrize("mlp_width", [40, 36])
def test_packed_projection_views_match_fp64(design, mlp_width):
    """q, k, v sliced out of one packed projection, as ComfyUI's single-stream blocks pass them.
    With an MLP part of 40 columns the rows stay 16-byte aligned and the descriptors read the views
    in place; with 36 they are not, and the inputs are copied first."""
    mask = SparseMask(TokenLayout(grid=(1, 5, 9), text_after=5), 0.25, "band", block_size=16)
    n, h, d = mask.n_tokens, 2, 64
    g = torch.Generator().manual_seed(7)
    packed = torch.randn(1, n, 3 * h * d + mlp_width, generator=g).to(torch.bfloat16)
    q, k, v = packed[..., :3 * h * d].view(1, n, 3, h, d).permute(2, 0, 3, 1, 4)
    assert kernels._tiles.tma_ready(q) == (mlp_width == 40)
    out, stats = triton_path.full_with_stats(q, k, v, mask, RhoWeight(), q.dtype, design=design)
    ref, ref_lse, ref_w, ref_lse_w = reference(q, k, v, mask)
    assert rel(out, ref) < tol(q.dtype)
    assert float((stats.rho.double() - torch.exp(ref_lse_w - ref_lse)).abs().max()) < 1e-3
    assert rel(triton_path.sparse_with_stats(q, k, v, stats, 0), ref) < tol(q.dtype)



@pytest.mark.parametrize("variant", [dict(pipeline=True), dict(early_residual=True, gather_q=True),
                                     dict(pipeline=True, early_residual=True)], ids=lambda v: "+".join(v))
@pytest.mark.parametrize("block_n", [16, 32])
def test_loop_variants_match_fp64(monkeypatch, block_n, variant):
    """The sparse step's tuning variants: the hand-pipelined key loop (Config.pipeline), R loaded
    before the key loop (Config.early_residual, here from a (B, N, H, D) view) and q by pointer
    loads (Config.gather_q), with one to four key tiles per mask block."""
    import importlib
    from kernels import _tuning
    config = _tuning.Config(32, block_n, 4, 1, **variant)
    monkeypatch.setattr(importlib.import_module("kernels.sparse_attention"), "candidates",
                        lambda *a, **k: [config])
    monkeypatch.setattr(_tuning, "_CACHE", {})
    extra = ((1, 9, 11), 6, 0, "band", 0.3, 64, 1, 2, 72, torch.bfloat16, "bnhd")
    for case in (CASES[3], CASES[5], extra):      # odd N; D 128, 96, 72; mask blocks 64, 32, 64
        mask, q, k, v = _setup(case, seed=12)
        counts, indices = mask.block_lists("cpu")
        g = torch.Generator().manual_seed(5)
        w = torch.rand(q.shape[:3], generator=g) + 0.1
        b, h, n, d = q.shape
        r = torch.randn(b, n, h, d, generator=g).to(q.dtype).transpose(1, 2)
        out = kernels.sparse_attention(q, k, v, counts, indices, mask.block_size, weight=w, residual=r)
        _, _, ref_w, _ = reference(q, k, v, mask)
        assert rel(out, w.double()[..., None] * ref_w + r.double()) < tol(q.dtype)


def test_stream_floor_adds_its_inputs():
    """The benchmark's memory-floor pass computes what it says (q + k + v + r), odd sizes included."""
    from rettention.bench.stream_floor import stream_floor
    g = torch.Generator().manual_seed(21)
    ts = [torch.randn(1, 3, 37, 72, generator=g).to(torch.bfloat16) for _ in range(4)]
    out = torch.empty_like(ts[0])
    stream_floor(*ts, out, block=256, num_warps=4)
    expect = sum(t.double() for t in ts)
    assert float((out.double() - expect).abs().max()) < 0.06 * float(expect.abs().max())
    with pytest.raises(ValueError):
        stream_floor(ts[0], ts[1], ts[2], ts[3].transpose(2, 3).contiguous().transpose(2, 3), out)


@pytest.mark.parametrize("grid, text", [((1, 5, 9), 3), ((1, 1, 1), 0)])
@pytest.mark.parametrize("design", ["split", "fused"])
def test_a_head_dim_that_is_not_innermost_is_read(design, grid, text):
    """q, k, v made by a transpose of D (stride(-1) = N), the layout that made both capture designs
    fail on the H200, and at N = 1, where that transpose has unit strides that a descriptor refuses
    (the GPU fuzz found it): the glue copies them once and the result is the reference's."""
    mask = SparseMask(TokenLayout(grid=grid, text_before=text), 0.3, "band", block_size=16)
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 64, mask.n_tokens, generator=g).to(torch.bfloat16).transpose(-1, -2)
               for _ in range(3))
    assert q.stride(-2) == 1
    out, stats = triton_path.full_with_stats(q, k, v, mask, UnitWeight(), q.dtype, design=design)
    ref, _, ref_w, _ = reference(q, k, v, mask)
    assert rel(out, ref) < tol(q.dtype)
    sparse = triton_path.sparse_with_stats(q, k, v, stats, 1)
    assert rel(sparse, ref_w + stats.residual.double()) < tol(q.dtype)


def test_the_tuner_says_what_failed_for_each_candidate(monkeypatch):
    from kernels import _tuning

    def fails(fn):
        raise ValueError("out of shared memory")

    monkeypatch.setattr(_tuning, "INTERPRET", False)
    monkeypatch.setattr(_tuning, "_timer", fails)
    with pytest.raises(RuntimeError, match=r"no launch configuration works for \('test', 1\); "
                                           r"A: ValueError: out of shared memory; B: ValueError: out of shared"):
        _tuning.choose(("test", 1), ["A", "B"], lambda config: None)
    assert ("test", 1) not in _tuning.cached_choices()


def test_fuzz_through_the_kernels_in_the_interpreter():
    """tests/fuzz.py at small sizes: the Triton path (the kernels under the interpreter), each case within
    the kernel tolerance of the fp64 reference or refused by the input checks; none raises otherwise."""
    import fuzz

    def full(q, k, v, mask, weight):
        return triton_path.full_with_stats(q, k, v, mask, weight, q.dtype)

    def sparse(q, k, v, mask, stats, weight):
        return triton_path.sparse_with_stats(q, k, v, stats, 1)

    results = fuzz.fuzz(24, 300, torch.device("cpu"), full, sparse, seed=1)
    outcomes = [outcome for _, outcome, _ in results]
    assert outcomes.count("ok") >= 18
    assert all(o == "ok" or o.startswith("fallback: head dim") for o in outcomes), outcomes
    assert {case.storage for case, o, _ in results if o == "ok"} == set(fuzz.STORAGES)
