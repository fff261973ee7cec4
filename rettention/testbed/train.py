"""Train a testbed model on procedural data for a fixed wall-clock budget (rectified flow, bf16
autocast on CUDA, SDPA attention), write the checkpoint, then print mean ρ per layer at 3.125%."""
from __future__ import annotations

import copy
import math
import os
import time

import torch
import torch.nn.functional as F

from .data import make_batch
from .model import CONFIGS, DiT, DiTConfig, null_condition, save_checkpoint, sdpa

DEFAULT_BATCH = {"image": 64, "video": 8, "tiny_image": 8, "tiny_video": 4}


def training_batch(cfg: DiTConfig, step: int, batch: int, generator: torch.Generator, device,
                   seed: int = 0, cond_drop: float = 0.1):
    """(x_t, t, cond, target) for one step: scenes of data seed ``seed * 1_000_003 + step``, the
    condition dropped to null with probability ``cond_drop``, t logit-normal, target = noise - x0."""
    x0, cond = make_batch(seed * 1_000_003 + step, batch, cfg.frames, cfg.size, device)
    cond = cond.to(device)
    drop = torch.rand(batch, generator=generator, device=device) < cond_drop
    cond = torch.where(drop[:, None], null_condition(cond), cond)
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    noise = torch.randn(x0.shape, generator=generator, device=device)
    tt = t.view(-1, 1, 1, 1, 1)
    return (1 - tt) * x0 + tt * noise, t, cond, noise - x0


def loss_of(model: DiT, xt, t, cond, target, autocast: bool, attention=None) -> torch.Tensor:
    with torch.autocast(xt.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = model(xt, t, cond, attention)
    return F.mse_loss(pred.float(), target)


def training_attention(cfg: DiTConfig, batch: int, device, log=print):
    """The SDPA backend for training on CUDA: cuDNN when it runs forward and backward on this shape,
    agrees with flash and is faster (the repo measured cuDNN 1.3-1.9x faster than flash forward on the
    H200), else flash; on CPU plain SDPA."""
    if torch.device(device).type != "cuda":
        return sdpa
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def with_backend(backend):
        def attention(q, k, v, layer):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v)
        return attention

    shape = (batch, cfg.heads, cfg.tokens, cfg.head_dim)
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    # the gradient reaches attention as in the model: through out.transpose(1, 2).reshape(B, N, H*D)
    grad = torch.randn(batch, cfg.tokens, cfg.hidden, generator=g, device=device, dtype=torch.bfloat16)
    results = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            fn = with_backend(backend)
            for _ in range(2):                                     # warm-up, then timed
                q.grad = k.grad = v.grad = None
                torch.cuda.synchronize()
                t0 = time.time()
                out = fn(q, k, v, 0)
                out.transpose(1, 2).reshape(batch, cfg.tokens, cfg.hidden).backward(grad)
                torch.cuda.synchronize()
                ms = 1000 * (time.time() - t0)
            if not (torch.isfinite(out).all() and torch.isfinite(q.grad).all()):
                raise RuntimeError("non-finite output or gradient")
            results[name] = (fn, ms, out.detach().float(), q.grad.float())
        except Exception as error:                                 # backend unavailable for this shape
            log(f"  SDPA {name}: unavailable ({type(error).__name__}: {str(error)[:120]})")
    if "cudnn" in results and "flash" in results:
        _, ms_c, out_c, grad_c = results["cudnn"]
        _, ms_f, out_f, grad_f = results["flash"]
        err = max(float((out_c - out_f).norm() / out_f.norm()), float((grad_c - grad_f).norm() / grad_f.norm()))
        log(f"  SDPA fwd+bwd on {shape}: flash {ms_f:.1f} ms, cuDNN {ms_c:.1f} ms, rel. difference {err:.1e}")
        if err < 2e-2 and ms_c < ms_f:
            log("  training attention: cuDNN")
            return results["cudnn"][0]
    if "flash" in results:
        log("  training attention: flash")
        return results["flash"][0]
    log("  training attention: SDPA's own choice")
    return sdpa


