"""The testbed (rettention/testbed): data, model, one training step, metrics and the benchmark at tiny sizes."""
import math
import os
import struct
import zlib

import pytest
import torch

from rettention.testbed import data, metrics
from rettention.testbed.evaluate import METHODS, EvalOptions, SparseRun, evaluate_model, mask_for
from rettention.testbed.model import (TINY_IMAGE, TINY_VIDEO, DiT, initial_noise, load_checkpoint, randomize, sample,
                                      save_checkpoint)
from rettention.testbed.png import grid, write_png
from rettention.testbed.train import loss_of, training_batch


# --- data ----------------------------------------------------------------------------------------

def test_data_is_deterministic_from_the_seed_and_in_range():
    x1, c1 = data.make_batch(3, 4, 1, 32)
    x2, c2 = data.make_batch(3, 4, 1, 32)
    x3, _ = data.make_batch(4, 4, 1, 32)
    assert torch.equal(x1, x2) and torch.equal(c1, c2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (4, 3, 1, 32, 32)
    assert x1.min() >= -1 and x1.max() <= 1 and x1.std() > 0.1
    for i, size in enumerate(data.ATTRIBUTE_SIZES):
        assert 0 <= int(c1[:, i].min()) and int(c1[:, i].max()) < size
    assert int(c1[:, data.ATTRIBUTES.index("motion")].max()) == 0          # images do not pan


def test_condition_drives_global_structure():
    cond = torch.tensor([[1, 2, 0, 3, 1, 0],      # mirror_x
                         [2, 5, 3, 2, 2, 0],      # mirror_xy
                         [4, 1, 1, 1, 0, 0]])     # tile2
    x, _ = data.make_batch(0, 3, 1, 32, cond=cond)
    assert torch.allclose(x[0], x[0].flip(-1), atol=2e-3)
    assert torch.allclose(x[1], x[1].flip(-2), atol=2e-3) and torch.allclose(x[1], x[1].flip(-1), atol=2e-3)
    assert not torch.allclose(x[2], x[2].flip(-1), atol=2e-3)


def test_video_objects_move():
    x, cond = data.make_batch(1, 2, 4, 32)
    assert x.shape == (2, 3, 4, 32, 32)
    assert (x[:, :, 1:] - x[:, :, :-1]).abs().amax() > 0.1


# --- model ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TINY_IMAGE, TINY_VIDEO], ids=["image", "video"])
def test_model_forward_shape_and_attention_hook(cfg):
    model = randomize(DiT(cfg), seed=1)
    x, cond = data.make_batch(0, 2, cfg.frames, cfg.size)
    calls = []

    def attention(q, k, v, layer):
        calls.append((tuple(q.shape), layer, q.dtype == k.dtype == v.dtype))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    out = model(x, torch.tensor([0.3, 0.7]), cond, attention)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [layer for _, layer, _ in calls] == list(range(cfg.layers))
    assert all(shape == (2, cfg.heads, cfg.tokens, cfg.head_dim) and same for shape, _, same in calls)
    assert torch.allclose(model(x, torch.tensor([0.3, 0.7]), cond), out, atol=1e-5)


@pytest.mark.parametrize("cfg", [TINY_IMAGE, TINY_VIDEO], ids=["image", "video"])
def test_patches_are_raster_tokens(cfg):
    model = DiT(cfg)
    x = torch.randn(2, 3, cfg.frames, cfg.size, cfg.size, generator=torch.Generator().manual_seed(0))
    tokens = model.patchify(x)
    assert torch.equal(model.unpatchify(tokens), x)
    frames, height, width = cfg.grid
    f, y, w = frames - 1, 3, 5                     # token (f, y, w) holds the patch at frame f, row y, column w
    patch = x[1, :, f, 2 * y:2 * y + 2, 2 * w:2 * w + 2]
    assert torch.equal(tokens[1, (f * height + y) * width + w].view(2, 2, 3).permute(2, 0, 1), patch)


def test_checkpoint_round_trip(tmp_path):
    model = randomize(DiT(TINY_IMAGE), seed=2)
    path = str(tmp_path / "m.safetensors")
    save_checkpoint(model, path, {"note": "test"})
    loaded, meta = load_checkpoint(path)
    assert meta["note"] == "test" and loaded.cfg == TINY_IMAGE
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    x, cond = data.make_batch(0, 1, 1, TINY_IMAGE.size)
    t = torch.tensor([0.5])
    assert torch.allclose(loaded(x, t, cond), model(x, t, cond), atol=1e-5)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = DiT(TINY_IMAGE)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    batch = training_batch(TINY_IMAGE, 0, 8, generator, "cpu")
    first = float(loss_of(model, *batch, autocast=False).detach())
    for _ in range(30):
        loss = loss_of(model, *batch, autocast=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss_of(model, *batch, autocast=False).detach()) < 0.8 * first


# --- metrics -------------------------------------------------------------------------------------

def test_metrics_on_known_inputs():
    x, _ = data.make_batch(0, 3, 1, 24)
    x = x[:, :, 0]
    assert torch.isinf(metrics.psnr(x, x)).all() and torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert float(metrics.rel_l2(x, x).max()) == 0.0
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    for delta in (0.02, 0.1):                       # |error| = delta everywhere: PSNR = 20 log10(2 / delta)
        assert torch.allclose(metrics.psnr(x + delta * sign, x), torch.full((3,), 20 * math.log10(2 / delta),
                                                                               dtype=torch.float64), atol=1e-4)
        expected = delta * x.numel() ** 0.5 / 3 ** 0.5 / x.reshape(3, -1).norm(dim=1)
        assert torch.allclose(metrics.rel_l2(x + delta * sign, x), expected.double(), rtol=1e-4)
    a, b = torch.full((1, 3, 16, 16), 0.3), torch.full((1, 3, 16, 16), -0.2)     # constant: luminance term only
    c1 = (0.01 * 2) ** 2
    assert float(metrics.ssim(a, b)) == pytest.approx((2 * 0.3 * -0.2 + c1) / (0.3 ** 2 + 0.2 ** 2 + c1), rel=1e-6)
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert float(metrics.ssim(noisy, x).max()) < 0.95
    video = torch.stack([x, noisy], dim=2)                                        # (B, C, T, H, W)
    assert torch.allclose(metrics.ssim(video, torch.stack([x, x], dim=2)), (1 + metrics.ssim(noisy, x)) / 2)


def test_png_writer(tmp_path):
    image = grid([[torch.linspace(-1, 1, 3 * 8 * 5).view(3, 8, 5)] * 2])
    path = str(tmp_path / "g.png")
    write_png(path, image)
    blob = open(path, "rb").read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", blob[16:24])
    assert (height, width) == tuple(image.shape[1:])
    start = blob.index(b"IDAT") + 4
    raw = zlib.decompress(blob[start:start + struct.unpack(">I", blob[start - 8:start - 4])[0]])
    assert len(raw) == height * (1 + 3 * width)


# --- the benchmark -------------------------------------------------------------------------------

def _opts(**kw):
    base = dict(steps=6, guidance=3.0, warmups=(0.25,), capture_everys=(3,), seeds=2, calib_seeds=2, pictures=2)
    base.update(kw)
    return EvalOptions(**base)


def test_every_method_equals_full_attention_when_the_window_covers_every_key():
    model = randomize(DiT(TINY_IMAGE), seed=3).eval()
    result = evaluate_model(model, "tiny_image", _opts(densities=(1.0,), kinds=("band",)), log=lambda *a: None)
    assert [row["method"] for row in result.rows] == list(METHODS)
    assert result.rows[0]["schedule"] == "DDCSSD"
    assert result.info["noise_floor"]["rel_l2"] < 1e-5
    for row in result.rows:
        assert row["rel_l2"] < 1e-4 and row["psnr"] > 80 and row["ssim"] > 0.9999, row["method"]
        assert max(row["layer_rel_err"]["all"]) < 1e-4


def test_benchmark_runs_every_method_and_kind_on_a_tiny_video_model(tmp_path):
    from rettention.testbed.evaluate import format_best, format_layers, format_table, format_verdict, write_pictures

    model = randomize(DiT(TINY_VIDEO), seed=4).eval()
    opts = _opts(densities=(0.25,), seeds=1, calib_seeds=1)
    result = evaluate_model(model, "tiny_video", opts, log=lambda *a: None)
    assert len(result.rows) == len(opts.kinds) * len(METHODS)
    by = {(r["kind"], r["method"]): r for r in result.rows}
    for kind in opts.kinds:
        plain, ret = by[(kind, "plain")], by[(kind, "rettention")]
        assert 0 < plain["rel_l2"] < 1 and math.isfinite(plain["psnr"])
        errors = ret["layer_rel_err"]["all"]
        assert len(errors) == TINY_VIDEO.layers and all(0 < e < 1 for e in errors)
        assert [s for s, _ in ret["rho_capture"][0]] == [2]
        assert by[(kind, "plain")]["rho_capture"] == []
    assert "calibrated w(s)" in format_table(result) and "err cal" in format_layers(result)
    assert format_best(result).count("\n") == len(opts.kinds)
    assert "target Re-ttention PSNR >= 28 dB" in format_verdict(result, 28.0)
    legend = write_pictures(result, str(tmp_path / "v.png"), opts.kinds)
    assert legend[0] == "full" and len(legend) == 1 + 2 * len(opts.kinds)
    assert os.path.getsize(tmp_path / "v.png") > 100


def test_plain_and_rho_only_are_the_window_output_from_the_core():
    """plain = O^S, rho_only = ρ·O^S: check against the core's dense attention restricted to the window."""
    from rettention import CAPTURE, SPARSE, TokenLayout

    layout = TokenLayout((1, 8, 8), text_before=8)
    mask = mask_for(layout, 0.25, "band")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, layout.n_tokens, 64, generator=g) for _ in range(3))
    window = torch.zeros(layout.n_tokens, layout.n_tokens, dtype=torch.bool)
    for qb in range(mask.query_blocks):
        for kb in mask.key_block_list(qb):
            window[qb * mask.block_size:(qb + 1) * mask.block_size, kb * mask.block_size:(kb + 1) * mask.block_size] = True
    logits = (q @ k.transpose(-1, -2)) / 8
    o_s = torch.softmax(logits.masked_fill(~window, float("-inf")), -1) @ v
    rho = torch.exp(torch.logsumexp(logits.masked_fill(~window, float("-inf")), -1) - torch.logsumexp(logits, -1))
    for method, expected in (("plain", o_s), ("rho_only", rho[..., None] * o_s)):
        run = SparseRun((CAPTURE, SPARSE), (0, 1), mask, method)
        run.on_step(0, 1.0)
        run(q, k, v, 0)
        run.on_step(1, 0.5)
        assert torch.allclose(run(q, k, v, 0), expected, atol=1e-5), method


def test_sampler_is_deterministic_and_uses_the_guidance():
    model = randomize(DiT(TINY_IMAGE), seed=6).eval()
    noise = initial_noise([0, 1], TINY_IMAGE)
    cond = torch.tensor([[1, 2, 0, 3, 1, 0], [4, 1, 1, 1, 0, 0]])
    a = sample(model, noise, cond, 4, 3.0)
    assert torch.equal(a, sample(model, noise, cond, 4, 3.0))
    assert not torch.allclose(a, sample(model, noise, cond, 4, 1.0))
