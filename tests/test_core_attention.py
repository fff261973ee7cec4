"""attend_full / attend_sparse against fp64 references, on fresh random inputs at odd sizes."""
import pytest
import torch

from reference import attention, key_set, rel_l2
from rettention import (HEAD_DIMS, MASK_KINDS, RhoRampWeight, RhoWeight, SparseMask, TokenLayout, UnitWeight,
                        CalibratedWeight, attend_full, attend_sparse)

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def qkv(shape, dtype=torch.float32, seed=0, layout="bhnd"):
    """Random q, k, v (B, H, N, D); ``layout='bnhd'`` returns transposed views of (B, N, H, D) storage."""
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    out = []
    for _ in range(3):
        if layout == "bnhd":
            out.append(torch.randn(b, n, h, d, generator=g).to(dtype).transpose(1, 2))
        else:
            out.append(torch.randn(b, h, n, d, generator=g).to(dtype))
    return out


CASES = [  # (layout, kind, density, block, heads, dim)
    (TokenLayout((1, 13, 17), text_before=23), "band", 0.1, 32, 2, 72),
    (TokenLayout((3, 7, 11), text_after=9), "tube", 0.15, 16, 3, 88),
    (TokenLayout((2, 9, 10), text_before=5, text_after=4), "local3d", 0.2, 32, 2, 64),
    (TokenLayout((1, 10, 30)), "band", 0.05, 64, 1, 128),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}-N{c[0].n_tokens}-D{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_capture_is_dense_and_stats_match_fp64(case, dtype):
    layout, kind, density, block, heads, dim = case
    mask = SparseMask(layout, density, kind, block_size=block)
    q, k, v = qkv((2, heads, layout.n_tokens, dim), dtype, seed=1)
    out, stats = attend_full(q, k, v, mask, residual_dtype=torch.float32)

    dense, lse = attention(q, k, v)
    window, lse_window = attention(q, k, v, key_set(mask))
    assert out.dtype == dtype and rel_l2(out, dense) < TOL[dtype]
    rho = torch.exp(lse_window - lse)
    assert stats.rho.dtype == torch.float32 and torch.allclose(stats.rho.double(), rho, rtol=1e-3, atol=1e-5)
    assert (stats.rho > 0).all() and (stats.rho <= 1 + 1e-6).all()
    assert (stats.rho < 0.999).any(), "the window should drop some softmax mass"
    assert rel_l2(stats.residual, dense - rho[..., None] * window) < 10 * TOL[dtype]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}-N{c[0].n_tokens}-D{c[5]}")
@pytest.mark.parametrize("weight", [RhoWeight(), UnitWeight(), RhoRampWeight(0.04)], ids=lambda w: w.name)
def test_sparse_step_on_capture_inputs_is_dense(case, weight):
    layout, kind, density, block, heads, dim = case
    mask = SparseMask(layout, density, kind, block_size=block)
    q, k, v = qkv((1, heads, layout.n_tokens, dim), seed=2)
    _, stats = attend_full(q, k, v, mask, weight=weight, residual_dtype=torch.float32)
    out = attend_sparse(q, k, v, mask, stats, weight=weight, steps_since_capture=0)
    assert rel_l2(out, attention(q, k, v)[0]) < 2e-5


@pytest.mark.parametrize("weight", [RhoWeight(), UnitWeight(), RhoRampWeight(0.05),
                                    CalibratedWeight(torch.tensor([0.3, 0.9, 1.2]))], ids=lambda w: w.name)
def test_sparse_step_is_reshaped_window_attention(weight):
    """On new inputs: out = w(rho, k) * O_window(new) + (O - w0 * O_window)(capture), in fp64."""
    layout = TokenLayout((2, 11, 13), text_before=7)
    mask = SparseMask(layout, 0.12, "local3d", block_size=32)
    q0, k0, v0 = qkv((2, 3, layout.n_tokens, 80), seed=3)
    q1, k1, v1 = qkv((2, 3, layout.n_tokens, 80), seed=4)
    _, stats = attend_full(q0, k0, v0, mask, weight=weight)
    out = attend_sparse(q1, k1, v1, mask, stats, weight=weight, steps_since_capture=3)

    keys = key_set(mask)
    dense0, lse0 = attention(q0, k0, v0)
    window0, lse_window0 = attention(q0, k0, v0, keys)
    window1, _ = attention(q1, k1, v1, keys)
    rho = torch.exp(lse_window0 - lse0)
    if isinstance(weight, CalibratedWeight):
        w0 = w = weight.per_head.double()[None, :, None].expand_as(rho)
    elif isinstance(weight, UnitWeight):
        w0 = w = torch.ones_like(rho)
    else:
        w0, w = rho, (rho + getattr(weight, "ramp", 0.0) * 3).clamp(max=1)
    expected = w[..., None] * window1 + (dense0 - w0[..., None] * window0)
    assert rel_l2(out, expected) < 1e-5


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_covering_every_key_is_dense_attention(kind, dtype):
    layout = TokenLayout((2, 5, 7), text_before=3)
    mask = SparseMask(layout, 1.0, kind, block_size=16)
    q, k, v = qkv((2, 2, layout.n_tokens, 96), dtype, seed=5)
    dense = attention(q, k, v)[0]
    out, stats = attend_full(q, k, v, mask)
    assert torch.allclose(stats.rho, torch.ones_like(stats.rho), atol=1e-6)
    assert stats.residual.float().abs().max() < 1e-2 * (1 if dtype == torch.bfloat16 else 1e-3)
    q2, k2, v2 = qkv((2, 2, layout.n_tokens, 96), dtype, seed=6)
    sparse = attend_sparse(q2, k2, v2, mask, stats)
    assert rel_l2(out, dense) < TOL[dtype] and rel_l2(sparse, attention(q2, k2, v2)[0]) < 2 * TOL[dtype]