def _step(model, opt, cfg, step, batch, generator, device, seed, cond_drop, cuda, attention):
    loss = loss_of(model, *training_batch(cfg, step, batch, generator, device, seed, cond_drop), autocast=cuda,
                   attention=attention)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def train(name: str, minutes: float, out_path: str, batch: int | None = None, lr: float = 8e-4,
          warmup_steps: int = 100, cond_drop: float = 0.1, seed: int = 0, device: str | None = None,
          log_every: float = 10.0, probe: bool = True, log=print) -> dict:
    """Train ``CONFIGS[name]`` for ``minutes`` of wall clock (the loop; model build, save and the ρ
    probe come on top). lr: linear warm-up over ``warmup_steps``, then a cosine to 0 over the budget.
    At each log line a non-finite loss restores the last good weights and halves the lr."""
    cfg = CONFIGS[name]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = batch or DEFAULT_BATCH[name]
    torch.manual_seed(seed)
    model = DiT(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=cuda)
    generator = torch.Generator(device).manual_seed(seed + 1)
    budget = 60.0 * minutes
    log(f"training {name}: grid {cfg.grid} + {cfg.cond_tokens} condition tokens ({cfg.tokens} tokens), "
        f"{cfg.layers} layers, hidden {cfg.hidden}, {cfg.heads} heads, {params / 1e6:.2f}M parameters; "
        f"batch {batch}, lr {lr}, {minutes:g} min on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    attention = training_attention(cfg, batch, device, log)
    start = time.time()
    last_log, step, running, count = start, 0, torch.zeros((), device=device), 0
    curve, restarts = [], 0
    good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        scale = min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        try:
            loss = _step(model, opt, cfg, step, batch, generator, device, seed, cond_drop, cuda, attention)
        except RuntimeError as error:
            if step > 0 or attention is sdpa:
                raise
            log(f"  first step failed with the chosen attention ({str(error)[:160]}); SDPA's own choice from now")
            attention = sdpa
            loss = _step(model, opt, cfg, step, batch, generator, device, seed, cond_drop, cuda, attention)
        running += loss.detach()
        count += 1
        step += 1
        if time.time() - last_log >= log_every or step == 1:
            mean = float(running) / count
            now = time.time()
            if not math.isfinite(mean):
                restarts += 1
                lr *= 0.5
                model.load_state_dict(good[0])
                opt.load_state_dict(good[1])
                log(f"  step {step:6d}  loss {mean}: restored the weights of the last log line, lr now {lr:.2e}")
            else:
                good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
                tokens = step * batch * cfg.image_tokens
                curve.append((step, round(now - start, 1), round(mean, 5)))
                log(f"  step {step:6d}  loss {mean:.4f}  lr {lr * scale:.2e}  {tokens / (now - start):,.0f} tokens/s  "
                    f"{now - start:6.1f}s")
            running.zero_()
            count, last_log = 0, now
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.time() - start
    if count:
        mean = float(running) / count
        if math.isfinite(mean):
            curve.append((step, round(elapsed, 1), round(mean, 5)))
        else:
            model.load_state_dict(good[0])
            log(f"  final loss {mean}: saving the weights of the last good log line")
    model.eval()
    summary = {"steps": step, "batch": batch, "lr": lr, "minutes": minutes, "seed": seed, "restarts": restarts,
               "samples_seen": step * batch, "final_loss": curve[-1][2] if curve else None,
               "elapsed_s": round(elapsed, 1), "device": torch.cuda.get_device_name(device) if cuda else "cpu",
               "torch": torch.__version__}
    log(f"trained {step} steps ({step * batch} samples) in {elapsed:.1f}s, "
        f"{step * batch * cfg.image_tokens / max(elapsed, 1e-9):,.0f} tokens/s; final loss {summary['final_loss']}")
    save_checkpoint(model, out_path, {"train_summary": summary, "loss_curve": curve})
    log(f"wrote {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB)")
    if probe:
        from .evaluate import rho_probe
        t0 = time.time()
        summary["rho"] = rho_probe(model, steps=20 if not name.startswith("tiny") else 8, log=log)
        log(f"rho probe: {time.time() - t0:.1f}s")
    return summary