@pytest.mark.parametrize("dim", HEAD_DIMS)
def test_every_head_dim_and_the_bnhd_layout(dim):
    layout = TokenLayout((1, 9, 21), text_after=5)
    mask = SparseMask(layout, 0.1, "band", block_size=32)
    q, k, v = qkv((2, 2, layout.n_tokens, dim), seed=dim, layout="bnhd")
    assert not q.is_contiguous()
    out, stats = attend_full(q, k, v, mask)
    sparse = attend_sparse(q, k, v, mask, stats, steps_since_capture=0)
    dense = attention(q, k, v)[0]
    assert rel_l2(out, dense) < 2e-5 and rel_l2(sparse, dense) < 1e-4


def test_residual_storage_dtype_is_the_callers():
    layout = TokenLayout((1, 8, 8))
    mask = SparseMask(layout, 0.2, "band", block_size=16)
    q, k, v = qkv((1, 2, 64, 64), torch.float16, seed=7)
    _, default = attend_full(q, k, v, mask)
    _, wide = attend_full(q, k, v, mask, residual_dtype=torch.float32)
    assert default.residual.dtype == torch.float16 and wide.residual.dtype == torch.float32
    assert default.nbytes == 1 * 2 * 64 * 4 + 1 * 2 * 64 * 64 * 2


def test_reshape_fixes_what_plain_sparse_gets_wrong():
    """The point of the method: on a nearby step, rho + R is far closer to dense than the window alone."""
    layout = TokenLayout((1, 16, 16))
    mask = SparseMask(layout, 0.0625, "band", block_size=16)
    q, k, v = qkv((1, 2, 256, 64), seed=8)
    q, k = q * 0.3, k * 0.3                               # flat attention: most mass outside the window
    _, stats = attend_full(q, k, v, mask)
    q1, k1, v1 = (t + 0.05 * n for t, n in zip((q, k, v), qkv((1, 2, 256, 64), seed=9)))
    dense = attention(q1, k1, v1)[0]
    plain = attention(q1, k1, v1, key_set(mask))[0]
    reshaped = attend_sparse(q1, k1, v1, mask, stats)
    assert rel_l2(reshaped, dense) < 0.2 * rel_l2(plain, dense)


# --- bad input -----------------------------------------------------------------------------------

def _mask_and_inputs(n_grid=(1, 8, 8), dim=64):
    layout = TokenLayout(n_grid)
    return SparseMask(layout, 0.25, "band", block_size=16), qkv((1, 2, layout.n_tokens, dim), seed=10)


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q, k[:, :, :-1], v), "shapes differ"),
    (lambda q, k, v: (q[..., :60], k[..., :60], v[..., :60]), "head dim 60"),
    (lambda q, k, v: (q, k.half(), v), "dtypes differ"),
    (lambda q, k, v: (q.int(), k, v), "dtype"),
    (lambda q, k, v: (q[0], k[0], v[0]), "4-D"),
    (lambda q, k, v: (q[:, :, :32], k[:, :, :32], v[:, :, :32]), "tokens"),
])
def test_bad_inputs_raise_value_errors_naming_the_problem(change, message):
    mask, (q, k, v) = _mask_and_inputs()
    with pytest.raises(ValueError, match=message):
        attend_full(*change(q, k, v), mask)


def test_non_finite_inputs_reach_the_same_rows_as_in_dense_attention():
    """No per-call host sync inspects the values: a NaN in one row of q makes that row NaN at a
    capture step (out, rho and R) and at a sparse step, exactly as in dense attention, and every
    other row keeps its value."""
    mask, (q, k, v) = _mask_and_inputs()
    _, stats = attend_full(q, k, v, mask)
    q_nan = q.clone()
    q_nan[0, 1, 5, 3] = float("nan")
    dense = torch.nn.functional.scaled_dot_product_attention(q_nan, k, v)
    bad_rows = dense.isnan().any(-1)
    assert bad_rows.sum() == 1 and bad_rows[0, 1, 5]
    out, poisoned = attend_full(q_nan, k, v, mask)
    assert torch.equal(out.isnan(), dense.isnan())
    assert torch.equal(poisoned.rho.isnan(), bad_rows) and torch.equal(poisoned.residual.isnan().any(-1), bad_rows)
    sparse = attend_sparse(q_nan, k, v, mask, stats)
    assert torch.equal(sparse.isnan(), dense.isnan())
    finite = ~dense.isnan()
    assert torch.allclose(sparse[finite], dense[finite], atol=1e-5)


def test_stats_from_another_mask_shape_or_rule_are_refused():
    mask, (q, k, v) = _mask_and_inputs()
    _, stats = attend_full(q, k, v, mask)
    other = SparseMask(mask.layout, 0.5, "band", block_size=16)
    with pytest.raises(ValueError, match="another mask"):
        attend_sparse(q, k, v, other, stats)
    with pytest.raises(ValueError, match="another mask"):
        attend_sparse(q[:1, :1], k[:1, :1], v[:1, :1], mask, stats)
    with pytest.raises(ValueError, match="weight rule"):
        attend_sparse(q, k, v, mask, stats, weight=UnitWeight())


def test_calibrated_weights_compare_by_value():
    assert CalibratedWeight(torch.tensor([0.5, 1.0])) == CalibratedWeight(torch.tensor([0.5, 1.0]))
    assert CalibratedWeight(torch.tensor([0.5, 1.0])) != CalibratedWeight(torch.tensor([0.5, 0.9]))
    assert CalibratedWeight(torch.tensor([0.5])) != RhoWeight()
